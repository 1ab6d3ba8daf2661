"""The Layer base class and the layer registry used for (de)serialisation.

Contract (see DESIGN.md):

* ``build(input_shape, dtype, rng) -> output_shape`` allocates ``params``
  (name -> array) and zeroed ``grads`` of the same shapes. Shapes exclude
  the batch dimension.
* ``forward(x, training=False) -> y`` caches only what backward needs.
* ``backward(dy, need_dx=True) -> dx`` OVERWRITES ``grads`` (never
  accumulates) and returns dL/dx. ``need_dx=False`` lets the model skip the
  input gradient of its first layer during training; layers may then return
  None.
* ``get_config()`` is JSON-serialisable and enough to rebuild the layer.
* ``state`` (name -> array) holds non-trainable values the layer updates
  itself (BatchNormalization's moving statistics): saved and loaded with
  the weights and counted by ``summary()``, but never given to an optimizer
  and without gradients. Create them with ``add_state``.
* Layers containing layers (``Residual``) return them from ``sublayers()``
  and expose their parameters and state under "child/name" keys.

Layers call ``self.backend.<op>`` (docs/BACKEND.md), never ``_core``.

Output and gradient buffers belong to the layer and are reused while the
batch size stays the same: the array returned by ``forward`` is overwritten
by the next ``forward`` call. Copy it if you need to keep it.
"""
import re

import numpy as np

from .. import aligned
from ..backend import get_backend, state_with_modules, state_without_modules

_REGISTRY = {}


def registered_layers():
    """Dict of class name -> layer class, for every Layer subclass defined."""
    return dict(_REGISTRY)


def default_name(cls):
    """snake_case default name of a layer class: Dense -> dense, MaxPool2D -> max_pool2d."""
    return re.sub(r"(?<=[a-z])(?=[A-Z])", "_", cls.__name__).lower()


def format_shape(shape):
    """(784,) -> "(N, 784)": a per-sample shape shown with its batch dimension."""
    return "(" + ", ".join(["N"] + [str(s) for s in shape]) + ")"


class Layer:
    """Base class of all layers."""

    def __init_subclass__(cls, **kwargs):
        # Every concrete layer class becomes deserialisable by its class name.
        super().__init_subclass__(**kwargs)
        _REGISTRY[cls.__name__] = cls

    def __init__(self, name=None):
        if name is not None and (not isinstance(name, str) or not name):
            raise ValueError(f"layer name must be a non-empty string, got {name!r}")
        self.name = name
        self.params = {}
        self.grads = {}
        self.state = {}
        self.built = False
        self.trainable = True
        self.backend = None
        self.dtype = None
        self.input_shape = None
        self.output_shape = None
        self.workspace = None  # scratch memory shared with the model's other layers (workspace.py)

    # -- copying ----------------------------------------------------------------

    # copy.deepcopy and pickle: the backend module travels as its name.
    def __getstate__(self):
        return state_without_modules(self.__dict__)

    def __setstate__(self, state):
        self.__dict__.update(state_with_modules(state))

    # -- identification -------------------------------------------------------

    @property
    def display_name(self):
        """The layer's name, or its default name while it has none."""
        return self.name if self.name is not None else default_name(type(self))

    def _describe(self):
        return f"{type(self).__name__} '{self.display_name}'"

    # -- building -------------------------------------------------------------

    def build(self, input_shape, dtype, rng, backend=None):
        """Record shape/dtype/backend; subclasses create params and return the output shape."""
        dtype = np.dtype(dtype)
        if dtype not in (np.dtype(np.float32), np.dtype(np.float64)):
            raise TypeError(f"{self._describe()}: dtype must be float32 or float64, got {dtype}")
        if self.name is None:
            self.name = default_name(type(self))
        # An activation's parameter must fit the dtype (ELU(1e300) is inf in float32).
        activation = getattr(self, "activation", None)
        if hasattr(activation, "check_dtype"):
            activation.check_dtype(dtype, self._describe())
        self.input_shape = tuple(int(s) for s in input_shape)
        self.dtype = dtype
        self.backend = backend if backend is not None else get_backend()
        self.output_shape = self.compute_output_shape(self.input_shape)
        self.built = True
        return self.output_shape

    def compute_output_shape(self, input_shape):
        """Per-sample output shape for a per-sample input shape (default: unchanged)."""
        return tuple(input_shape)

    def workspace_size(self, batch_size, training=True):
        """Elements of shared scratch memory forward (and, when training, backward)
        needs for a batch of ``batch_size``; the model sizes its workspace from these."""
        return 0

    def add_param(self, name, value):
        """Register a trainable parameter and its zeroed gradient."""
        self.params[name] = aligned.copy(value, self.dtype)
        self.grads[name] = aligned.zeros(self.params[name].shape, self.dtype)
        return self.params[name]

    def add_state(self, name, value):
        """Register a non-trainable state array (no gradient; not seen by optimizers)."""
        self.state[name] = aligned.copy(value, self.dtype)
        return self.state[name]

    def sublayers(self):
        """Layers contained in this one (empty except for container layers)."""
        return []

    def is_param_trainable(self, name):
        """Whether the optimizer updates ``params[name]`` (containers ask the owning child)."""
        return self.trainable

    # -- computation ----------------------------------------------------------

    def forward(self, x, training=False):
        raise NotImplementedError

    def backward(self, dy, need_dx=True):
        raise NotImplementedError

    def __call__(self, x, training=False):
        return self.forward(x, training=training)

    def check_input(self, x):
        """Raise TypeError/ValueError unless x is a (N, *input_shape) array of the layer's dtype."""
        # The common case in a few cheap tests (this runs for every layer of
        # every batch); the messages below sort out what is wrong otherwise.
        if (type(x) is np.ndarray and x.dtype is self.dtype and x.shape[1:] == self.input_shape
                and x.shape[0] > 0 and self.built):
            return
        if not self.built:
            raise RuntimeError(f"{self._describe()} is not built; call build() first")
        if not isinstance(x, np.ndarray):
            raise TypeError(f"{self._describe()} expects a numpy.ndarray, got {type(x).__name__}")
        if x.dtype != self.dtype:
            raise TypeError(f"{self._describe()} expects {self.dtype} input, got {x.dtype}")
        if x.ndim != len(self.input_shape) + 1 or x.shape[1:] != self.input_shape:
            raise ValueError(f"{self._describe()} expects input of shape "
                             f"{format_shape(self.input_shape)}, got {x.shape}")
        if x.shape[0] == 0:
            raise ValueError(f"{self._describe()} got an empty batch (0 samples)")

    def check_output_grad(self, dy, n):
        """Raise unless dy matches the output of the last forward (batch n)."""
        if (type(dy) is np.ndarray and dy.dtype is self.dtype and dy.shape[0] == n
                and dy.shape[1:] == self.output_shape):
            return          # the common case, in a few cheap tests
        if not isinstance(dy, np.ndarray):
            raise TypeError(f"{self._describe()}: dy must be a numpy.ndarray, "
                            f"got {type(dy).__name__}")
        if dy.dtype != self.dtype:
            raise TypeError(f"{self._describe()}: dy must be {self.dtype}, got {dy.dtype}")
        expected = (n,) + tuple(self.output_shape)
        if dy.shape != expected:
            raise ValueError(f"{self._describe()}: dy must have shape {expected}, got {dy.shape}")

    # -- regularisation (layers with regularizers override regularized_params) --

    def regularized_params(self):
        """``(parameter name, Regularizer)`` pairs this layer penalises.

        The default serves the weighted layers (Dense, Conv1D, Conv2D): the
        kernel "W" with ``kernel_regularizer`` and the bias "b" with
        ``bias_regularizer``, where the layer has them. Layers with other
        penalised parameters (PReLU's slopes) override this."""
        kernel_reg = getattr(self, "kernel_regularizer", None)
        bias_reg = getattr(self, "bias_regularizer", None)
        if kernel_reg is None and bias_reg is None:
            return ()       # the usual case, asked twice per layer per step
        pairs = [("W", kernel_reg), ("b", bias_reg)]
        return [(name, reg) for name, reg in pairs if reg is not None and name in self.params]

    def regularization_loss(self):
        """Sum of the layer's weight penalties (0.0 without regularizers)."""
        pairs = self.regularized_params()
        if not pairs:
            return 0.0      # the usual case: no generator, no sum, per layer per step
        return float(sum(reg(self.params[name]) for name, reg in pairs))

    def add_regularization_gradients(self):
        """Add each penalty's gradient to ``grads`` (called at the end of backward)."""
        for name, reg in self.regularized_params():
            self.grads[name] += reg.gradient(self.params[name])

    # -- bookkeeping ----------------------------------------------------------

    def count_params(self):
        """Number of scalars in the layer's parameters and non-trainable state (as Keras)."""
        return int(sum(p.size for p in self.params.values())
                   + sum(s.size for s in self.state.values()))

    def count_trainable_params(self):
        """Number of scalars the optimizer updates."""
        return int(sum(p.size for name, p in self.params.items() if self.is_param_trainable(name)))

    def get_config(self):
        """JSON-serialisable constructor arguments."""
        return {"name": self.name}

    def serialize(self):
        """``{"class_name": ..., "config": ...}``, the inverse of ``layers.deserialize``;
        a frozen layer (``trainable = False``) also carries ``"trainable": False``."""
        out = {"class_name": type(self).__name__, "config": self.get_config()}
        if not self.trainable:
            out["trainable"] = False
        return out

    @classmethod
    def from_config(cls, config):
        return cls(**config)

    def __repr__(self):
        return f"<{type(self).__name__} name={self.name!r} built={self.built}>"


class BufferCache:
    """Per-layer arrays reused across calls while their shape and dtype stay the same.

    ``get(key, shape, dtype)`` returns the stored array when it matches and
    allocates (and stores) a new one otherwise, so steady-state training with
    a fixed batch size allocates nothing.
    """

    def __init__(self):
        self._arrays = {}

    def get(self, key, shape, dtype):
        arr = self._arrays.get(key)
        if arr is not None and arr.shape == shape and arr.dtype is dtype:
            return arr
        shape = tuple(shape)
        if arr is None or arr.shape != shape or arr.dtype != dtype:
            arr = aligned.empty(shape, dtype)
            self._arrays[key] = arr
        return arr

    def clear(self):
        self._arrays.clear()
