"""Pooling layers over channels-last data.

* ``MaxPool2D`` / ``AvgPool2D`` on (N, H, W, C); ``MaxPool1D`` / ``AvgPool1D`` on
  (N, L, C), computed by the 2-D kernels as images of height 1.
* ``GlobalAvgPool2D``: (N, H, W, C) -> (N, C), the mean over all positions.

``strides`` defaults to ``pool_size`` (non-overlapping windows). Padding is
``"valid"`` (windows inside the input only) or ``"same"`` (TensorFlow rule:
OUT = ceil(IN / stride), the padding split as in Conv2D). Padded cells take no
part in a window: max pooling ignores them, and average pooling divides by
the number of real cells in each window (TensorFlow's behaviour; PyTorch's
``count_include_pad=True`` default would divide by the full window size).

Max pooling records, in forward, where each maximum was taken; backward
sends each output gradient to that one input cell. Ties go to the first
cell of the window in row-major order.
"""
import numpy as np

from .base import BufferCache, Layer, format_shape
from .conv import int_tuple, output_length, padding_spec, same_padding


class _Pool(Layer):
    """Shared code of the windowed pooling layers; geometry kept in 2-D form."""

    rank = None
    layout = None
    mode = None  # "max" or "avg"

    def __init__(self, pool_size=2, strides=None, padding="valid", name=None):
        super().__init__(name=name)
        owner = self._describe()
        self.pool_size = int_tuple(pool_size, self.rank, "pool_size", owner)
        self.strides = self.pool_size if strides is None else \
            int_tuple(strides, self.rank, "strides", owner)
        self.padding = padding_spec(padding, self.rank, owner, allow_explicit=False)
        self._buffers = BufferCache()
        self._batch = None
        self._argmax = None

    def _as_2d(self, values, fill):
        return tuple(values) if self.rank == 2 else (fill,) + tuple(values)

    def compute_output_shape(self, input_shape):
        if len(input_shape) != self.rank + 1:
            raise ValueError(f"{self._describe()} expects {self.layout}, got shape "
                             f"{format_shape(input_shape)}")
        if min(input_shape) < 1:
            raise ValueError(f"{self._describe()}: input sizes must be positive, got shape "
                             f"{format_shape(input_shape)}")
        pads, out = [], []
        for size, k, s in zip(input_shape[:-1], self.pool_size, self.strides):
            before, after = same_padding(size, k, s) if self.padding == "same" else (0, 0)
            length = output_length(size, k, s, 1, before, after)
            if length < 1:
                raise ValueError(f"{self._describe()}: pool_size {self.pool_size} is larger "
                                 f"than the input of shape {format_shape(input_shape)}")
            pads.append((before, after))
            out.append(length)
        if self.rank == 1:
            pads.insert(0, (0, 0))
        self._pads = (pads[0][0], pads[0][1], pads[1][0], pads[1][1])
        self._pool2 = self._as_2d(self.pool_size, 1)
        self._stride2 = self._as_2d(self.strides, 1)
        return tuple(out) + (input_shape[-1],)

    def build(self, input_shape, dtype, rng, backend=None):
        output_shape = super().build(input_shape, dtype, rng, backend)
        self._in_shape3 = self._as_2d(self.input_shape[:-1], 1) + (self.input_shape[-1],)
        self._out_shape3 = self._as_2d(self.output_shape[:-1], 1) + (self.output_shape[-1],)
        self._buffers.clear()
        return output_shape

    def forward(self, x, training=False):
        self.check_input(x)
        n = x.shape[0]
        x4 = np.ascontiguousarray(x).reshape((n,) + self._in_shape3)
        out4 = self._buffers.get("out", (n,) + self._out_shape3, self.dtype)
        if self.mode == "max":
            self._argmax = self._buffers.get("argmax", out4.shape, np.dtype(np.int32))
            self.backend.maxpool2d_forward(x4, self._pool2, self._stride2, self._pads,
                                           out=out4, argmax=self._argmax)
        else:
            self.backend.avgpool2d_forward(x4, self._pool2, self._stride2, self._pads, out=out4)
        self._batch = n
        return out4.reshape((n,) + self.output_shape)

    def backward(self, dy, need_dx=True):
        if self._batch is None:
            raise RuntimeError(f"{self._describe()}: backward called before forward")
        n = self._batch
        self.check_output_grad(dy, n)
        if not need_dx:
            return None
        dy4 = np.ascontiguousarray(dy).reshape((n,) + self._out_shape3)
        dx4 = self._buffers.get("dx", (n,) + self._in_shape3, self.dtype)
        if self.mode == "max":
            self.backend.maxpool2d_backward(self._argmax, dy4, self._pool2, self._stride2,
                                            self._pads, dx4)
        else:
            self.backend.avgpool2d_backward(dy4, self._pool2, self._stride2, self._pads, dx4)
        return dx4.reshape((n,) + self.input_shape)

    def get_config(self):
        return {"pool_size": list(self.pool_size), "strides": list(self.strides),
                "padding": self.padding, "name": self.name}


class MaxPool2D(_Pool):
    """Maximum over (ph, pw) windows of (N, H, W, C) input, per channel."""

    rank, layout, mode = 2, "(N, H, W, C)", "max"


class AvgPool2D(_Pool):
    """Mean over (ph, pw) windows of (N, H, W, C) input, per channel ("same" padding
    cells are excluded from each mean)."""

    rank, layout, mode = 2, "(N, H, W, C)", "avg"


class MaxPool1D(_Pool):
    """Maximum over windows of (N, L, C) input, per channel."""

    rank, layout, mode = 1, "(N, L, C)", "max"


class AvgPool1D(_Pool):
    """Mean over windows of (N, L, C) input, per channel ("same" padding cells excluded)."""

    rank, layout, mode = 1, "(N, L, C)", "avg"


class GlobalAvgPool2D(Layer):
    """(N, H, W, C) -> (N, C): the mean of each channel over all positions
    (``backend.global_avgpool_forward / global_avgpool_backward``)."""

    def __init__(self, name=None):
        super().__init__(name=name)
        self._buffers = BufferCache()
        self._batch = None

    def compute_output_shape(self, input_shape):
        if len(input_shape) != 3:
            raise ValueError(f"{self._describe()} expects (N, H, W, C), got shape "
                             f"{format_shape(input_shape)}")
        if min(input_shape) < 1:
            raise ValueError(f"{self._describe()}: input sizes must be positive, got shape "
                             f"{format_shape(input_shape)}")
        return (input_shape[-1],)

    def forward(self, x, training=False):
        self.check_input(x)
        out = self._buffers.get("out", (x.shape[0], self.input_shape[-1]), self.dtype)
        self.backend.global_avgpool_forward(x, out=out)
        self._batch = x.shape[0]
        return out

    def backward(self, dy, need_dx=True):
        if self._batch is None:
            raise RuntimeError(f"{self._describe()}: backward called before forward")
        self.check_output_grad(dy, self._batch)
        if not need_dx:
            return None
        dx = self._buffers.get("dx", (self._batch,) + self.input_shape, self.dtype)
        # Every position contributed 1/(H*W) of the mean.
        return self.backend.global_avgpool_backward(dy, dx)
