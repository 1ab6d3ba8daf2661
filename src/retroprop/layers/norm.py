"""Batch normalisation (Ioffe & Szegedy 2015), with Keras' names and semantics.

For each channel c (the ``axis`` of the input; the last one by default, so
(N, F), (N, L, C) and NHWC (N, H, W, C) all normalise per feature/channel)::

    y = gamma * (x - mean) / sqrt(var + epsilon) + beta

* training (``forward(x, training=True)`` and ``trainable``): mean and var are
  the statistics of the batch, over every axis but ``axis``; var is the
  biased variance (divided by the count). The moving statistics are then
  updated as ``moving = momentum * moving + (1 - momentum) * batch``, with
  the biased batch variance, as Keras does (by the statistics kernel, in the
  same call). A batch whose variance overflows the dtype (finite float32
  inputs near 1e20) raises ValueError before anything moves. (PyTorch's BatchNorm feeds the
  *unbiased* variance into running_var and names its rate
  ``1 - momentum``; see tests/test_norm.py for the mapping.)
* inference (``training=False``), or a layer set ``trainable = False``
  (Keras' rule for fine-tuning: a frozen BatchNormalization runs in
  inference mode): mean and var are the moving statistics.

``gamma`` and ``beta`` are trainable parameters; ``moving_mean`` and
``moving_variance`` are non-trainable ``state``: saved and loaded, counted
as non-trainable by ``summary()``, never touched by an optimizer.

A batch with one value per channel (N = 1 on (N, F) input) is accepted in
training, as in Keras: its variance is 0, so the output is ``beta`` and the
input gradient 0. (PyTorch raises instead.) This keeps a trailing batch of
one sample from aborting an epoch.

The statistics (with the moving averages' update), the normalisation and
the fused backward are C kernels (``backend.batchnorm_stats /
batchnorm_apply / batchnorm_backward``); the layer does no arithmetic of its
own. The kernels also take an activation applied in the same pass
(``batchnorm_apply(..., activation="relu")``), for a planner that fuses a
BN + ReLU pair. A channel axis other than the last is supported by moving it
last (a copy).
"""
import numpy as np

from .. import initializers
from .base import BufferCache, Layer, format_shape
from .dense import _spec_name


class BatchNormalization(Layer):
    """Normalise each channel with batch statistics (training) or moving ones (inference).

    Parameters
    ----------
    axis : int, default -1
        The channel axis of the (N, ...) input; not the batch axis 0.
    momentum : float in [0, 1], default 0.99
        Weight of the old value in the moving averages.
    epsilon : float > 0, default 1e-3
        Added to the variance before the square root.
    center, scale : bool, default True
        Learn ``beta`` (offset) / ``gamma`` (scale); when False they are 0 / 1.
    gamma_initializer, beta_initializer, moving_mean_initializer,
    moving_variance_initializer : str or callable(shape, rng, dtype)
    """

    def __init__(self, axis=-1, momentum=0.99, epsilon=1e-3, center=True, scale=True,
                 gamma_initializer="ones", beta_initializer="zeros",
                 moving_mean_initializer="zeros", moving_variance_initializer="ones",
                 name=None):
        super().__init__(name=name)
        if isinstance(axis, bool) or not isinstance(axis, (int, np.integer)):
            raise TypeError(f"{self._describe()}: axis must be an int, got {axis!r}")
        momentum_value = float(momentum)
        if not 0.0 <= momentum_value <= 1.0:
            raise ValueError(f"{self._describe()}: momentum must be in [0, 1], got {momentum!r}")
        epsilon_value = float(epsilon)
        if not np.isfinite(epsilon_value) or epsilon_value <= 0.0:
            raise ValueError(f"{self._describe()}: epsilon must be a finite number > 0, "
                             f"got {epsilon!r}")
        self.axis = int(axis)
        self.momentum = momentum_value
        self.epsilon = epsilon_value
        self.center = bool(center)
        self.scale = bool(scale)
        self.gamma_initializer = gamma_initializer
        self.beta_initializer = beta_initializer
        self.moving_mean_initializer = moving_mean_initializer
        self.moving_variance_initializer = moving_variance_initializer
        self._inits = {key: initializers.get(spec) for key, spec in (
            ("gamma", gamma_initializer), ("beta", beta_initializer),
            ("moving_mean", moving_mean_initializer),
            ("moving_variance", moving_variance_initializer))}
        self._buffers = BufferCache()
        self._x = None          # channels-last input of the last forward
        self._stats = None      # (mean, var) used by the last forward
        self._batch_stats = False

    # -- building ---------------------------------------------------------------

    def compute_output_shape(self, input_shape):
        ndim = len(input_shape) + 1
        axis = self.axis + ndim if self.axis < 0 else self.axis
        if not 1 <= axis < ndim:
            raise ValueError(f"{self._describe()}: axis {self.axis} is not a channel axis of "
                             f"input {format_shape(input_shape)} (the batch axis 0 cannot be "
                             f"normalised over)")
        self._channel_axis = axis
        return tuple(input_shape)

    def build(self, input_shape, dtype, rng, backend=None):
        """Create gamma/beta (C,) and the moving statistics (C,)."""
        output_shape = super().build(input_shape, dtype, rng, backend)
        channels = self.input_shape[self._channel_axis - 1]
        self._channels_last = self._channel_axis == len(self.input_shape)
        if self.scale:
            self.add_param("gamma", self._inits["gamma"]((channels,), rng, self.dtype))
        if self.center:
            self.add_param("beta", self._inits["beta"]((channels,), rng, self.dtype))
        self.add_state("moving_mean", self._inits["moving_mean"]((channels,), rng, self.dtype))
        self.add_state("moving_variance",
                       self._inits["moving_variance"]((channels,), rng, self.dtype))
        self._buffers.clear()
        return output_shape

    # -- layout: the kernels want channels last ---------------------------------

    def _to_channels_last(self, a):
        if self._channels_last:
            return np.ascontiguousarray(a)
        return np.ascontiguousarray(np.moveaxis(a, self._channel_axis, -1))

    def _from_channels_last(self, a):
        if self._channels_last:
            return a
        return np.ascontiguousarray(np.moveaxis(a, -1, self._channel_axis))

    # -- forward / backward -----------------------------------------------------

    def forward(self, x, training=False):
        """Normalised x; in training also updates the moving statistics. Returns a reused buffer."""
        self.check_input(x)
        xc = self._to_channels_last(x)
        channels = xc.shape[-1]
        self._batch_stats = bool(training) and self.trainable
        if self._batch_stats:
            mean = self._buffers.get("batch_mean", (channels,), self.dtype)
            var = self._buffers.get("batch_var", (channels,), self.dtype)
            # the batch statistics and the moving ones' update, in one kernel call
            # (nothing moves when the variance overflows: that raises first)
            try:
                self.backend.batchnorm_stats(xc, mean=mean, var=var,
                                             moving_mean=self.state["moving_mean"],
                                             moving_var=self.state["moving_variance"],
                                             momentum=self.momentum)
            except ValueError as e:
                raise ValueError(f"{self._describe()}: {e}") from None
        else:
            mean, var = self.state["moving_mean"], self.state["moving_variance"]
        out = self._buffers.get("out", xc.shape, self.dtype)
        self.backend.batchnorm_apply(xc, mean, var, self.params.get("gamma"),
                                     self.params.get("beta"), epsilon=self.epsilon, out=out)
        self._x = xc
        self._stats = (mean, var)
        return self._from_channels_last(out)

    def backward(self, dy, need_dx=True):
        """dgamma = sum dy*xhat, dbeta = sum dy; dx through the batch statistics in training."""
        if self._x is None:
            raise RuntimeError(f"{self._describe()}: backward called before forward")
        self.check_output_grad(dy, self._x.shape[0])  # moving the channel axis keeps N first
        dyc = self._to_channels_last(dy)
        dx = self._buffers.get("dx", self._x.shape, self.dtype) if need_dx else None
        if dx is None and not self.params:
            return None
        mean, var = self._stats
        self.backend.batchnorm_backward(self._x, dyc, mean, var, self.params.get("gamma"),
                                        epsilon=self.epsilon, training=self._batch_stats,
                                        dgamma=self.grads.get("gamma"),
                                        dbeta=self.grads.get("beta"), dx=dx)
        return None if dx is None else self._from_channels_last(dx)

    def get_config(self):
        return {"axis": self.axis, "momentum": self.momentum, "epsilon": self.epsilon,
                "center": self.center, "scale": self.scale,
                "gamma_initializer": _spec_name(self.gamma_initializer),
                "beta_initializer": _spec_name(self.beta_initializer),
                "moving_mean_initializer": _spec_name(self.moving_mean_initializer),
                "moving_variance_initializer": _spec_name(self.moving_variance_initializer),
                "name": self.name}
