"""Symbolic tensors and nodes: how a model's computational graph is written down.

``rp.Input(shape)`` returns a :class:`SymbolicTensor`: a placeholder for a
batch of arrays of per-sample ``shape``, holding no data. Calling a layer on
symbolic tensors does not compute anything either: it records a
:class:`Node` (this layer, applied to these tensors) and returns the
symbolic tensor of its output, whose per-sample shape is worked out at once
(``Layer.compute_output_shape``), so that a shape error is raised on the line
that made it::

    x = rp.Input((784,))
    h = rp.layers.Dense(128, activation="relu")(x)     # a node: Dense on x
    y = rp.layers.Dense(10, activation="softmax")(h)
    model = rp.Model(x, y)

Arithmetic on symbolic tensors (``a + b``, ``a * 2``, ``-a``) and the
functions of :mod:`retroprop.ops` record nodes the same way.

A layer called on several tensors at several places (a *shared* layer) keeps
one set of weights; every call is a node of its own. :func:`collect` walks
the graph from a model's outputs back to its inputs, checks that they fit
together and returns the nodes in topological order (every node after the
nodes that compute its inputs): the order in which a plan (plan.py) runs
the forward pass, and backwards, the backward pass.
"""
import numpy as np

_FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def format_shape(shape):
    """(784,) -> "(N, 784)": a per-sample shape shown with its batch dimension."""
    return "(" + ", ".join(["N"] + [str(s) for s in shape]) + ")"


def as_dtype(dtype, what="dtype"):
    """None, or float32/float64 as a numpy dtype (ValueError otherwise)."""
    if dtype is None:
        return None
    try:
        dt = np.dtype(dtype)
    except TypeError:
        dt = None
    if dt not in _FLOAT_DTYPES:
        raise ValueError(f"{what} must be 'float32' or 'float64', got {dtype!r}")
    return dt


def as_shape(shape, what="shape", allow_scalar=True):
    """A per-sample shape as a tuple of positive ints (an int n means (n,))."""
    if isinstance(shape, (int, np.integer)) and not isinstance(shape, bool):
        shape = (shape,)
    try:
        result = tuple(int(s) for s in shape)
        ok = all(not isinstance(s, bool) and int(s) == s for s in shape)
    except (TypeError, ValueError):
        result, ok = None, False
    if not ok or any(s < 1 for s in result) or (not result and not allow_scalar):
        raise ValueError(f"{what} must be a tuple of positive ints (the per-sample shape, "
                         f"without the batch dimension), got {shape!r}")
    return result


class SymbolicTensor:
    """A value of the graph: the output ``index`` of ``node``, or a model input.

    ``shape`` is the per-sample shape (no batch dimension); ``dtype`` is the
    dtype given to ``rp.Input`` (None: the model's). Operators ``+ - * /``
    and unary ``-`` record nodes of :mod:`retroprop.ops`.
    """

    # NumPy arrays must not try to broadcast over a symbolic tensor
    # (np.ones(3) + t): this makes them hand the operation to t.__radd__.
    __array_ufunc__ = None

    def __init__(self, shape, dtype, node, index=0, name=None):
        self.shape = tuple(shape)
        self.dtype = dtype
        self.node = node
        self.index = index
        self.name = name

    @property
    def layer(self):
        """The layer (or InputLayer) that produces this tensor."""
        return self.node.layer

    @property
    def ndim(self):
        """Number of dimensions with the batch dimension."""
        return len(self.shape) + 1

    def describe(self):
        """Where the tensor comes from and its shape, for messages."""
        return f"{self.node.layer.display_name} {format_shape(self.shape)}"

    def __repr__(self):
        return (f"<SymbolicTensor shape={format_shape(self.shape)} "
                f"from {type(self.node.layer).__name__} '{self.node.layer.display_name}'>")

    def __bool__(self):
        raise TypeError("a symbolic tensor has no truth value: it holds no data until a "
                        "model built from it runs")

    # -- arithmetic: nodes of retroprop.ops (imported here: ops imports layers) --
    def __add__(self, other):
        from . import ops
        return ops.add(self, other)

    def __radd__(self, other):
        from . import ops
        return ops.add(other, self)

    def __sub__(self, other):
        from . import ops
        return ops.subtract(self, other)

    def __rsub__(self, other):
        from . import ops
        return ops.subtract(other, self)

    def __mul__(self, other):
        from . import ops
        return ops.multiply(self, other)

    def __rmul__(self, other):
        from . import ops
        return ops.multiply(other, self)

    def __truediv__(self, other):
        from . import ops
        return ops.divide(self, other)

    def __rtruediv__(self, other):
        from . import ops
        return ops.divide(other, self)

    def __neg__(self):
        from . import ops
        return ops.negative(self)

    def __matmul__(self, other):
        from . import ops
        return ops.matmul(self, other)

    __hash__ = object.__hash__


def is_symbolic(value):
    """True for a symbolic tensor or a non-empty list/tuple of them."""
    if isinstance(value, SymbolicTensor):
        return True
    return (isinstance(value, (list, tuple)) and len(value) > 0
            and any(isinstance(v, SymbolicTensor) for v in value))


class Node:
    """One call of a layer in a graph: ``layer`` applied to ``inputs``.

    ``multi`` says whether the layer was called with a list (a merge layer)
    or with one tensor; ``outputs`` holds the symbolic tensor it returned.
    """

    def __init__(self, layer, inputs, multi, output_shape, dtype):
        self.layer = layer
        self.inputs = list(inputs)
        self.multi = multi
        self.outputs = [SymbolicTensor(output_shape, dtype, self, 0)]

    @property
    def output(self):
        return self.outputs[0]

    def input_shapes(self):
        """The layer's input shape argument: a shape, or a list of them."""
        shapes = [t.shape for t in self.inputs]
        return shapes if self.multi else shapes[0]

    def __repr__(self):
        return f"<Node {type(self.layer).__name__} '{self.layer.display_name}'>"


def _common_dtype(tensors, owner):
    dtypes = {t.dtype for t in tensors if t.dtype is not None}
    if len(dtypes) > 1:
        raise ValueError(f"{owner}: inputs of different dtypes " +
                         ", ".join(f"{t.describe()} {t.dtype}" for t in tensors))
    return dtypes.pop() if dtypes else None


def call_layer(layer, inputs):
    """Record ``layer(inputs)`` on symbolic tensors; returns the output tensor.

    The output shape comes from the layer: ``layer.output_shape`` when it is
    already built (its input must then have the shape it was built for),
    ``layer.compute_output_shape`` otherwise. A layer called again (shared)
    must get inputs of the shapes of its first call.
    """
    owner = layer._describe()
    multi = isinstance(inputs, (list, tuple))
    tensors = list(inputs) if multi else [inputs]
    for t in tensors:
        if not isinstance(t, SymbolicTensor):
            raise TypeError(f"{owner}: called on a mix of symbolic tensors and "
                            f"{type(t).__name__}; wrap constants with rp.ops or pass arrays "
                            f"to a built model instead")
    if layer.takes_list and not multi:
        raise TypeError(f"{owner} takes a list of input tensors, got one tensor")
    if not layer.takes_list and multi:
        if len(tensors) != 1:
            raise TypeError(f"{owner} takes one input tensor, got a list of {len(tensors)}")
        multi = False
    if layer.takes_list and not layer.min_inputs <= len(tensors) <= layer.max_inputs:
        count = (f"{layer.min_inputs}" if layer.min_inputs == layer.max_inputs
                 else f"at least {layer.min_inputs}")
        raise ValueError(f"{owner} takes {count} input tensors, got {len(tensors)}")
    shapes = [t.shape for t in tensors]
    arg = shapes if multi else shapes[0]
    dtype = _common_dtype(tensors, owner)
    if layer.dtype is not None and dtype is not None and dtype != layer.dtype:
        raise ValueError(f"{owner} is built for {layer.dtype}, called on {dtype} input")
    first = layer._first_call_shapes
    if first is not None or layer.built:
        expected = first if first is not None else layer.input_shape
        if _shapes_key(expected) != _shapes_key(arg):
            raise ValueError(
                f"{owner} is shared: it was first called on input {_shapes_text(expected)} and "
                f"must be called on inputs of the same shape, got "
                + ", ".join(t.describe() for t in tensors))
    if layer.built:
        output_shape = tuple(layer.output_shape)
    else:
        try:
            output_shape = tuple(int(s) for s in layer.compute_output_shape(arg))
        except ValueError as exc:
            raise ValueError(f"{exc} (called on " + ", ".join(t.describe() for t in tensors)
                             + ")") from None
    layer._first_call_shapes = arg
    node = Node(layer, tensors, multi, output_shape, dtype)
    return node.output


def _shapes_key(shapes):
    if isinstance(shapes, list):
        return [tuple(s) for s in shapes]
    return tuple(shapes)


def _shapes_text(shapes):
    if isinstance(shapes, list):
        return "[" + ", ".join(format_shape(s) for s in shapes) + "]"
    return format_shape(shapes)


# ----------------------------------------------------------------------------- inputs

class InputLayer:
    """What produces a model input: a name, a per-sample shape and a dtype.

    Not a Layer: it holds no parameters and computes nothing; a plan puts the
    caller's array where its tensor is read.
    """

    def __init__(self, shape, dtype=None, name=None):
        if name is not None and (not isinstance(name, str) or not name):
            raise ValueError(f"Input name must be a non-empty string, got {name!r}")
        self.shape = as_shape(shape, "Input shape")
        self.dtype = as_dtype(dtype, "Input dtype")
        self.name = name
        self.node = Node(self, [], False, self.shape, self.dtype)

    @property
    def display_name(self):
        return self.name if self.name is not None else "input"

    def _describe(self):
        return f"Input '{self.display_name}'"

    @property
    def output(self):
        return self.node.output

    def get_config(self):
        return {"shape": list(self.shape), "dtype": None if self.dtype is None else self.dtype.name,
                "name": self.name}


def Input(shape, dtype=None, name=None):
    """A model input: a symbolic tensor of per-sample ``shape`` (no batch dimension).

    ``dtype`` ("float32" or "float64") defaults to the model's; ``name`` names
    the input in ``summary()``, in error messages and as the key of a dict of
    input arrays (``model.predict({"image": x1, "meta": x2})``).
    """
    return InputLayer(shape, dtype, name).output


def is_input(tensor):
    return isinstance(tensor, SymbolicTensor) and isinstance(tensor.node.layer, InputLayer)


# ----------------------------------------------------------------------------- walking a graph

def collect(inputs, outputs, owner="model"):
    """Nodes between ``inputs`` and ``outputs`` in topological order, checked.

    Raises ValueError when an output depends on a tensor that is not
    computed from the inputs (an ``rp.Input`` not among them), or when an
    input does not lead to any output. Node order is deterministic: inputs
    of a node are visited in the order they were passed to it.
    """
    input_ids = {id(t) for t in inputs}
    order, state = [], {}   # state: id(node) -> 1 visiting, 2 done

    def visit(tensor, path):
        node = tensor.node
        if id(tensor) in input_ids:
            return
        if isinstance(node.layer, InputLayer):
            raise ValueError(
                f"{owner}: output {path[0].describe()} depends on {node.layer._describe()} "
                f"{format_shape(tensor.shape)}, which is not one of the model's inputs ("
                + ", ".join(t.describe() for t in inputs) + ")")
        if state.get(id(node)) == 2:
            return
        # Iterative would be needed only for graphs thousands of nodes deep.
        state[id(node)] = 1
        for t in node.inputs:
            visit(t, path)
        state[id(node)] = 2
        order.append(node)

    for out in outputs:
        visit(out, [out])
    used = set()
    for node in order:
        used.update(id(t) for t in node.inputs)
    used.update(id(t) for t in outputs)
    for t in inputs:
        if id(t) not in used:
            raise ValueError(f"{owner}: input {t.node.layer._describe()} "
                             f"{format_shape(t.shape)} does not lead to any output ("
                             + ", ".join(o.describe() for o in outputs) + ")")
    return order
