"""Convolution layers over channels-last data (as in Keras).

* ``Conv2D``: input (N, H, W, C), kernel ``W`` (kh, kw, C, filters), output (N, OH, OW, filters).
* ``Conv1D``: input (N, L, C), kernel ``W`` (k, C, filters), output (N, OL, filters);
  computed by the same 2-D kernels as an image of height 1 (reshapes are views).

The backend computes ``act(conv(x, W) + b)`` with the bias and activation
fused into the kernel's write-back, by the algorithm its selector picks for
the layer's geometry (docs/BACKEND.md, "Convolution algorithms"): im2col +
one GEMM, direct kernels for few filters, an implicit GEMM, or Winograd
F(4x4, 3x3) for float32 3x3 stride-1 layers. Backward recomputes what it
needs (the column matrix, into the one workspace the model shares among all
its layers, retroprop/workspace.py; or the transformed tiles), so a layer
keeps only references to its input and its output between forward and
backward.

Padding: ``"valid"`` (none), ``"same"`` (TensorFlow rule: OUT = ceil(IN / stride),
pad_total = max((OUT - 1) * stride + dilated_kernel - IN, 0), pad_total // 2
before and the rest after, i.e. the odd one on the bottom/right), or an int /
per-axis tuple of symmetric zero padding.
"""
import numpy as np

from .. import activations, initializers, regularizers
from ..workspace import Workspace
from .base import BufferCache, Layer, format_shape


def _spec_name(spec):
    """Config value for an initializer: a name, or an Initializer's class and config."""
    return initializers.serialize(spec)


def _is_int(value):
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def int_tuple(value, rank, what, owner, minimum=1):
    """``value`` (an int, or a sequence of ``rank`` ints) as a tuple of ``rank`` ints >= minimum."""
    items = (value,) * rank if _is_int(value) else value
    try:
        items = tuple(items)
    except TypeError:
        items = None
    if items is None or len(items) != rank or not all(_is_int(v) for v in items):
        raise ValueError(f"{owner}: {what} must be an int or a tuple of {rank} ints, got {value!r}")
    if min(items) < minimum:
        raise ValueError(f"{owner}: {what} must be >= {minimum}, got {value!r}")
    return tuple(int(v) for v in items)


def padding_spec(padding, rank, owner, allow_explicit=True):
    """"valid" / "same" (any case), or explicit symmetric padding as a tuple of rank ints."""
    if isinstance(padding, str):
        mode = padding.lower()
        if mode in ("valid", "same"):
            return mode
    elif allow_explicit and padding is not None and not isinstance(padding, bool):
        return int_tuple(padding, rank, "padding", owner, minimum=0)
    allowed = '"valid", "same"' + (" or an int / tuple of ints" if allow_explicit else "")
    raise ValueError(f"{owner}: padding must be {allowed}, got {padding!r}")


def same_padding(size, kernel, stride, dilation=1):
    """(before, after) zero padding of TensorFlow's "same": OUT = ceil(size / stride)."""
    effective = (kernel - 1) * dilation + 1
    out = -(-size // stride)
    total = max((out - 1) * stride + effective - size, 0)
    return total // 2, total - total // 2


def output_length(size, kernel, stride, dilation, before, after):
    """Number of window positions along one axis (< 1 when the window does not fit)."""
    return (size + before + after - ((kernel - 1) * dilation + 1)) // stride + 1


class _Conv(Layer):
    """Shared code of Conv1D and Conv2D; geometry is kept in 2-D form internally."""

    rank = None            # number of spatial axes
    layout = None          # how the input is shown in messages

    def __init__(self, filters, kernel_size, strides=1, padding="valid", dilation_rate=1,
                 activation=None, use_bias=True, kernel_initializer="glorot_uniform",
                 bias_initializer="zeros", kernel_regularizer=None, bias_regularizer=None,
                 name=None):
        super().__init__(name=name)
        owner = self._describe()
        if not _is_int(filters) or filters < 1:
            raise ValueError(f"{owner}: filters must be a positive integer, got {filters!r}")
        self.filters = int(filters)
        self.kernel_size = int_tuple(kernel_size, self.rank, "kernel_size", owner)
        self.strides = int_tuple(strides, self.rank, "strides", owner)
        self.dilation_rate = int_tuple(dilation_rate, self.rank, "dilation_rate", owner)
        self.padding = padding_spec(padding, self.rank, owner)
        self.activation = activations.get(activation)
        self.use_bias = bool(use_bias)
        self.kernel_initializer = kernel_initializer
        self.bias_initializer = bias_initializer
        self._kernel_init = initializers.get(kernel_initializer)
        self._bias_init = initializers.get(bias_initializer)
        self.kernel_regularizer = regularizers.get(kernel_regularizer)
        self.bias_regularizer = regularizers.get(bias_regularizer)
        self._buffers = BufferCache()
        self._x4 = None       # input of the last forward, as (N, H, W, C) (a view, not a copy)
        self._y4 = None       # output of the last forward, as (N, OH, OW, F)
        self._logits4 = None  # pre-activation of the last forward (non-fused activations)
        self.logits = None    # the same in the layer's own output shape (Trainer's fused loss)

    # -- geometry ---------------------------------------------------------------

    def _as_2d(self, values, fill):
        """A per-axis tuple in 2-D (height, width) form: 1-D data has height 1."""
        return tuple(values) if self.rank == 2 else (fill,) + tuple(values)

    def compute_output_shape(self, input_shape):
        if len(input_shape) != self.rank + 1:
            raise ValueError(f"{self._describe()} expects {self.layout}, got shape "
                             f"{format_shape(input_shape)}")
        if min(input_shape) < 1:
            raise ValueError(f"{self._describe()}: input sizes must be positive, got shape "
                             f"{format_shape(input_shape)}")
        spatial = input_shape[:-1]
        pads = []
        out = []
        for size, k, s, d, i in zip(spatial, self.kernel_size, self.strides,
                                    self.dilation_rate, range(self.rank)):
            if self.padding == "same":
                before, after = same_padding(size, k, s, d)
            elif self.padding == "valid":
                before = after = 0
            else:
                before = after = self.padding[i]
            length = output_length(size, k, s, d, before, after)
            if length < 1:
                raise ValueError(
                    f"{self._describe()}: kernel_size {self.kernel_size} with dilation_rate "
                    f"{self.dilation_rate} is larger than the padded input of shape "
                    f"{format_shape(input_shape)} (padding {self.padding!r})")
            pads.append((before, after))
            out.append(length)
        if self.rank == 1:
            pads.insert(0, (0, 0))
        self._pads = (pads[0][0], pads[0][1], pads[1][0], pads[1][1])  # top, bottom, left, right
        return tuple(out) + (self.filters,)

    def build(self, input_shape, dtype, rng, backend=None):
        """Create W (*kernel_size, in_channels, filters) and b (filters,)."""
        output_shape = super().build(input_shape, dtype, rng, backend)
        in_channels = self.input_shape[-1]
        self.add_param("W", self._kernel_init(self.kernel_size + (in_channels, self.filters),
                                              rng, self.dtype))
        if self.use_bias:
            self.add_param("b", self._bias_init((self.filters,), rng, self.dtype))
        self._stride2 = self._as_2d(self.strides, 1)
        self._dilation2 = self._as_2d(self.dilation_rate, 1)
        self._kernel_shape4 = self._as_2d(self.kernel_size, 1) + (in_channels, self.filters)
        self._in_shape3 = self._as_2d(self.input_shape[:-1], 1) + (in_channels,)
        self._out_shape3 = self._as_2d(self.output_shape[:-1], 1) + (self.filters,)
        self._buffers.clear()
        return output_shape

    # -- forward / backward ---------------------------------------------------

    @property
    def _bias(self):
        return self.params["b"] if self.use_bias else None

    def _geometry(self):
        return {"stride": self._stride2, "dilation": self._dilation2, "padding": self._pads}

    def workspace_size(self, batch_size, training=True):
        """im2col buffer (and dz when training) for a batch, from the backend."""
        return self.backend.conv2d_workspace_size((batch_size,) + self._in_shape3,
                                                  self._kernel_shape4, backward=training,
                                                  **self._geometry())

    def _scratch(self, batch_size, backward):
        """Scratch memory from the model's shared workspace (a private one when
        the layer is used on its own). In a model it is already large enough."""
        if self.workspace is None or self.workspace.dtype != self.dtype:
            self.workspace = Workspace(self.dtype)
        return self.workspace.take(self.workspace_size(batch_size, training=backward))

    def forward(self, x, training=False):
        """act(conv(x, W) + b); returns a reused buffer."""
        self.check_input(x)
        n = x.shape[0]
        x4 = np.ascontiguousarray(x).reshape((n,) + self._in_shape3)
        out4 = self._buffers.get("out", (n,) + self._out_shape3, self.dtype)
        kernel = self.params["W"].reshape(self._kernel_shape4)
        scratch = self._scratch(n, backward=False)
        if self.activation.fused:
            self.backend.conv2d_forward(x4, kernel, self._bias, self.activation.name,
                                        out=out4, workspace=scratch, **self._geometry())
            self._logits4 = out4 if self.activation.name == "linear" else None
        else:
            logits4 = self._buffers.get("logits", out4.shape, self.dtype)
            self.backend.conv2d_forward(x4, kernel, self._bias, "linear", out=logits4,
                                        workspace=scratch, **self._geometry())
            self.activation.forward(logits4, self.backend, out=out4)
            self._logits4 = logits4
        self.logits = None if self._logits4 is None else \
            self._logits4.reshape((n,) + self.output_shape)
        self._x4 = x4
        self._y4 = out4
        return out4.reshape((n,) + self.output_shape)

    def backward(self, dy, need_dx=True):
        """Write dL/dW, dL/db into ``grads`` (overwriting) and return dL/dx."""
        dy4 = self._output_grad4(dy)
        if self.activation.fused:
            return self._conv_backward(self._y4, dy4, self.activation.name, need_dx)
        dz4 = self._buffers.get("dz", dy4.shape, self.dtype)
        self.activation.backward(self._y4, dy4, self.backend, x=self._logits4, out=dz4)
        return self._conv_backward(self._logits4, dz4, "linear", need_dx)

    def backward_from_logits(self, dz, need_dx=True):
        """Backward given dL/dz for the pre-activation z = conv(x, W) + b (see Dense)."""
        dz4 = self._output_grad4(dz)
        logits4 = self._logits4 if self._logits4 is not None else self._y4
        return self._conv_backward(logits4, dz4, "linear", need_dx)

    def _output_grad4(self, dy):
        if self._x4 is None:
            raise RuntimeError(f"{self._describe()}: backward called before forward")
        n = self._x4.shape[0]
        self.check_output_grad(dy, n)
        return np.ascontiguousarray(dy).reshape((n,) + self._out_shape3)

    def _conv_backward(self, y4, dz4, activation, need_dx):
        n = self._x4.shape[0]
        dx4 = self._buffers.get("dx", self._x4.shape, self.dtype) if need_dx else None
        db = self.grads["b"] if self.use_bias else None
        self.backend.conv2d_backward(self._x4, self.params["W"].reshape(self._kernel_shape4),
                                     y4, dz4, activation,
                                     self.grads["W"].reshape(self._kernel_shape4),
                                     db=db, dx=dx4, workspace=self._scratch(n, backward=True),
                                     **self._geometry())
        self.add_regularization_gradients()
        return None if dx4 is None else dx4.reshape((n,) + self.input_shape)

    # -- config -----------------------------------------------------------------

    def get_config(self):
        def reg(r):
            return None if r is None else r.serialize()
        return {
            "filters": self.filters,
            "kernel_size": list(self.kernel_size),
            "strides": list(self.strides),
            "padding": self.padding if isinstance(self.padding, str) else list(self.padding),
            "dilation_rate": list(self.dilation_rate),
            "activation": self.activation.get_config(),
            "use_bias": self.use_bias,
            "kernel_initializer": _spec_name(self.kernel_initializer),
            "bias_initializer": _spec_name(self.bias_initializer),
            "kernel_regularizer": reg(self.kernel_regularizer),
            "bias_regularizer": reg(self.bias_regularizer),
            "name": self.name,
        }


class Conv2D(_Conv):
    """2-D convolution over NHWC images: y = act(conv(x, W) + b).

    Parameters
    ----------
    filters : int
        Number of output channels.
    kernel_size, strides, dilation_rate : int or (int, int)
    padding : "valid", "same" (TensorFlow rule, see the module docstring), or an
        int / (int, int) of symmetric zero padding per axis.
    activation : str, Activation or None
        linear/relu/sigmoid/tanh run fused in the backend's GEMM write-back;
        other activations (softmax, over the filters axis) are applied after.
    use_bias, kernel_initializer, bias_initializer, kernel_regularizer,
    bias_regularizer, name : as for Dense.

    ``params["W"]`` has shape (kh, kw, in_channels, filters), ``params["b"]`` (filters,).
    """

    rank = 2
    layout = "(N, H, W, C)"


class Conv1D(_Conv):
    """1-D convolution over (N, L, C) sequences: the Conv2D kernels with height 1.

    Same arguments as Conv2D with ints (or 1-tuples) for kernel_size, strides,
    dilation_rate and explicit padding. ``params["W"]`` has shape (k, in_channels, filters).
    """

    rank = 1
    layout = "(N, L, C)"
