"""Operations on symbolic tensors: the nodes of a computational graph.

Each operation is a small parameter-free layer whose ``forward`` and
``backward`` sit next to each other below; the functions at the end record
one on symbolic tensors (and compute at once on arrays)::

    x, y, z = rp.Input(()), rp.Input(()), rp.Input(())
    q = x + y                  # an Add node
    f = q * z                  # a Multiply node
    f2 = rp.ops.exp(-f) / 2    # Negative, Exp and a Scalar node

Operators on symbolic tensors: ``+ - * /``, unary ``-`` and ``@``. Two
symbolic tensors must have the same shape (``@`` excepted); a Python number
on either side becomes the constant of a :class:`Scalar` node.

Functions: ``add, subtract, multiply, divide, negative, exp, log, sin, cos,
maximum, matmul, sum, mean``. Reductions take ``axis`` as Keras does, as an
axis of the full tensor (N, ...): -1 is the last, 0 (the batch axis) is not
allowed, since a model computes each sample on its own.
"""
import numbers

import numpy as np

from .graph import SymbolicTensor, format_shape, is_symbolic
from .layers.base import BufferCache, Layer
from .layers.merge import Add, Maximum, Multiply, Subtract, _Merge, _need_list


class _Unary(Layer):
    """y = op(x) elementwise, through ``backend.unary_forward``; backward reads
    the op's derivative from x and y (``backend.unary_backward``)."""

    op = None

    def __init__(self, name=None):
        super().__init__(name=name)
        self._buffers = BufferCache()
        self._x = None
        self._y = None

    def _param(self):
        return None

    def forward(self, x, training=False):
        self.check_input(x)
        out = self._buffers.get("out", x.shape, self.dtype)
        self.backend.unary_forward(self.op, x, out, param=self._param())
        self._x, self._y = x, out
        return out

    def backward(self, dy, need_dx=True):
        if self._x is None:
            raise RuntimeError(f"{self._describe()}: backward called before forward")
        self.check_output_grad(dy, self._x.shape[0])
        if not need_dx:
            return None
        dx = self._buffers.get("dx", self._x.shape, self.dtype)
        return self.backend.unary_backward(self.op, self._x, self._y, dy, dx,
                                           param=self._param())


class Negative(_Unary):
    """y = -x; dx = -dy."""
    op = "negative"


class Exp(_Unary):
    """y = e^x; dx = dy * y."""
    op = "exp"


class Log(_Unary):
    """y = log x (natural; NaN for x < 0, -inf at 0); dx = dy / x."""
    op = "log"


class Sin(_Unary):
    """y = sin x; dx = dy * cos x."""
    op = "sin"


class Cos(_Unary):
    """y = cos x; dx = -dy * sin x."""
    op = "cos"


class Scalar(_Unary):
    """An operation with a constant c, elementwise:

    ============ ============ ===================
    op           y            dL/dx
    ============ ============ ===================
    add_scalar   x + c        dy
    rsub_scalar  c - x        -dy
    mul_scalar   c * x        c * dy
    div_scalar   x / c        dy / c
    rdiv_scalar  c / x        -dy * y / x
    max_scalar   max(x, c)    dy where x >= c, else 0
    ============ ============ ===================
    """

    OPS = ("add_scalar", "rsub_scalar", "mul_scalar", "div_scalar", "rdiv_scalar", "max_scalar")

    def __init__(self, op, value, name=None):
        super().__init__(name=name)
        if op not in self.OPS:
            raise ValueError(f"Scalar: op must be one of {self.OPS}, got {op!r}")
        value = float(value)
        if not np.isfinite(value):
            raise ValueError(f"Scalar: the constant must be finite, got {value!r}")
        if op == "div_scalar" and value == 0.0:
            raise ValueError("Scalar: division by the constant 0")
        self.op = op
        self.value = value

    def _param(self):
        return self.value

    def get_config(self):
        return {"op": self.op, "value": self.value, "name": self.name}


class Divide(_Merge):
    """y = a / b elementwise; dL/da = dy / b, dL/db = -dy * a / b^2."""

    min_inputs = max_inputs = 2

    def _compute(self, xs, out):
        self.backend.binary_forward("divide", xs[0], xs[1], out)

    def backward(self, dy, need_dx=True):
        self._check_backward(dy)
        need_a, need_b = _need_list(need_dx, 2)
        da = self._dx_buffer(0) if need_a else None
        db = self._dx_buffer(1) if need_b else None
        self.backend.binary_backward("divide", self._xs[0], self._xs[1], dy, da, db)
        return [da, db]


class MatMul(_Merge):
    """y = a @ b for each sample: per-sample shapes (m, k) @ (k, n) -> (m, n);
    a vector side is a matrix of one row (k,) or one column (k,) whose axis is
    dropped from the result, as in numpy.matmul. dL/da = dy @ b^T, dL/db = a^T @ dy."""

    min_inputs = max_inputs = 2

    def compute_output_shape(self, input_shapes):
        a, b = (tuple(s) for s in input_shapes)
        if not (1 <= len(a) <= 2 and 1 <= len(b) <= 2):
            raise ValueError(f"{self._describe()}: per-sample inputs must be vectors or matrices, "
                             f"got {format_shape(a)} and {format_shape(b)}")
        k_a, k_b = a[-1], (b[0] if len(b) == 2 else b[0])
        if k_a != k_b:
            raise ValueError(f"{self._describe()}: inner dimensions differ: {format_shape(a)} @ "
                             f"{format_shape(b)}")
        return a[:-1] + b[1:]

    def _as_matrices(self, a, b):
        """Views of (N, m, k) and (N, k, n) for numpy's batched matmul."""
        n = a.shape[0]
        a3 = a.reshape(n, 1, -1) if a.ndim == 2 else a
        b3 = b.reshape(n, -1, 1) if b.ndim == 2 else b
        return a3, b3

    def _compute(self, xs, out):
        a3, b3 = self._as_matrices(xs[0], xs[1])
        out3 = out.reshape(a3.shape[0], a3.shape[1], b3.shape[2])
        self.backend.batch_matmul(a3, b3, out3)

    def forward(self, xs, training=False):
        self.check_input(xs)
        out = self._buffers.get("out", (xs[0].shape[0],) + tuple(self.output_shape), self.dtype)
        self._compute(list(xs), out)
        self._xs = list(xs)
        return out

    def backward(self, dy, need_dx=True):
        self._check_backward(dy)
        need_a, need_b = _need_list(need_dx, 2)
        a, b = self._xs
        da = self._dx_buffer(0) if need_a else None
        db = self._dx_buffer(1) if need_b else None
        a3, b3 = self._as_matrices(a, b)
        dy3 = dy.reshape(a3.shape[0], a3.shape[1], b3.shape[2])
        self.backend.batch_matmul_backward(a3, b3, dy3, None if da is None else da.reshape(a3.shape),
                                           None if db is None else db.reshape(b3.shape))
        return [da, db]


class _Reduce(Layer):
    """Sum (or mean) over axes of each sample."""

    scale_by_count = False

    def __init__(self, axis=None, keepdims=False, name=None):
        super().__init__(name=name)
        if axis is not None:
            items = axis if isinstance(axis, (list, tuple)) else [axis]
            if not all(isinstance(a, (int, np.integer)) and not isinstance(a, bool) for a in items):
                raise TypeError(f"{self._describe()}: axis must be None, an int or a tuple of "
                                f"ints, got {axis!r}")
            axis = [int(a) for a in items]
        self.axis = axis
        self.keepdims = bool(keepdims)
        self._buffers = BufferCache()
        self._batch = None

    def _sample_axes(self, rank):
        """The reduced axes as axes of the full (N, ...) array, each in [1, rank]."""
        if self.axis is None:
            return tuple(range(1, rank + 1))
        axes = []
        for a in self.axis:
            full = a + rank + 1 if a < 0 else a
            if not 1 <= full <= rank:
                raise ValueError(f"{self._describe()}: axis {a} is not an axis of per-sample "
                                 f"shape {format_shape(self.input_shape or ())} (axis 0, the "
                                 f"batch, cannot be reduced)")
            axes.append(full)
        if len(set(axes)) != len(axes):
            raise ValueError(f"{self._describe()}: axis {self.axis} repeats an axis")
        return tuple(sorted(axes))

    def compute_output_shape(self, input_shape):
        shape = tuple(input_shape)
        self.input_shape = shape          # for messages of _sample_axes
        axes = self._sample_axes(len(shape))
        if self.keepdims:
            return tuple(1 if i + 1 in axes else s for i, s in enumerate(shape))
        return tuple(s for i, s in enumerate(shape) if i + 1 not in axes)

    def forward(self, x, training=False):
        self.check_input(x)
        axes = self._sample_axes(len(self.input_shape))
        out = self._buffers.get("out", (x.shape[0],) + tuple(self.output_shape), self.dtype)
        self.backend.reduce_sum(x, axes, out)
        if self.scale_by_count:
            count = int(np.prod([x.shape[a] for a in axes], dtype=np.int64))
            self.backend.unary_forward("div_scalar", out, out, param=float(count))
        self._batch = x.shape[0]
        return out

    def backward(self, dy, need_dx=True):
        if self._batch is None:
            raise RuntimeError(f"{self._describe()}: backward called before forward")
        self.check_output_grad(dy, self._batch)
        if not need_dx:
            return None
        axes = self._sample_axes(len(self.input_shape))
        kept = tuple(1 if i + 1 in axes else s for i, s in enumerate(self.input_shape))
        dx = self._buffers.get("dx", (self._batch,) + tuple(self.input_shape), self.dtype)
        scale = 1.0
        if self.scale_by_count:
            scale = 1.0 / float(np.prod([self.input_shape[a - 1] for a in axes], dtype=np.int64))
        return self.backend.broadcast_to(dy, (self._batch,) + kept, dx, scale=scale)

    def get_config(self):
        return {"axis": self.axis, "keepdims": self.keepdims, "name": self.name}


class Sum(_Reduce):
    """y = the sum over ``axis`` (None: every per-sample axis); dL/dx = dy spread back."""


class Mean(_Reduce):
    """y = the mean over ``axis`` (None: every per-sample axis); dL/dx = dy / count."""

    scale_by_count = True


# ----------------------------------------------------------------------------- functions

def _is_number(value):
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _binary(a, b, layer_cls, scalar_left, scalar_right, name):
    """a op b: a node of ``layer_cls`` for two tensors/arrays, a Scalar node when
    one side is a number (scalar_left: the op for number op x, scalar_right:
    for x op number, each None when not defined)."""
    if _is_number(a) and _is_number(b):
        raise TypeError(f"rp.ops.{name}: at least one argument must be a tensor or an array")
    if _is_number(b):
        if scalar_right is None:
            raise TypeError(f"rp.ops.{name}: a number is not allowed on the right")
        return Scalar(scalar_right[0], scalar_right[1](b))(a)
    if _is_number(a):
        if scalar_left is None:
            raise TypeError(f"rp.ops.{name}: a number is not allowed on the left")
        return Scalar(scalar_left[0], scalar_left[1](a))(b)
    return layer_cls()([a, b])


def _same(value):
    return value


def add(a, b):
    """a + b elementwise (a number on either side is a constant)."""
    return _binary(a, b, Add, ("add_scalar", _same), ("add_scalar", _same), "add")


def subtract(a, b):
    """a - b elementwise."""
    return _binary(a, b, Subtract, ("rsub_scalar", _same),
                   ("add_scalar", lambda c: -c), "subtract")


def multiply(a, b):
    """a * b elementwise."""
    return _binary(a, b, Multiply, ("mul_scalar", _same), ("mul_scalar", _same), "multiply")


def divide(a, b):
    """a / b elementwise."""
    return _binary(a, b, Divide, ("rdiv_scalar", _same), ("div_scalar", _same), "divide")


def maximum(a, b):
    """The elementwise maximum of a and b (a number on either side is a constant)."""
    return _binary(a, b, Maximum, ("max_scalar", _same), ("max_scalar", _same), "maximum")


def matmul(a, b):
    """a @ b for each sample (see :class:`MatMul`)."""
    if _is_number(a) or _is_number(b):
        raise TypeError("rp.ops.matmul: both arguments must be tensors or arrays")
    return MatMul()([a, b])


def negative(x):
    """-x."""
    return Negative()(x)


def exp(x):
    """e^x elementwise."""
    return Exp()(x)


def log(x):
    """The natural logarithm, elementwise."""
    return Log()(x)


def sin(x):
    """sin x elementwise."""
    return Sin()(x)


def cos(x):
    """cos x elementwise."""
    return Cos()(x)


def sum(x, axis=None, keepdims=False):  # noqa: A001 (rp.ops.sum, as numpy.sum)
    """The sum over ``axis`` of each sample (None: all of it)."""
    return Sum(axis=axis, keepdims=keepdims)(x)


def mean(x, axis=None, keepdims=False):
    """The mean over ``axis`` of each sample (None: all of it)."""
    return Mean(axis=axis, keepdims=keepdims)(x)


__all__ = ["add", "subtract", "multiply", "divide", "maximum", "matmul", "negative", "exp",
           "log", "sin", "cos", "sum", "mean", "Negative", "Exp", "Log", "Sin", "Cos", "Scalar",
           "Divide", "MatMul", "Sum", "Mean", "SymbolicTensor", "is_symbolic"]
