"""Weight initializers.

``get(name)`` returns a function ``init(shape, rng, dtype) -> ndarray``, where
``rng`` is a ``numpy.random.Generator``. Values are drawn in float64 and then
cast, so a float32 and a float64 model built with the same seed start from
the same (rounded) weights.

Fans follow the usual convention:
* Dense kernels (in, out): fan_in = in, fan_out = out.
* Conv kernels (kh, kw, cin, cout): receptive field kh*kw,
  fan_in = kh*kw*cin, fan_out = kh*kw*cout.
* 1-D shapes (biases): fan_in = fan_out = the length.

The ``*_normal`` variants use a plain (not truncated) normal distribution.

Initializers with a parameter are classes (``Uniform(limit)``,
``Normal(stddev)``, ``TruncatedNormal(stddev)``, ``Orthogonal(gain)``,
``Constant(value)``, ``VarianceScaling(scale, mode, distribution)``): an
instance is called like the functions and serialises itself, so a model
built with ``Dense(8, kernel_initializer=Uniform(0.1))`` saves and loads.
A subclass of :class:`Initializer` defined by the user is found by its class
name when the model is loaded (define or import it first); a plain function
can be made loadable with :func:`register`.
"""
import functools
import math

import numpy as np


def compute_fans(shape):
    """Return (fan_in, fan_out) for a weight of the given shape."""
    shape = tuple(int(s) for s in shape)
    if len(shape) == 0:
        return 1, 1
    if len(shape) == 1:
        return shape[0], shape[0]
    receptive = math.prod(shape[:-2]) if len(shape) > 2 else 1
    return receptive * shape[-2], receptive * shape[-1]


def zeros(shape, rng=None, dtype="float32"):
    """All zeros."""
    return np.zeros(shape, dtype=dtype)


def ones(shape, rng=None, dtype="float32"):
    """All ones."""
    return np.ones(shape, dtype=dtype)


def uniform(shape, rng, dtype="float32", limit=0.05):
    """Uniform on [-limit, limit] (default 0.05)."""
    return rng.uniform(-limit, limit, size=shape).astype(dtype)


def normal(shape, rng, dtype="float32", stddev=0.05):
    """Normal with mean 0 and the given standard deviation (default 0.05)."""
    return rng.normal(0.0, stddev, size=shape).astype(dtype)


def glorot_uniform(shape, rng, dtype="float32"):
    """Glorot/Xavier uniform: limit sqrt(6 / (fan_in + fan_out))."""
    fan_in, fan_out = compute_fans(shape)
    return uniform(shape, rng, dtype, limit=math.sqrt(6.0 / (fan_in + fan_out)))


def glorot_normal(shape, rng, dtype="float32"):
    """Glorot/Xavier normal: stddev sqrt(2 / (fan_in + fan_out))."""
    fan_in, fan_out = compute_fans(shape)
    return normal(shape, rng, dtype, stddev=math.sqrt(2.0 / (fan_in + fan_out)))


def he_uniform(shape, rng, dtype="float32"):
    """He/Kaiming uniform (for relu): limit sqrt(6 / fan_in)."""
    fan_in, _ = compute_fans(shape)
    return uniform(shape, rng, dtype, limit=math.sqrt(6.0 / fan_in))


def he_normal(shape, rng, dtype="float32"):
    """He/Kaiming normal (for relu): stddev sqrt(2 / fan_in)."""
    fan_in, _ = compute_fans(shape)
    return normal(shape, rng, dtype, stddev=math.sqrt(2.0 / fan_in))


def lecun_normal(shape, rng, dtype="float32"):
    """LeCun normal: stddev sqrt(1 / fan_in)."""
    fan_in, _ = compute_fans(shape)
    return normal(shape, rng, dtype, stddev=math.sqrt(1.0 / fan_in))


def lecun_uniform(shape, rng, dtype="float32"):
    """LeCun uniform: limit sqrt(3 / fan_in)."""
    fan_in, _ = compute_fans(shape)
    return uniform(shape, rng, dtype, limit=math.sqrt(3.0 / fan_in))


def constant(shape, rng=None, dtype="float32", value=0.0):
    """Every entry equal to ``value`` (0 by default; see :class:`Constant` for other values)."""
    return np.full(shape, float(value), dtype=dtype)


def truncated_normal(shape, rng, dtype="float32", stddev=0.05):
    """Normal(0, stddev) with every draw beyond two standard deviations drawn again."""
    values = rng.standard_normal(size=shape)
    outside = np.abs(values) > 2.0
    while outside.any():      # each round keeps ~95% of what it redraws
        values[outside] = rng.standard_normal(size=int(outside.sum()))
        outside = np.abs(values) > 2.0
    return (values * stddev).astype(dtype)


def orthogonal(shape, rng, dtype="float32", gain=1.0):
    """A (semi-)orthogonal matrix times ``gain`` (Saxe et al. 2014).

    The weight is viewed as a (rows, cols) matrix with cols = shape[-1] and
    rows the product of the other axes; the Q factor of a Gaussian matrix's
    QR decomposition (with the signs of R's diagonal folded in, so the result
    is uniformly distributed) gives orthonormal rows or columns, whichever
    there are fewer of.
    """
    shape = tuple(int(s) for s in shape)
    if len(shape) < 2:
        raise ValueError(f"orthogonal initializer needs a weight of rank >= 2, got shape {shape}")
    cols = shape[-1]
    rows = math.prod(shape[:-1])
    a = rng.standard_normal(size=(max(rows, cols), min(rows, cols)))
    q, r = np.linalg.qr(a)
    q *= np.sign(np.diag(r))
    if rows < cols:
        q = q.T
    return (gain * q).reshape(shape).astype(dtype)


# ---------------------------------------------------------------- classes

_CLASSES = {}


class Initializer:
    """Base class of initializers with a configuration.

    A subclass implements ``__call__(shape, rng=None, dtype="float32")`` and,
    when its constructor takes arguments, ``get_config()`` returning them as
    a JSON-serialisable dict (``type(self)(**get_config())`` must rebuild
    it). Subclasses register themselves by class name, so a saved model that
    uses one loads wherever the class is defined.
    """

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        _CLASSES[cls.__name__] = cls

    def __call__(self, shape, rng=None, dtype="float32"):
        raise NotImplementedError(f"{type(self).__name__} must implement "
                                  f"__call__(shape, rng=None, dtype='float32')")

    def get_config(self):
        return {}

    def serialize(self):
        return {"class_name": type(self).__name__, "config": self.get_config()}

    def __eq__(self, other):
        return type(self) is type(other) and self.get_config() == other.get_config()

    def __hash__(self):
        return hash((type(self), tuple(sorted(self.get_config().items()))))

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        return f"{type(self).__name__}({args})"


def _positive(owner, what, value):
    value = float(value)
    if not np.isfinite(value) or value <= 0:
        raise ValueError(f"{owner}: {what} must be a positive finite number, got {value!r}")
    return value


def _finite(owner, what, value):
    value = float(value)
    if not np.isfinite(value):
        raise ValueError(f"{owner}: {what} must be a finite number, got {value!r}")
    return value


class Zeros(Initializer):
    """All zeros."""

    def __call__(self, shape, rng=None, dtype="float32"):
        return zeros(shape, rng, dtype)


class Ones(Initializer):
    """All ones."""

    def __call__(self, shape, rng=None, dtype="float32"):
        return ones(shape, rng, dtype)


class Constant(Initializer):
    """Initializer filling with a fixed ``value``: ``Constant(0.25)(shape, rng, dtype)``.

    Use it where a layer takes an initializer, e.g.
    ``Dense(3, bias_initializer=Constant(0.1))``.
    """

    def __init__(self, value=0.0):
        self.value = _finite("Constant initializer", "value", value)

    def __call__(self, shape, rng=None, dtype="float32"):
        return constant(shape, rng, dtype, value=self.value)

    def get_config(self):
        return {"value": self.value}


class Uniform(Initializer):
    """Uniform on [-limit, limit] (default 0.05)."""

    def __init__(self, limit=0.05):
        self.limit = _positive("Uniform initializer", "limit", limit)

    def __call__(self, shape, rng, dtype="float32"):
        return uniform(shape, rng, dtype, limit=self.limit)

    def get_config(self):
        return {"limit": self.limit}


class Normal(Initializer):
    """Normal with mean ``mean`` (default 0) and standard deviation ``stddev`` (default 0.05)."""

    def __init__(self, stddev=0.05, mean=0.0):
        self.stddev = _positive("Normal initializer", "stddev", stddev)
        self.mean = _finite("Normal initializer", "mean", mean)

    def __call__(self, shape, rng, dtype="float32"):
        return (rng.normal(self.mean, self.stddev, size=shape)).astype(dtype)

    def get_config(self):
        return {"stddev": self.stddev, "mean": self.mean}


class TruncatedNormal(Initializer):
    """Normal(mean, stddev) restricted to mean +- 2 stddev (draws outside are redrawn)."""

    def __init__(self, stddev=0.05, mean=0.0):
        self.stddev = _positive("TruncatedNormal initializer", "stddev", stddev)
        self.mean = _finite("TruncatedNormal initializer", "mean", mean)

    def __call__(self, shape, rng, dtype="float32"):
        values = truncated_normal(shape, rng, np.float64, stddev=self.stddev) + self.mean
        return values.astype(dtype)

    def get_config(self):
        return {"stddev": self.stddev, "mean": self.mean}


class Orthogonal(Initializer):
    """A (semi-)orthogonal weight times ``gain`` (default 1); see :func:`orthogonal`."""

    def __init__(self, gain=1.0):
        self.gain = _positive("Orthogonal initializer", "gain", gain)

    def __call__(self, shape, rng, dtype="float32"):
        return orthogonal(shape, rng, dtype, gain=self.gain)

    def get_config(self):
        return {"gain": self.gain}


class VarianceScaling(Initializer):
    """Variance ``scale / n`` with n the fan_in, fan_out or their mean (``mode``).

    ``distribution`` "uniform" draws from [-sqrt(3 var), sqrt(3 var)],
    "normal" from N(0, var), "truncated_normal" from N(0, var) cut at two
    standard deviations (not rescaled). Glorot uniform is
    ``VarianceScaling(1.0, "fan_avg", "uniform")``, He normal
    ``VarianceScaling(2.0, "fan_in", "normal")``.
    """

    _MODES = ("fan_in", "fan_out", "fan_avg")
    _DISTRIBUTIONS = ("uniform", "normal", "truncated_normal")

    def __init__(self, scale=1.0, mode="fan_in", distribution="truncated_normal"):
        self.scale = _positive("VarianceScaling initializer", "scale", scale)
        if mode not in self._MODES:
            raise ValueError(f"VarianceScaling initializer: mode must be one of "
                             f"{', '.join(self._MODES)}, got {mode!r}")
        if distribution not in self._DISTRIBUTIONS:
            raise ValueError(f"VarianceScaling initializer: distribution must be one of "
                             f"{', '.join(self._DISTRIBUTIONS)}, got {distribution!r}")
        self.mode = mode
        self.distribution = distribution

    def __call__(self, shape, rng, dtype="float32"):
        fan_in, fan_out = compute_fans(shape)
        n = {"fan_in": fan_in, "fan_out": fan_out, "fan_avg": (fan_in + fan_out) / 2.0}[self.mode]
        var = self.scale / max(1.0, n)
        if self.distribution == "uniform":
            return uniform(shape, rng, dtype, limit=math.sqrt(3.0 * var))
        if self.distribution == "normal":
            return normal(shape, rng, dtype, stddev=math.sqrt(var))
        return truncated_normal(shape, rng, dtype, stddev=math.sqrt(var))

    def get_config(self):
        return {"scale": self.scale, "mode": self.mode, "distribution": self.distribution}


class GlorotUniform(Initializer):
    """Glorot/Xavier uniform: limit sqrt(6 / (fan_in + fan_out)).

    The class form of :func:`glorot_uniform`.
    """

    def __call__(self, shape, rng, dtype="float32"):
        return glorot_uniform(shape, rng, dtype)


class GlorotNormal(Initializer):
    """Glorot/Xavier normal: stddev sqrt(2 / (fan_in + fan_out)).

    The class form of :func:`glorot_normal`.
    """

    def __call__(self, shape, rng, dtype="float32"):
        return glorot_normal(shape, rng, dtype)


class HeUniform(Initializer):
    """He/Kaiming uniform (for relu): limit sqrt(6 / fan_in).

    The class form of :func:`he_uniform`.
    """

    def __call__(self, shape, rng, dtype="float32"):
        return he_uniform(shape, rng, dtype)


class HeNormal(Initializer):
    """He/Kaiming normal (for relu): stddev sqrt(2 / fan_in).

    The class form of :func:`he_normal`.
    """

    def __call__(self, shape, rng, dtype="float32"):
        return he_normal(shape, rng, dtype)


class LecunUniform(Initializer):
    """LeCun uniform: limit sqrt(3 / fan_in).

    The class form of :func:`lecun_uniform`.
    """

    def __call__(self, shape, rng, dtype="float32"):
        return lecun_uniform(shape, rng, dtype)


class LecunNormal(Initializer):
    """LeCun normal: stddev sqrt(1 / fan_in).

    The class form of :func:`lecun_normal`.
    """

    def __call__(self, shape, rng, dtype="float32"):
        return lecun_normal(shape, rng, dtype)


# ---------------------------------------------------------------- lookup and serialisation

_REGISTRY = {
    f.__name__: f
    for f in (zeros, ones, constant, uniform, normal, truncated_normal, orthogonal,
              glorot_uniform, glorot_normal, he_uniform, he_normal, lecun_normal, lecun_uniform)
}

# A functools.partial of one of these functions with keyword arguments is
# saved as the class with the same parameters.
_PARTIAL_CLASSES = {uniform: Uniform, normal: Normal, constant: Constant,
                    truncated_normal: TruncatedNormal, orthogonal: Orthogonal}


def names():
    """Valid initializer names, sorted."""
    return sorted(_REGISTRY)


def register(function, name=None):
    """Make a plain initializer function ``fn(shape, rng, dtype)`` known by ``name``
    (default: its ``__name__``), so models that use it save and load. Returns it."""
    if not callable(function):
        raise TypeError(f"register expects a function, got {type(function).__name__}")
    name = name if name is not None else getattr(function, "__name__", None)
    if not isinstance(name, str) or not name.isidentifier():
        raise ValueError(f"register needs a name (an identifier) for {function!r}")
    _REGISTRY[name.lower()] = function
    return function


def get(identifier):
    """Return an initializer for a name, a serialized config, or a callable (unchanged).

    ``{"class_name": "Uniform", "config": {"limit": 0.1}}`` (what
    :func:`serialize` writes for an :class:`Initializer`) rebuilds the instance.
    """
    if isinstance(identifier, str):
        key = identifier.lower()
        if key in _REGISTRY:
            return _REGISTRY[key]
        raise ValueError(f"unknown initializer {identifier!r}; valid names: {', '.join(names())} "
                         f"(a function of your own: rp.initializers.register(fn) before "
                         f"loading)")
    if isinstance(identifier, dict):
        class_name = identifier.get("class_name")
        if class_name not in _CLASSES:
            raise ValueError(f"unknown initializer class {class_name!r}; known: "
                             f"{', '.join(sorted(_CLASSES))} (define or import your "
                             f"Initializer subclass before loading)")
        config = identifier.get("config") or {}
        try:
            return _CLASSES[class_name](**config)
        except TypeError as e:
            raise ValueError(f"initializer {class_name}: bad config {config!r} ({e})") from None
    if callable(identifier):
        return identifier
    raise TypeError(f"initializer must be a name or a callable, got {type(identifier).__name__}")


def serialize(initializer):
    """The JSON form of an initializer, the inverse of :func:`get`.

    A name stays a name (and a config a config); an :class:`Initializer` becomes ``{"class_name",
    "config"}``; a registered function becomes its name; a
    ``functools.partial`` of a parameterised built-in becomes that class
    (``partial(uniform, limit=0.1)`` -> ``Uniform(0.1)``). Anything else
    cannot be rebuilt from a file and raises ValueError saying what to use.
    """
    if isinstance(initializer, str):
        return initializer
    if isinstance(initializer, dict):      # a config read from a file: already serialised
        return get(initializer).serialize()
    if isinstance(initializer, Initializer):
        return initializer.serialize()
    for name, function in _REGISTRY.items():
        if initializer is function:
            return name
    if isinstance(initializer, functools.partial) and not initializer.args \
            and initializer.func in _PARTIAL_CLASSES:
        try:
            return _PARTIAL_CLASSES[initializer.func](**initializer.keywords).serialize()
        except TypeError:
            pass
    raise ValueError(
        f"initializer {initializer!r} cannot be saved in a model file: use a name "
        f"({', '.join(names())}), a class from rp.initializers (Uniform(limit), "
        f"Normal(stddev), TruncatedNormal(stddev), Orthogonal(gain), Constant(value), "
        f"VarianceScaling(...)), a subclass of rp.initializers.Initializer, or register "
        f"the function with rp.initializers.register(fn)")
