"""Activation functions.

An activation is a small object with a ``name`` and two methods:

* ``forward(x, backend, out=None) -> y``
* ``backward(y, dy, backend, x=None, out=None) -> dx``: the gradient with
  respect to the activation's input. Activations whose derivative can be
  written from the output (linear, relu, sigmoid, tanh, step, leaky_relu, elu,
  softmax) ignore ``x``; an activation that needs its input (arctan, softplus,
  gelu, swish, mish) sets ``needs_input = True`` and the layer then keeps the
  pre-activation and passes it as ``x``.

Every elementwise activation here runs in the backend's kernels (C with
OpenMP by default; docs/BACKEND.md), its parameter (sigmoid slope,
leaky_relu/elu alpha) passed explicitly as ``param``. Two flags tell layers
how they may fuse it into the GEMM write-back of a dense or conv layer:

* ``fusable``: the derivative comes from the output, so ``dense_forward`` /
  ``dense_backward`` can apply it, given ``param`` (Dense does).
* ``fused``: fusable *and* at its default parameter, so the name alone says
  everything (Conv2D fuses these; with another parameter it applies the
  elementwise kernel right after the convolution).

New activations are added by subclassing :class:`Activation` and calling
:func:`register`.
"""
import numpy as np


class Activation:
    """Base class of activation functions."""

    name = None
    fused = False        # the backend can fuse it by name (default parameter)
    fusable = False      # the backend can fuse it given ``param``
    needs_input = False  # backward needs the pre-activation x, not only y
    param = None         # the explicit parameter handed to the backend, if any

    def forward(self, x, backend, out=None):
        """Return act(x), written into ``out`` when given."""
        raise NotImplementedError

    def backward(self, y, dy, backend, x=None, out=None):
        """Return dL/dx given y = act(x) and dy = dL/dy."""
        raise NotImplementedError

    def check_dtype(self, dtype, where=None):
        """ValueError when this activation cannot run in ``dtype`` (layers call
        it when they are built); nothing to check without a parameter."""

    def get_config(self):
        """The name is enough to rebuild a parameter-free activation."""
        return self.name

    def __repr__(self):
        return f"{type(self).__name__}()"

    def __eq__(self, other):
        return type(self) is type(other)

    def __hash__(self):
        return hash(type(self))


class _KernelActivation(Activation):
    """An elementwise activation computed by the backend's kernels.

    Subclasses with a hyper-parameter list it in ``_params`` (attribute names)
    and expose it as ``param``; ``_default`` is its default value.
    """

    fused = True
    fusable = True
    _params = ()
    _default = None

    def check_dtype(self, dtype, where=None):
        if self.param is not None:
            check_param_dtype(self.name, self.param, dtype, where)

    def forward(self, x, backend, out=None):
        return backend.activation_forward(self.name, x, out=out, param=self.param)

    def backward(self, y, dy, backend, x=None, out=None):
        if self.needs_input and x is None:
            raise ValueError(f"{self.name} backward needs the pre-activation x")
        return backend.activation_backward(self.name, y, dy, out=out, x=x, param=self.param)

    def get_config(self):
        if not self._params or self.param == self._default:
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


class _InputDerivativeActivation(_KernelActivation):
    """A kernel activation whose derivative needs the input x (never fused)."""

    fused = False
    fusable = False
    needs_input = True


def check_param_dtype(name, param, dtype, where=None):
    """ValueError unless the activation parameter ``param`` keeps its meaning
    in ``dtype``: the kernels compute in the layer's dtype, where a float32
    model's ELU(1e300), LeakyReLU(1e300) or sigmoid slope of 1e300 would be
    inf (outputs inf/NaN), and a sigmoid slope of 1e-300 would be 0."""
    dtype = np.dtype(dtype)
    value = float(param)
    largest = float(np.finfo(dtype).max)
    as_dtype = float(dtype.type(value)) if abs(value) <= largest else float("inf")
    prefix = f"{where}: " if where else ""
    if not np.isfinite(as_dtype):
        raise ValueError(f"{prefix}{name} parameter {value!r} does not fit {dtype} (largest "
                         f"{largest:.4g}); use a smaller value or float64")
    if name == "sigmoid" and as_dtype <= 0.0:
        raise ValueError(f"{prefix}sigmoid slope {value!r} rounds to 0 in {dtype}; use a "
                         f"larger slope or float64")


def _check_alpha(name, alpha):
    alpha = float(alpha)
    # The derivative is read from the output's sign, which needs alpha >= 0.
    if not np.isfinite(alpha) or alpha < 0:
        raise ValueError(f"{name} alpha must be a finite number >= 0, got {alpha}")
    return alpha


class Linear(_KernelActivation):
    """Identity: act(x) = x."""

    name = "linear"


class ReLU(_KernelActivation):
    """Rectified linear unit: max(x, 0). The derivative at 0 is taken as 0."""

    name = "relu"


class Sigmoid(_KernelActivation):
    """Logistic function with slope a: y = 1 / (1 + exp(-a x)).

    The derivative is a * y * (1 - y), taken from the output. The slope is
    passed to the C kernels explicitly; Dense fuses any slope, Conv2D fuses
    slope 1 and applies the elementwise kernel after the convolution
    otherwise. As a grows, sigmoid(a x) tends to the Heaviside step.
    """

    name = "sigmoid"
    _params = ("slope",)
    _default = 1.0

    def __init__(self, slope=1.0):
        slope = float(slope)
        if not np.isfinite(slope) or slope <= 0:
            raise ValueError(f"sigmoid slope must be a positive finite number, got {slope}")
        self.slope = slope
        # An instance attribute shadows the class flag: only slope 1 is fused by name.
        self.fused = slope == self._default

    @property
    def param(self):
        return self.slope


class Tanh(_KernelActivation):
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


class Step(_KernelActivation):
    """Heaviside step: 1 for x >= 0 (so H(0) = 1), else 0.

    Its derivative is 0 everywhere it exists (and undefined at 0), so the
    backward pass returns zeros (zero gradient): a network of step units cannot
    be trained by gradient descent. It is here for the perceptron examples of
    the course.
    """

    name = "step"


class LeakyReLU(_KernelActivation):
    """x for x > 0, alpha * x otherwise (alpha >= 0, 0.01 by default).

    The derivative (1 or alpha) is taken from the output, so it can be fused
    into dense/conv; at 0 it is taken as alpha (the left one), like relu's 0.
    """

    name = "leaky_relu"
    _params = ("alpha",)
    _default = 0.01

    def __init__(self, alpha=0.01):
        self.alpha = _check_alpha("leaky_relu", alpha)
        self.fused = self.alpha == self._default

    @property
    def param(self):
        return self.alpha


class ELU(_KernelActivation):
    """x for x > 0, alpha * (exp(x) - 1) otherwise (alpha >= 0, 1 by default).

    Computed with expm1, which keeps precision near 0. The derivative is 1 for
    x > 0 and alpha * exp(x) = y + alpha otherwise: taken from the output, so
    it can be fused into dense/conv.
    """

    name = "elu"
    _params = ("alpha",)
    _default = 1.0

    def __init__(self, alpha=1.0):
        self.alpha = _check_alpha("elu", alpha)
        self.fused = self.alpha == self._default

    @property
    def param(self):
        return self.alpha


class Arctan(_InputDerivativeActivation):
    """arctan(x), range (-pi/2, pi/2); derivative 1 / (1 + x**2) (from the input)."""

    name = "arctan"


class Softplus(_InputDerivativeActivation):
    """log(1 + exp(x)), computed as max(x, 0) + log1p(exp(-|x|)) so it never overflows.

    Derivative: sigmoid(x), from the input.
    """

    name = "softplus"


class GELU(_InputDerivativeActivation):
    """Gaussian error linear unit, **tanh approximation** (Hendrycks & Gimpel)::

        gelu(x) = 0.5 x (1 + tanh(u)),  u = sqrt(2/pi) (x + 0.044715 x**3)

    (PyTorch's ``gelu(approximate="tanh")``). It differs from the exact
    x * Phi(x) by less than 1e-3. The C kernel evaluates it as
    x * sigmoid(2u), the same function without the cancellation in 1 + tanh(u)
    for negative x. Derivative from the input.
    """

    name = "gelu"


class Swish(_InputDerivativeActivation):
    """x * sigmoid(x) (also called SiLU); derivative s + x s (1 - s), from the input."""

    name = "swish"


class Mish(_InputDerivativeActivation):
    """x * tanh(softplus(x)) (Misra 2019), smooth and non-monotonic like swish.

    Derivative t + x s (1 - t^2) with t = tanh(softplus(x)) and s = sigmoid(x),
    from the input. The C kernel gets t from one exponential,
    ((1 + e^x)^2 - 1) / ((1 + e^x)^2 + 1), without overflow for any x.
    """

    name = "mish"


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
             Softplus, GELU, Swish, Mish):
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
