"""Activation layers with hyper-parameters, learned parameters or randomness.

* :class:`LeakyReLU` and :class:`ELU`: fixed ``alpha``; the same functions as
  ``activations.get("leaky_relu")`` / ``"elu"``, offered as layers.
* :class:`PReLU`: leaky ReLU whose negative slope is learned, one per channel
  (the last axis), initialised to 0.25.
* :class:`RReLU`: randomized leaky ReLU; in training each element draws its
  own slope uniformly in [lower, upper], at inference the mean slope
  (lower + upper) / 2 is used so the output is deterministic.

LeakyReLU and ELU run in the backend's elementwise kernels (C by default),
their derivative taken from the output; PReLU and RReLU compute in NumPy on
the layer's dtype (their slopes vary per channel / per element).
"""
import numpy as np

from .. import activations, initializers, regularizers
from .base import BufferCache, Layer


class _ElementwiseLayer(Layer):
    """Shared plumbing: keep the input, check shapes, return reused-shape arrays."""

    def __init__(self, name=None):
        super().__init__(name=name)
        self._x = None

    def _check_backward(self, dy):
        if self._x is None:
            raise RuntimeError(f"{self._describe()}: backward called before forward")
        self.check_output_grad(dy, self._x.shape[0])


class _KernelElementwiseLayer(_ElementwiseLayer):
    """A fixed-parameter activation run by the backend's kernels.

    Forward keeps the output y (backward reads the derivative from it);
    results go into reused buffers.
    """

    _activation = None   # backend activation name

    def __init__(self, alpha, name=None):
        super().__init__(name=name)
        alpha = float(alpha)
        if not np.isfinite(alpha) or alpha < 0:
            raise ValueError(f"{type(self).__name__}: alpha must be a finite number >= 0, "
                             f"got {alpha}")
        self.alpha = alpha
        self._buffers = BufferCache()
        self._y = None

    def build(self, input_shape, dtype, rng, backend=None):
        """Refuses an alpha that does not fit ``dtype`` (1e300 in float32 is inf)."""
        activations.check_param_dtype(self._activation, self.alpha, dtype, self._describe())
        return super().build(input_shape, dtype, rng, backend)

    def forward(self, x, training=False):
        self.check_input(x)
        out = self._buffers.get("out", x.shape, self.dtype)
        self.backend.activation_forward(self._activation, x, out=out, param=self.alpha)
        self._x = x
        self._y = out
        return out

    def backward(self, dy, need_dx=True):
        self._check_backward(dy)
        if not need_dx:
            return None
        dx = self._buffers.get("dx", self._x.shape, self.dtype)
        return self.backend.activation_backward(self._activation, self._y, dy, out=dx,
                                                param=self.alpha)

    def get_config(self):
        return {"alpha": self.alpha, "name": self.name}


class LeakyReLU(_KernelElementwiseLayer):
    """y = x for x > 0, alpha * x otherwise; alpha >= 0 (default 0.01).

    dL/dx = dy where y > 0, alpha * dy elsewhere (so alpha at exactly 0).
    """

    _activation = "leaky_relu"

    def __init__(self, alpha=0.01, name=None):
        super().__init__(alpha, name=name)


class ELU(_KernelElementwiseLayer):
    """y = x for x > 0, alpha * (exp(x) - 1) otherwise (default alpha = 1).

    dL/dx = dy for y > 0, (y + alpha) * dy = alpha * exp(x) * dy elsewhere.
    """

    _activation = "elu"

    def __init__(self, alpha=1.0, name=None):
        super().__init__(alpha, name=name)


class PReLU(_ElementwiseLayer):
    """Parametric ReLU: y = x for x > 0, alpha_c * x otherwise.

    ``alpha`` has one entry per channel (the last axis, so NHWC images and
    (N, features) tables both get one slope per channel/feature) and is learned
    like any weight. ``alpha_initializer`` defaults to the constant 0.25 (He et
    al. 2015); a float is taken as that constant.

    ``alpha_regularizer`` (Keras' name) penalises the slopes, counted in the
    loss and the gradient like a Dense kernel's; ``kernel_regularizer`` is
    accepted as the same argument, so every weighted layer takes that name.
    PReLU has no bias.
    """

    def __init__(self, alpha_initializer=0.25, alpha_regularizer=None, kernel_regularizer=None,
                 name=None):
        super().__init__(name=name)
        if alpha_regularizer is not None and kernel_regularizer is not None:
            raise ValueError("PReLU: give alpha_regularizer or kernel_regularizer (the same "
                             "argument), not both")
        self.alpha_initializer = alpha_initializer
        self.alpha_regularizer = regularizers.get(
            alpha_regularizer if alpha_regularizer is not None else kernel_regularizer)

    def build(self, input_shape, dtype, rng, backend=None):
        """Create ``alpha`` of shape (channels,)."""
        out = super().build(input_shape, dtype, rng, backend)
        if len(self.input_shape) < 1:
            raise ValueError(f"{self._describe()} needs inputs with a channel axis")
        shape = (self.input_shape[-1],)
        init = self.alpha_initializer
        if isinstance(init, (int, float)):
            value = np.full(shape, float(init))
        else:
            value = initializers.get(init)(shape, rng, dtype=self.dtype)
        self.add_param("alpha", value)
        return out

    def forward(self, x, training=False):
        """alpha broadcasts along the last axis."""
        self.check_input(x)
        self._x = x
        return np.where(x > 0, x, self.params["alpha"] * x).astype(self.dtype, copy=False)

    def backward(self, dy, need_dx=True):
        """dL/dalpha_c sums x * dy over every non-positive entry of channel c."""
        self._check_backward(dy)
        x = self._x
        negative = x <= 0
        per_entry = np.where(negative, x * dy, 0.0)
        self.grads["alpha"][...] = per_entry.reshape(-1, x.shape[-1]).sum(axis=0)
        self.add_regularization_gradients()
        if not need_dx:
            return None
        return np.where(negative, self.params["alpha"] * dy, dy).astype(self.dtype, copy=False)

    def get_config(self):
        init = self.alpha_initializer
        if not isinstance(init, (int, float, str)):
            init = getattr(init, "__name__", str(init))
        reg = self.alpha_regularizer
        return {"alpha_initializer": init,
                "alpha_regularizer": None if reg is None else reg.serialize(),
                "name": self.name}

    def regularized_params(self):
        reg = self.alpha_regularizer
        return [] if reg is None else [("alpha", reg)]


class RReLU(_ElementwiseLayer):
    """Randomized leaky ReLU (Xu et al. 2015).

    Training: every element of every batch draws a slope a ~ U(lower, upper)
    and y = x for x > 0, a * x otherwise. Inference: a = (lower + upper) / 2,
    the expected slope, so predictions are deterministic. ``seed`` seeds the
    layer's own generator; None draws a fresh seed.
    """

    def __init__(self, lower=1.0 / 8.0, upper=1.0 / 3.0, seed=None, name=None):
        super().__init__(name=name)
        lower, upper = float(lower), float(upper)
        if not (0 <= lower <= upper) or not np.isfinite(upper):
            raise ValueError(f"RReLU: need 0 <= lower <= upper, got lower={lower}, upper={upper}")
        self.lower, self.upper, self.seed = lower, upper, seed
        self._rng = np.random.default_rng(seed)
        self._slope = None

    def forward(self, x, training=False):
        """Random slopes in training, the mean slope at inference."""
        self.check_input(x)
        self._x = x
        if training:
            self._slope = self._rng.uniform(self.lower, self.upper, size=x.shape)
        else:
            self._slope = (self.lower + self.upper) / 2.0
        return np.where(x > 0, x, self._slope * x).astype(self.dtype, copy=False)

    def backward(self, dy, need_dx=True):
        """The slopes drawn in the last forward are reused (kept until then)."""
        self._check_backward(dy)
        if not need_dx:
            return None
        return np.where(self._x > 0, dy, self._slope * dy).astype(self.dtype, copy=False)

    def get_config(self):
        return {"lower": self.lower, "upper": self.upper, "seed": self.seed, "name": self.name}
