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
    """Logistic function with slope a: y = 1 / (1 + exp(-a x)).

    The derivative is a * y * (1 - y). With the default slope 1 the backend's
    fused kernel is used; any other slope runs in NumPy (the kernels know only
    slope 1). As a grows, sigmoid(a x) tends to the Heaviside step.
    """

    name = "sigmoid"

    def __init__(self, slope=1.0):
        slope = float(slope)
        if not np.isfinite(slope) or slope <= 0:
            raise ValueError(f"sigmoid slope must be a positive finite number, got {slope}")
        self.slope = slope
        # An instance attribute shadows the class flag: only slope 1 is fused.
        self.fused = slope == 1.0

    def forward(self, x, backend, out=None):
        if self.fused:
            return backend.activation_forward(self.name, x, out=out)
        if out is None:
            out = np.empty_like(x)
        # 0.5 * (1 + tanh(z / 2)) equals 1 / (1 + exp(-z)) and never overflows.
        np.multiply(x, 0.5 * self.slope, out=out)
        np.tanh(out, out=out)
        out += 1.0
        out *= 0.5
        return out

    def backward(self, y, dy, backend, x=None, out=None):
        if self.fused:
            return backend.activation_backward(self.name, y, dy, out=out)
        if out is None:
            out = np.empty_like(y)
        np.multiply(y, 1.0 - y, out=out)
        out *= self.slope
        out *= dy
        return out

    def get_config(self):
        if self.slope == 1.0:
            return self.name
        return {"name": self.name, "slope": self.slope}

    def __repr__(self):
        return f"Sigmoid(slope={self.slope})"

    def __eq__(self, other):
        return type(self) is type(other) and self.slope == other.slope

    def __hash__(self):
        return hash((type(self), self.slope))


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


class _NumpyActivation(Activation):
    """An elementwise activation computed with NumPy from its input x.

    Subclasses define ``_value(x)`` and ``_derivative(x, y)`` (dy/dx as an
    array). Layers keep the pre-activation for non-fused activations, so the
    derivative may use x as well as y.
    """

    needs_input = True
    _params = ()   # names of float hyper-parameters, stored as attributes

    def _value(self, x):
        raise NotImplementedError

    def _derivative(self, x, y):
        raise NotImplementedError

    def forward(self, x, backend, out=None):
        y = self._value(x)
        if out is None:
            return np.asarray(y, dtype=x.dtype)
        out[...] = y
        return out

    def backward(self, y, dy, backend, x=None, out=None):
        if x is None:
            raise ValueError(f"{self.name} backward needs the pre-activation x")
        grad = self._derivative(x, y) * dy
        if out is None:
            return np.asarray(grad, dtype=dy.dtype)
        out[...] = grad
        return out

    def get_config(self):
        if not self._params:
            return self.name
        config = {"name": self.name}
        config.update({p: getattr(self, p) for p in self._params})
        return config

    def __repr__(self):
        args = ", ".join(f"{p}={getattr(self, p)}" for p in self._params)
        return f"{type(self).__name__}({args})"

    def __eq__(self, other):
        return type(self) is type(other) and all(
            getattr(self, p) == getattr(other, p) for p in self._params)

    def __hash__(self):
        return hash((type(self),) + tuple(getattr(self, p) for p in self._params))


class Step(_NumpyActivation):
    """Heaviside step: 1 for x >= 0 (so H(0) = 1), else 0.

    Its derivative is 0 everywhere it exists (and undefined at 0), so the
    backward pass returns zeros: a network of step units cannot be trained by
    gradient descent. It is here for the perceptron examples of the course.
    """

    name = "step"

    def _value(self, x):
        return (x >= 0).astype(x.dtype)

    def _derivative(self, x, y):
        return np.zeros_like(x)


class Arctan(_NumpyActivation):
    """arctan(x), range (-pi/2, pi/2); derivative 1 / (1 + x**2)."""

    name = "arctan"

    def _value(self, x):
        return np.arctan(x)

    def _derivative(self, x, y):
        return 1.0 / (1.0 + x * x)


class LeakyReLU(_NumpyActivation):
    """x for x > 0, alpha * x otherwise (alpha = 0.01 by default).

    The derivative at 0 is taken as alpha (the left one), like relu's 0.
    """

    name = "leaky_relu"
    _params = ("alpha",)

    def __init__(self, alpha=0.01):
        self.alpha = float(alpha)

    def _value(self, x):
        return np.where(x > 0, x, self.alpha * x)

    def _derivative(self, x, y):
        return np.where(x > 0, 1.0, self.alpha)


class ELU(_NumpyActivation):
    """x for x > 0, alpha * (exp(x) - 1) otherwise (alpha = 1 by default).

    expm1 keeps precision near 0; the exponential is taken of min(x, 0) only,
    so large positive inputs cannot overflow in the branch that np.where
    discards. Derivative: 1 for x > 0, alpha * exp(x) otherwise.
    """

    name = "elu"
    _params = ("alpha",)

    def __init__(self, alpha=1.0):
        self.alpha = float(alpha)

    def _value(self, x):
        return np.where(x > 0, x, self.alpha * np.expm1(np.minimum(x, 0)))

    def _derivative(self, x, y):
        return np.where(x > 0, 1.0, self.alpha * np.exp(np.minimum(x, 0)))


def _stable_sigmoid(x):
    # 0.5 * (1 + tanh(x / 2)) == 1 / (1 + exp(-x)), without overflow for any x.
    return 0.5 * (1.0 + np.tanh(0.5 * x))


class Softplus(_NumpyActivation):
    """log(1 + exp(x)), computed as logaddexp(0, x) so it never overflows.

    Derivative: sigmoid(x).
    """

    name = "softplus"

    def _value(self, x):
        return np.logaddexp(0.0, x)

    def _derivative(self, x, y):
        return _stable_sigmoid(x)


class GELU(_NumpyActivation):
    """Gaussian error linear unit, **tanh approximation** (Hendrycks & Gimpel)::

        gelu(x) = 0.5 x (1 + tanh(u)),  u = sqrt(2/pi) (x + 0.044715 x**3)

    (PyTorch's ``gelu(approximate="tanh")``). It differs from the exact
    x * Phi(x) by less than 1e-3 and needs no erf, which NumPy lacks.
    """

    name = "gelu"
    _C = np.sqrt(2.0 / np.pi)

    def _value(self, x):
        return 0.5 * x * (1.0 + np.tanh(self._C * (x + 0.044715 * x ** 3)))

    def _derivative(self, x, y):
        t = np.tanh(self._C * (x + 0.044715 * x ** 3))
        du = self._C * (1.0 + 3 * 0.044715 * x * x)
        return 0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * du


class Swish(_NumpyActivation):
    """x * sigmoid(x) (also called SiLU); derivative s + x s (1 - s)."""

    name = "swish"

    def _value(self, x):
        return x * _stable_sigmoid(x)

    def _derivative(self, x, y):
        s = _stable_sigmoid(x)
        return s + x * s * (1.0 - s)


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


for _cls in (Linear, ReLU, Sigmoid, Tanh, Softmax, Step, Arctan, LeakyReLU, ELU,
             Softplus, GELU, Swish):
    register(_cls)
_ALIASES.update({"heaviside": "step", "leakyrelu": "leaky_relu", "silu": "swish"})


def names():
    """Valid activation names (without aliases), sorted."""
    return sorted(_REGISTRY)


def get(identifier, **kwargs):
    """Return an Activation for a name, None (linear) or an Activation instance.

    Keyword arguments go to the activation's constructor
    (``get("sigmoid", slope=4.0)``, ``get("leaky_relu", alpha=0.1)``). A dict
    ``{"name": ..., **kwargs}`` (what ``get_config`` returns for an activation
    with parameters) is accepted as well.
    """
    if isinstance(identifier, dict):
        config = dict(identifier)
        if "name" not in config:
            raise ValueError(f"activation config needs a 'name', got {identifier!r}")
        name = config.pop("name")
        config.update(kwargs)
        return get(name, **config)
    if kwargs and not isinstance(identifier, str):
        raise TypeError("activation keyword arguments need an activation name")
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
            try:
                return _REGISTRY[key](**kwargs)
            except TypeError:
                raise TypeError(f"activation {key!r} does not accept the arguments "
                                f"{sorted(kwargs)}") from None
        raise ValueError(f"unknown activation {identifier!r}; valid names: "
                         f"{', '.join(names())} (or None for linear)")
    raise TypeError(f"activation must be a name, None or an Activation, "
                    f"got {type(identifier).__name__}")
