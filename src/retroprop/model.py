"""Sequential model: a stack of layers, each feeding the next."""
import numpy as np

from . import layers as layers_module
from . import stack_step
from .backend import get_backend, state_with_modules, state_without_modules
from .layers.base import Layer, default_name
from .workspace import Workspace

_FLOAT_DTYPES = ("float32", "float64")


class Sequential:
    """A linear stack of layers.

    Parameters
    ----------
    layers : list of Layer, optional
    input_shape : tuple, optional
        Per-sample input shape (no batch dimension). When omitted the model
        is built on the first ``forward``/``fit`` from the data's shape.
    dtype : "float32" (default) or "float64" (for gradient checks).
        Input of another numeric dtype is cast (copied); non-numeric input
        raises TypeError.
    seed : int, optional
        Seeds the weight initialisation (and the Trainer's shuffling when
        ``fit`` gets no seed of its own).
    name : str, optional (default "sequential")
    backend : backend module or name, optional (default: ``get_backend()``)
    """

    def __init__(self, layers=None, input_shape=None, dtype="float32", seed=None,
                 name=None, backend=None):
        dtype_name = np.dtype(dtype).name if _is_dtype_like(dtype) else None
        if dtype_name not in _FLOAT_DTYPES:
            raise ValueError(f"dtype must be 'float32' or 'float64', got {dtype!r}")
        self.dtype = np.dtype(dtype_name)
        self.seed = seed
        self.name = name if name is not None else "sequential"
        self.backend = backend if backend is not None and not isinstance(backend, str) \
            else get_backend(backend)
        self.layers = []
        self.built = False
        self.input_shape = None
        self._rng = np.random.default_rng(seed)
        # Scratch memory shared by all layers (im2col buffers): see workspace.py.
        self.workspace = Workspace(self.dtype)
        self._workspace_sized_for = None
        self._forward_plans = {}   # batch size -> stack_step.DenseForwardPlan
        self._input_shape_arg = None if input_shape is None else _as_shape(input_shape)
        for layer in layers or []:
            self.add(layer)

    # -- copying ----------------------------------------------------------------

    # copy.deepcopy and pickle (files: model.save, which writes no pickle):
    # the backend module travels as its name, and the one-call forward plans,
    # which point into this model's arrays, are not copied (a copy builds
    # its own on its first forward).
    def __getstate__(self):
        return state_without_modules(self.__dict__, caches=("_forward_plans",))

    def __setstate__(self, state):
        self.__dict__.update(state_with_modules(state))

    # -- construction ---------------------------------------------------------

    def add(self, layer):
        """Append a layer, giving it a unique name ("dense", "dense_1", ...) if it has none."""
        if not isinstance(layer, Layer):
            raise TypeError(f"Sequential.add expects a Layer, got {type(layer).__name__}")
        if any(layer is other for other in self.layers):
            raise ValueError(f"layer {layer.display_name!r} is already in the model")
        used = {other.name for other in self.layers}
        if layer.name is None:
            base = default_name(type(layer))
            name, i = base, 0
            while name in used:
                i += 1
                name = f"{base}_{i}"
            layer.name = name
        elif layer.name in used:
            raise ValueError(f"duplicate layer name {layer.name!r} in model {self.name!r}")
        layer.workspace = self.workspace
        if self.built:
            shape = self.output_shape
            layer.build(shape, self.dtype, self._rng, backend=self.backend)
            self._workspace_sized_for = None
        self.layers.append(layer)
        if not self.built and self._input_shape_arg is not None:
            # The input shape is known: build as soon as there is a layer.
            try:
                self.build(self._input_shape_arg)
            except Exception:
                self.layers.pop()  # leave the model as it was
                raise
        return layer

    def build(self, input_shape=None):
        """Build every layer for per-sample ``input_shape`` (no batch dimension)."""
        if input_shape is None:
            input_shape = self._input_shape_arg
        if input_shape is None:
            raise ValueError(f"model {self.name!r} needs an input shape to be built; pass "
                             f"input_shape=... or call forward/fit with data")
        input_shape = _as_shape(input_shape)
        if self.built:
            if input_shape != self.input_shape:
                raise ValueError(f"model {self.name!r} is built for input shape "
                                 f"{self.input_shape}, got {input_shape}")
            return self.output_shape
        if not self.layers:
            raise ValueError(f"model {self.name!r} has no layers")
        shape = input_shape
        for layer in self.layers:
            shape = tuple(layer.build(shape, self.dtype, self._rng, backend=self.backend))
        self.input_shape = input_shape
        self.built = True
        return shape

    @property
    def output_shape(self):
        """Per-sample output shape of the last layer (None until built)."""
        if not self.built:
            return None
        return tuple(self.layers[-1].output_shape)

    # -- computation ----------------------------------------------------------

    def prepare_input(self, x, argname="x"):
        """Return x as a C-contiguous array of the model's dtype, building the model if needed.

        Numeric input of another dtype is cast (copied); non-numeric input raises
        TypeError; an empty batch or a scalar raises ValueError. The shape is
        checked by the first layer.
        """
        if type(x) is np.ndarray and x.dtype is self.dtype and self.built and x.ndim and x.shape[0] \
                and x.flags.c_contiguous:
            return x        # the common case (every batch of a fit), in a few cheap tests
        if not isinstance(x, np.ndarray):
            try:
                x = np.asarray(x)
            except (TypeError, ValueError) as exc:
                raise TypeError(f"{argname} must be a numeric array: {exc}") from None
        if x.dtype.kind not in "biuf":
            raise TypeError(f"model {self.name!r} expects numeric input {argname}, "
                            f"got dtype {x.dtype}")
        if x.ndim == 0:
            raise ValueError(f"{argname} must have a batch dimension, got a scalar")
        if x.shape[0] == 0:
            raise ValueError(f"{argname} is an empty batch (shape {x.shape})")
        if not self.built:
            self.build(self._input_shape_arg if self._input_shape_arg is not None else x.shape[1:])
        return np.ascontiguousarray(x, dtype=self.dtype)

    def reserve_workspace(self, batch_size, training=True):
        """Size the shared workspace for the largest need of any layer at this
        batch size. ``forward`` calls it whenever the batch size or mode changes;
        the workspace only grows, so steady training allocates it once."""
        self.workspace.reserve(max(layer.workspace_size(batch_size, training)
                                   for layer in self.layers))
        self._workspace_sized_for = (batch_size, training)

    def forward(self, x, training=False):
        """Output of the model for a batch x (returns the last layer's reused buffer)."""
        x = self.prepare_input(x)
        plan = self._forward_plan(x)
        if plan is not None:
            return plan.forward(x)
        if self._workspace_sized_for != (x.shape[0], bool(training)):
            self.reserve_workspace(x.shape[0], bool(training))
        for layer in self.layers:
            x = layer.forward(x, training=training)
        return x

    __call__ = forward

    def _forward_plan(self, x):
        """The one-call forward of a Dense-only model (stack_step.py) for x's
        batch size, or None when the layers run one by one."""
        if not (x.ndim == 2 and self.layers and type(self.layers[0]) is layers_module.Dense
                and x.shape[1:] == self.layers[0].input_shape):
            return None
        plans = self._forward_plans
        plan = plans.get(x.shape[0])
        if plan is not None and plan.still_valid():
            return plan
        if not stack_step.forward_qualifies(self, self.backend):
            return None
        if len(plans) >= 4:      # batch sizes come and go (a last partial batch)
            plans.clear()
        plan = plans[x.shape[0]] = stack_step.DenseForwardPlan(self, self.backend, x.shape[0])
        return plan

    def backward(self, dy, input_grad=True):
        """Backpropagate dL/dy_pred; fills every layer's grads. Returns dL/dx (or None)."""
        return self._backward_from(len(self.layers) - 1, self.layers[-1].backward, dy, input_grad)

    def backward_from_logits(self, dz, input_grad=True):
        """Backpropagate dL/dz, z the last layer's pre-activation (fused softmax + loss)."""
        last = self.layers[-1]
        if not hasattr(last, "backward_from_logits"):
            raise TypeError(f"{type(last).__name__} '{last.name}' has no backward_from_logits")
        return self._backward_from(len(self.layers) - 1, last.backward_from_logits, dz, input_grad)

    def _backward_from(self, index, first_call, grad, input_grad):
        if not self.built:
            raise RuntimeError(f"model {self.name!r} is not built")
        grad = first_call(grad, need_dx=(index > 0 or input_grad))
        for i in range(index - 1, -1, -1):
            grad = self.layers[i].backward(grad, need_dx=(i > 0 or input_grad))
        return grad

    def predict(self, x, batch_size=None):
        """Model output for x, computed in batches (default 1024) with training=False."""
        x = self.prepare_input(x)
        n = x.shape[0]
        if batch_size is None:
            batch_size = 1024
        _check_positive_int(batch_size, "batch_size")
        out = None
        for start in range(0, n, batch_size):
            y = self.forward(x[start:start + batch_size], training=False)
            if out is None:
                out = np.empty((n,) + y.shape[1:], dtype=y.dtype)
            out[start:start + y.shape[0]] = y
        return out

    # -- parameters -------------------------------------------------------------

    def parameters(self):
        """Iterate over (layer, name, param, grad) of every layer."""
        for layer in self.layers:
            for name, param in layer.params.items():
                yield layer, name, param, layer.grads[name]

    def named_parameters(self, trainable_only=True):
        """Iterate over ("layer/name", param, grad): the optimizer's input."""
        for layer, name, param, grad in self.parameters():
            if not trainable_only or layer.is_param_trainable(name):
                yield f"{layer.name}/{name}", param, grad

    def states(self):
        """Iterate over (layer, name, array) of every non-trainable state array
        (e.g. BatchNormalization's moving statistics): saved with the weights,
        never updated by an optimizer."""
        for layer in self.layers:
            for name, arr in layer.state.items():
                yield layer, name, arr

    def regularization_loss(self):
        """Sum of all layers' weight penalties."""
        total = 0.0
        for layer in self.layers:
            total += layer.regularization_loss()
        return float(total)

    def count_params(self):
        """Total number of parameter scalars."""
        return int(sum(layer.count_params() for layer in self.layers))

    def get_weights(self):
        """Copies of all parameters, in ``parameters()`` order, followed by the
        non-trainable state arrays in ``states()`` order."""
        return [param.copy() for _, _, param, _ in self.parameters()] + \
            [arr.copy() for _, _, arr in self.states()]

    def set_weights(self, weights):
        """Copy ``weights`` (as from ``get_weights``) into the parameters and state, in place."""
        params = [(layer, name, param) for layer, name, param, _ in self.parameters()]
        params += list(self.states())
        weights = list(weights)
        if len(weights) != len(params):
            raise ValueError(f"model {self.name!r} has {len(params)} weight arrays, "
                             f"got {len(weights)}")
        for (layer, name, param), w in zip(params, weights):
            w = np.asarray(w)
            if w.shape != param.shape:
                raise ValueError(f"{type(layer).__name__} '{layer.name}' {name} has shape "
                                 f"{param.shape}, got {w.shape}")
        # In place, so optimizer state and cached references stay valid.
        for (_, _, param), w in zip(params, weights):
            np.copyto(param, np.asarray(w), casting="same_kind")

    # -- description --------------------------------------------------------------

    def get_config(self):
        """JSON-serialisable description of the architecture."""
        return {
            "name": self.name,
            "dtype": self.dtype.name,
            "seed": self.seed,
            "input_shape": list(self.input_shape) if self.input_shape is not None else None,
            "layers": [layer.serialize() for layer in self.layers],
        }

    @classmethod
    def from_config(cls, config, backend=None):
        """Rebuild an (untrained) model from :meth:`get_config` output."""
        layers = [layers_module.deserialize(c) for c in config["layers"]]
        return cls(layers, input_shape=config.get("input_shape"),
                   dtype=config.get("dtype", "float32"),
                   seed=config.get("seed"), name=config.get("name"), backend=backend)

    def save(self, path, optimizer=None, extra=None):
        """Save architecture and weights (and optionally optimizer state) to ``path`` (.rpz)."""
        from .io import save_model
        save_model(self, path, optimizer=optimizer, extra=extra)

    def summary(self, print_fn=print):
        """Print (via ``print_fn``, None to skip) and return a Keras-like table."""
        if not self.built:
            raise ValueError(f"model {self.name!r} is not built; pass input_shape=... "
                             f"or call build() first")

        def names(layer, indent):  # "name (Class)" cells, nested ones indented
            yield f"{indent}{layer.name} ({type(layer).__name__})"
            for child in layer.sublayers():
                yield from names(child, indent + "  ")

        longest = max(len(cell) for layer in self.layers for cell in names(layer, ""))
        widths = (max(33, longest + 2), 26, 12)
        line = "_" * sum(widths)

        def row(cells):
            return "".join(str(c).ljust(w) for c, w in zip(cells, widths)).rstrip()

        rows = [f'Model: "{self.name}"', line,
                row(("Layer (type)", "Output Shape", "Param #")), "=" * sum(widths)]

        def layer_rows(layer, indent):
            shape = "(None, " + ", ".join(str(s) for s in layer.output_shape) + ")"
            rows.append(row((next(names(layer, indent)), shape, f"{layer.count_params():,}")))
            # Container layers (Residual) list their inner layers, indented.
            for child in layer.sublayers():
                layer_rows(child, indent + "  ")

        for i, layer in enumerate(self.layers):
            layer_rows(layer, "")
            if i < len(self.layers) - 1:
                rows.append("")
        total = self.count_params()
        trainable = sum(layer.count_trainable_params() for layer in self.layers)
        rows += ["=" * sum(widths),
                 f"Total params: {total:,}",
                 f"Trainable params: {trainable:,}",
                 f"Non-trainable params: {total - trainable:,}",
                 line]
        text = "\n".join(rows)
        if print_fn is not None:
            print_fn(text)
        return text

    def __repr__(self):
        return f"<Sequential name={self.name!r} layers={len(self.layers)} built={self.built}>"


def _is_dtype_like(dtype):
    if dtype is None:  # np.dtype(None) would silently mean float64
        return False
    try:
        np.dtype(dtype)
        return True
    except TypeError:
        return False


def _as_shape(shape):
    if isinstance(shape, (int, np.integer)):
        shape = (shape,)
    try:
        shape = tuple(int(s) for s in shape)
    except (TypeError, ValueError):
        raise ValueError(f"input_shape must be a tuple of positive ints, got {shape!r}") from None
    if not shape or any(s < 1 for s in shape):
        raise ValueError(f"input_shape must be a tuple of positive ints, got {shape!r}")
    return shape


def _check_positive_int(value, argname):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{argname} must be a positive integer, got {value!r}")
    return int(value)
