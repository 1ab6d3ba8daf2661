"""Activation functions.

An activation is a small object with a ``name`` and two methods:

* ``forward(x, backend, out=None) -> y``
* ``backward(y, dy, backend, x=None, out=None) -> dx``: the gradient with
  respect to the activation's input. Activations whose derivative can be
  written from the output (relu, sigmoid, tanh, softmax) ignore ``x``; an
  activation that needs its input sets ``needs_input = True`` and the layer
  then keeps the pre-activation and passes it as ``x``.

``fused = True`` marks the activations the backend can apply inside the GEMM
write-back of ``dense_forward`` (docs/BACKEND.md, FUSED_ACTIVATIONS); layers use
that fused path for them.

New activations are added by subclassing :class:`Activation` and calling
:func:`register`.
"""
import numpy as np


class Activation:
    """Base class of activation functions."""

    name = None
    fused = False        # applied inside backend.dense_forward / dense_backward
    needs_input = False  # backward needs the pre-activation x, not only y

    def forward(self, x, backend, out=None):
        """Return act(x), written into ``out`` when given."""
        raise NotImplementedError

    def backward(self, y, dy, backend, x=None, out=None):
        """Return dL/dx given y = act(x) and dy = dL/dy."""
        raise NotImplementedError

    def get_config(self):
        """The name is enough to rebuild a parameter-free activation."""
        return self.name

    def __repr__(self):
        return f"{type(self).__name__}()"

    def __eq__(self, other):
        return type(self) is type(other)

    def __hash__(self):
        return hash(type(self))


class _FusedActivation(Activation):
    """An elementwise activation implemented by the backend's kernels."""

    fused = True

    def forward(self, x, backend, out=None):
        return backend.activation_forward(self.name, x, out=out)

    def backward(self, y, dy, backend, x=None, out=None):
        return backend.activation_backward(self.name, y, dy, out=out)


class Linear(_FusedActivation):
    """Identity: act(x) = x."""

    name = "linear"


class ReLU(_FusedActivation):
    """Rectified linear unit: max(x, 0). The derivative at 0 is taken as 0."""

    name = "relu"


class Sigmoid(_FusedActivation):
    """Logistic function 1 / (1 + exp(-x)); derivative y * (1 - y)."""

    name = "sigmoid"


class Tanh(_FusedActivation):
    """Hyperbolic tangent; derivative 1 - y**2."""

    name = "tanh"


class Softmax(Activation):
    """Softmax over the last axis (max-subtracted by the backend).

    Standalone backward: dx = y * (dy - sum(dy * y, axis=-1)). When softmax
    feeds a categorical cross-entropy, the Trainer skips this and uses the
    fused ``softmax_cross_entropy`` op, whose gradient w.r.t. the logits is
    simply ``(y - targets) / N``.
    """

    name = "softmax"

    def forward(self, x, backend, out=None):
        if x.ndim < 1:
            raise ValueError("softmax needs at least a 1-D input")
        # The backend works on 2-D arrays; view any other rank as rows.
        c = x.shape[-1]
        x2 = x.reshape(-1, c)
        if out is None:
            return backend.softmax(x2).reshape(x.shape)
        backend.softmax(x2, out=out.reshape(-1, c))
        return out

    def backward(self, y, dy, backend, x=None, out=None):
        if out is None:
            out = np.empty_like(y)
        dot = np.sum(dy * y, axis=-1, keepdims=True)
        np.subtract(dy, dot, out=out)
        out *= y
        return out


_REGISTRY = {}
_ALIASES = {"identity": "linear"}


def register(cls, *aliases):
    """Make activation class ``cls`` available to :func:`get` by its ``name`` and aliases."""
    if not (isinstance(cls, type) and issubclass(cls, Activation)) or not cls.name:
        raise TypeError("register expects an Activation subclass with a name")
    _REGISTRY[cls.name] = cls
    for alias in aliases:
        _ALIASES[alias] = cls.name
    return cls


for _cls in (Linear, ReLU, Sigmoid, Tanh, Softmax):
    register(_cls)


def names():
    """Valid activation names (without aliases), sorted."""
    return sorted(_REGISTRY)


def get(identifier):
    """Return an Activation for a name, None (linear) or an Activation instance."""
    if identifier is None:
        return Linear()
    if isinstance(identifier, Activation):
        return identifier
    if isinstance(identifier, type) and issubclass(identifier, Activation):
        return identifier()
    if isinstance(identifier, str):
        key = identifier.lower()
        key = _ALIASES.get(key, key)
        if key in _REGISTRY:
            return _REGISTRY[key]()
        raise ValueError(f"unknown activation {identifier!r}; valid names: "
                         f"{', '.join(names())} (or None for linear)")
    raise TypeError(f"activation must be a name, None or an Activation, "
                    f"got {type(identifier).__name__}")
