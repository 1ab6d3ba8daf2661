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
"""
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


class Constant:
    """Initializer filling with a fixed ``value``: ``Constant(0.25)(shape, rng, dtype)``.

    Use it where a layer takes an initializer, e.g.
    ``Dense(3, bias_initializer=Constant(0.1))``.
    """

    def __init__(self, value=0.0):
        value = float(value)
        if not np.isfinite(value):
            raise ValueError(f"Constant initializer value must be finite, got {value!r}")
        self.value = value
        self.__name__ = "constant"   # read by layers that serialise their initializers

    def __call__(self, shape, rng=None, dtype="float32"):
        return constant(shape, rng, dtype, value=self.value)

    def get_config(self):
        return {"value": self.value}

    def __repr__(self):
        return f"Constant({self.value!r})"


_REGISTRY = {
    f.__name__: f
    for f in (zeros, ones, constant, uniform, normal, glorot_uniform, glorot_normal,
              he_uniform, he_normal, lecun_normal, lecun_uniform)
}


def names():
    """Valid initializer names, sorted."""
    return sorted(_REGISTRY)


def get(identifier):
    """Return the initializer function for a name, or a callable unchanged."""
    if isinstance(identifier, str):
        key = identifier.lower()
        if key in _REGISTRY:
            return _REGISTRY[key]
        raise ValueError(f"unknown initializer {identifier!r}; valid names: {', '.join(names())}")
    if callable(identifier):
        return identifier
    raise TypeError(f"initializer must be a name or a callable, got {type(identifier).__name__}")
