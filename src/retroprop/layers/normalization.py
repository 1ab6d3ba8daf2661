"""Normalization: standardize features with statistics adapted on the training set.

"You want zero-mean data": ``y = (x - mean) / max(sqrt(variance), epsilon)``
per feature, where mean and variance are computed once, by ``adapt(x_train)``,
and then kept fixed (as Keras' ``Normalization`` layer). They are the
layer's state (``mean``, ``variance`` and ``count``, the number of samples
they came from), so they are saved and loaded with the model and counted
as non-trainable parameters by ``summary()``; no optimizer touches them.

Putting this layer first in a model means the model is given raw data at
training and at inference, and cannot be fed data standardized differently.

``axis`` names the axes that keep their own statistics, in the full input
layout (axis 0 is the batch, -1 the last): the default -1 gives one mean per
feature (per channel for NHWC images); ``(1, 2, 3)`` on images one per pixel
and channel; ``None`` a single mean and variance over everything.
"""
import numbers

import numpy as np

from .base import Layer, format_shape


def _check_axis(owner, axis):
    if axis is None:
        return None
    axes = (axis,) if isinstance(axis, numbers.Integral) and not isinstance(axis, bool) else axis
    try:
        axes = tuple(axes)
    except TypeError:
        axes = None
    if not axes or not all(isinstance(a, numbers.Integral) and not isinstance(a, bool)
                           for a in axes):
        raise ValueError(f"{owner}: axis must be None, an int or a tuple of ints, got {axis!r}")
    if 0 in axes:
        raise ValueError(f"{owner}: axis 0 is the batch axis; statistics are taken over it")
    return tuple(int(a) for a in axes)


class Normalization(Layer):
    """Standardize with a mean and variance computed by :meth:`adapt` (see the module notes).

    Parameters
    ----------
    axis : int, tuple of ints or None (default -1)
    mean, variance : optional
        Fixed statistics instead of ``adapt`` (numbers or arrays broadcastable
        to the statistics' shape); variance must be >= 0.
    epsilon : float (default 1e-7)
        Floor of the standard deviation, so constant features do not divide by 0.
    """

    def __init__(self, axis=-1, mean=None, variance=None, epsilon=1e-7, name=None):
        super().__init__(name=name)
        owner = self._describe()
        self.axis = _check_axis(owner, axis)
        if (mean is None) != (variance is None):
            raise ValueError(f"{owner}: give both mean and variance, or neither (and call adapt)")
        self._given = None
        if mean is not None:
            m = np.asarray(mean, dtype=np.float64)
            v = np.asarray(variance, dtype=np.float64)
            if not (np.all(np.isfinite(m)) and np.all(np.isfinite(v))):
                raise ValueError(f"{owner}: mean and variance must be finite")
            if np.any(v < 0):
                raise ValueError(f"{owner}: variance must be >= 0, got {variance!r}")
            self._given = (m, v)
        epsilon = float(epsilon)
        if not (np.isfinite(epsilon) and epsilon > 0):
            raise ValueError(f"{owner}: epsilon must be a positive finite number, got {epsilon!r}")
        self.epsilon = epsilon
        self._adapted = None  # statistics adapted before the layer was built
        self._n = None

    # -- shapes -------------------------------------------------------------------

    def _kept_axes(self, input_shape):
        """Per-sample axes (0-based within input_shape) that keep their own statistics."""
        rank = len(input_shape) + 1
        if self.axis is None:
            return ()
        kept = []
        for a in self.axis:
            full = a + rank if a < 0 else a
            if not 1 <= full < rank:
                raise ValueError(f"{self._describe()}: axis {a} is out of range for input of "
                                 f"shape {format_shape(input_shape)}")
            kept.append(full - 1)
        return tuple(sorted(set(kept)))

    def _stat_shape(self, input_shape):
        kept = self._kept_axes(input_shape)
        return tuple(s if i in kept else 1 for i, s in enumerate(input_shape))

    def build(self, input_shape, dtype, rng, backend=None):
        output_shape = super().build(input_shape, dtype, rng, backend)
        shape = self._stat_shape(self.input_shape)
        self.add_state("mean", np.zeros(shape))
        self.add_state("variance", np.ones(shape))
        self.add_state("count", np.zeros(1))
        if self._given is not None:
            try:
                self.state["mean"][...] = np.broadcast_to(self._given[0], shape)
                self.state["variance"][...] = np.broadcast_to(self._given[1], shape)
            except ValueError:
                raise ValueError(f"{self._describe()}: mean/variance of shape "
                                 f"{self._given[0].shape} do not fit the statistics' shape "
                                 f"{shape} for input {format_shape(self.input_shape)}") from None
        elif self._adapted is not None:
            self._store(*self._adapted)
            self._adapted = None
        return output_shape

    # -- adapt ----------------------------------------------------------------------

    def adapt(self, data, batch_size=4096):
        """Compute the mean and (population) variance of ``data`` (N, *input_shape)
        over the batch and the axes not kept, in float64 and in chunks of
        ``batch_size`` samples (Chan et al.'s pairwise update, no float
        cancellation). Replaces any earlier statistics; returns self."""
        owner = self._describe()
        data = np.asarray(data)
        if data.dtype.kind not in "biuf":
            raise TypeError(f"{owner}: adapt needs numeric data, got dtype {data.dtype}")
        if data.ndim < 2 or data.shape[0] == 0:
            raise ValueError(f"{owner}: adapt needs a non-empty batch (N, ...), got shape "
                             f"{data.shape}")
        if self.built and data.shape[1:] != self.input_shape:
            raise ValueError(f"{owner}: adapt data has per-sample shape {data.shape[1:]}, the "
                             f"layer expects {self.input_shape}")
        if isinstance(batch_size, bool) or not isinstance(batch_size, numbers.Integral) \
                or batch_size < 1:
            raise ValueError(f"{owner}: batch_size must be an integer >= 1, got {batch_size!r}")
        shape = self._stat_shape(data.shape[1:])
        kept = self._kept_axes(data.shape[1:])
        reduce = (0,) + tuple(i + 1 for i in range(len(shape)) if i not in kept)
        count, mean, m2 = 0, np.zeros(shape), np.zeros(shape)
        for start in range(0, data.shape[0], batch_size):
            chunk = data[start:start + batch_size].astype(np.float64)
            if not np.all(np.isfinite(chunk)):
                bad = np.argwhere(~np.isfinite(chunk))[0]
                bad[0] += start
                raise ValueError(f"{owner}: adapt data contains NaN or Inf at index "
                                 f"{tuple(int(i) for i in bad)}")
            n_b = chunk.size // int(np.prod(shape))
            mean_b = chunk.mean(axis=reduce, keepdims=True)
            m2_b = ((chunk - mean_b) ** 2).sum(axis=reduce, keepdims=True)[0]
            mean_b = mean_b[0]
            total = count + n_b
            delta = mean_b - mean
            mean = mean + delta * (n_b / total)
            m2 = m2 + m2_b + delta * delta * (count * n_b / total)
            count = total
        if self.built:
            self._store(mean, m2 / count, count)
        else:
            self._adapted = (mean, m2 / count, count)
        return self

    def _store(self, mean, variance, count):
        self.state["mean"][...] = mean
        self.state["variance"][...] = variance
        self.state["count"][...] = count

    @property
    def adapted(self):
        """Whether the layer has statistics (from adapt, a file, or the constructor)."""
        if self._given is not None:
            return True
        if not self.built:
            return self._adapted is not None
        return bool(self.state["count"][0] > 0)

    # -- forward / backward ---------------------------------------------------------

    def _inverse_std(self):
        # Read from the state every call: loading a model writes it in place.
        return 1.0 / np.maximum(np.sqrt(self.state["variance"]), self.dtype.type(self.epsilon))

    def forward(self, x, training=False):
        """(x - mean) / max(sqrt(variance), epsilon)."""
        self.check_input(x)
        if not self.adapted:
            raise RuntimeError(f"{self._describe()} has no statistics: call adapt(x_train) "
                               f"first, or give mean and variance")
        self._n = x.shape[0]
        return (x - self.state["mean"]) * self._inverse_std()

    def backward(self, dy, need_dx=True):
        """dy / max(sqrt(variance), epsilon): the statistics are constants."""
        if self._n is None:
            raise RuntimeError(f"{self._describe()}: backward called before forward")
        self.check_output_grad(dy, self._n)
        if not need_dx:
            return None
        return dy * self._inverse_std()

    def get_config(self):
        config = {"axis": None if self.axis is None else
                  (self.axis[0] if len(self.axis) == 1 else list(self.axis)),
                  "epsilon": self.epsilon, "name": self.name}
        if self._given is not None:
            config["mean"] = self._given[0].tolist()
            config["variance"] = self._given[1].tolist()
        return config
