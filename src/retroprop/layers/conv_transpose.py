"""Transposed 2-D convolution ("deconvolution") over NHWC images, as in Keras.

A transposed convolution is the adjoint of a convolution: where Conv2D maps
an (H, W, C) image to a smaller (h, w, F) one, Conv2DTranspose with the same
kernel maps (h, w, F) back to (H, W, C). It is how the fully convolutional
networks of the course upsample. Each input pixel scatters a copy of the
kernel, scaled by its value, into the output; overlapping copies add up.

Forward is therefore exactly Conv2D's backward-data (dx = col2im(dy W^T)),
and backward is a plain Conv2D forward (for the input gradient) and Conv2D's
weight gradient with the roles of input and output swapped. All three run on
the backend's convolution kernels (``conv2d_backward_data``,
``conv2d_forward``, ``conv2d_backward``); nothing is computed here but the
output size and the bias.

Shapes: input (N, h, w, in_channels), kernel ``W`` (kh, kw, filters,
in_channels) (Keras' layout: the convolution it transposes goes from
``filters`` to ``in_channels``), bias ``b`` (filters,), output
(N, H, W, filters) with, per axis (dk = (k - 1) * dilation + 1)::

    H = (h - 1) * stride + dk - crop_before - crop_after + output_padding

* ``"valid"``: no cropping; H = (h - 1) * stride + dk, or h * stride when
  the kernel is smaller than the stride (Keras' rule: the rows no kernel
  copy reaches are kept, as output padding).
* ``"same"``: H = h * stride (Keras / TensorFlow), cropping dk - stride rows
  (the odd one at the bottom/right).
* an int p or a pair: p rows cropped on each side, as PyTorch's
  ``ConvTranspose2d(padding=p)``.

``output_padding`` (int or pair, each 0 <= op < stride) adds rows/columns at
the bottom/right, to pick among the output sizes that a strided convolution
maps to the same h; None keeps the defaults above.
"""
import numpy as np

from .. import activations, initializers, regularizers
from ..workspace import Workspace
from .base import BufferCache, Layer, format_shape
from .conv import _is_int, _spec_name, int_tuple, padding_spec


def transposed_geometry(size, kernel, stride, dilation, padding, output_padding):
    """(output size, crop_before, conv pad_after) along one axis (see the module notes).

    The convolution this layer transposes reads the output image with
    ``crop_before`` rows of zero padding on top and ``conv pad_after`` at the
    bottom, and gives back ``size`` rows."""
    dk = (kernel - 1) * dilation + 1
    if padding == "valid":
        before = after = 0
        default_op = max(stride - dk, 0)
    elif padding == "same":
        total = max(dk - stride, 0)
        before, after = total // 2, total - total // 2
        default_op = max(stride - dk, 0)
    else:
        before = after = padding
        default_op = 0
    op = default_op if output_padding is None else output_padding
    out = (size - 1) * stride + dk - before - after + op
    return out, before, max(after - op, 0)


class Conv2DTranspose(Layer):
    """Transposed 2-D convolution: y = act(conv_transpose(x, W) + b) (see the module notes).

    Parameters
    ----------
    filters : int
        Output channels.
    kernel_size, strides, dilation_rate : int or (int, int)
    padding : "valid", "same" or an int / (int, int) cropped from each side.
    output_padding : None, or an int / (int, int), each in [0, stride).
    activation, use_bias, kernel_initializer, bias_initializer,
    kernel_regularizer, bias_regularizer, name : as for Conv2D.

    ``params["W"]`` has shape (kh, kw, filters, in_channels), ``params["b"]`` (filters,).
    """

    def __init__(self, filters, kernel_size, strides=1, padding="valid", output_padding=None,
                 dilation_rate=1, activation=None, use_bias=True,
                 kernel_initializer="glorot_uniform", bias_initializer="zeros",
                 kernel_regularizer=None, bias_regularizer=None, name=None):
        super().__init__(name=name)
        owner = self._describe()
        if not _is_int(filters) or filters < 1:
            raise ValueError(f"{owner}: filters must be a positive integer, got {filters!r}")
        self.filters = int(filters)
        self.kernel_size = int_tuple(kernel_size, 2, "kernel_size", owner)
        self.strides = int_tuple(strides, 2, "strides", owner)
        self.dilation_rate = int_tuple(dilation_rate, 2, "dilation_rate", owner)
        self.padding = padding_spec(padding, 2, owner)
        if output_padding is None:
            self.output_padding = None
        else:
            self.output_padding = int_tuple(output_padding, 2, "output_padding", owner,
                                            minimum=0)
            for op, s in zip(self.output_padding, self.strides):
                if op >= s:
                    raise ValueError(f"{owner}: output_padding must be smaller than the "
                                     f"strides {self.strides}, got {output_padding!r}")
        self.activation = activations.get(activation)
        self.use_bias = bool(use_bias)
        self.kernel_initializer = kernel_initializer
        self.bias_initializer = bias_initializer
        self._kernel_init = initializers.get(kernel_initializer)
        self._bias_init = initializers.get(bias_initializer)
        self.kernel_regularizer = regularizers.get(kernel_regularizer)
        self.bias_regularizer = regularizers.get(bias_regularizer)
        self._buffers = BufferCache()
        self._x = None        # input of the last forward (a reference)
        self._y = None        # output of the last forward
        self.logits = None    # pre-activation of the last forward (None for linear)

    # -- geometry -----------------------------------------------------------------

    def compute_output_shape(self, input_shape):
        if len(input_shape) != 3 or min(input_shape) < 1:
            raise ValueError(f"{self._describe()} expects (N, H, W, C) input with positive "
                             f"sizes, got shape {format_shape(input_shape)}")
        out, crops, pads_after = [], [], []
        for axis in range(2):
            padding = self.padding if isinstance(self.padding, str) else self.padding[axis]
            op = None if self.output_padding is None else self.output_padding[axis]
            size, before, after = transposed_geometry(
                input_shape[axis], self.kernel_size[axis], self.strides[axis],
                self.dilation_rate[axis], padding, op)
            if size < 1:
                raise ValueError(f"{self._describe()}: padding {self.padding!r} crops the "
                                 f"whole output of an input of shape "
                                 f"{format_shape(input_shape)}")
            out.append(size)
            crops.append(before)
            pads_after.append(after)
        # The padding of the convolution this layer is the transpose of:
        # (top, bottom, left, right) on the output image.
        self._conv_pads = (crops[0], pads_after[0], crops[1], pads_after[1])
        return (out[0], out[1], self.filters)

    def build(self, input_shape, dtype, rng, backend=None):
        """Create W (kh, kw, filters, in_channels) and b (filters,)."""
        output_shape = super().build(input_shape, dtype, rng, backend)
        in_channels = self.input_shape[-1]
        self.add_param("W", self._kernel_init(self.kernel_size + (self.filters, in_channels),
                                              rng, self.dtype))
        if self.use_bias:
            self.add_param("b", self._bias_init((self.filters,), rng, self.dtype))
        self._buffers.clear()
        return output_shape

    def _geometry(self):
        return {"stride": self.strides, "dilation": self.dilation_rate,
                "padding": self._conv_pads}

    def workspace_size(self, batch_size, training=True):
        """The convolution's im2col buffer on the output image (and, when
        training, its dz, the size of this layer's input)."""
        return self.backend.conv2d_workspace_size((batch_size,) + self.output_shape,
                                                  self.params["W"].shape, backward=training,
                                                  **self._geometry())

    def _scratch(self, batch_size, backward):
        if self.workspace is None or self.workspace.dtype != self.dtype:
            self.workspace = Workspace(self.dtype)
        return self.workspace.take(self.workspace_size(batch_size, training=backward))

    # -- forward / backward ---------------------------------------------------------

    def forward(self, x, training=False):
        """act(conv_transpose(x, W) + b); returns a reused buffer."""
        self.check_input(x)
        x = np.ascontiguousarray(x)
        n = x.shape[0]
        shape = (n,) + self.output_shape
        linear = self.activation.name == "linear"
        z = self._buffers.get("out" if linear else "z", shape, self.dtype)
        self.backend.conv2d_backward_data(x, self.params["W"], shape, out=z,
                                          workspace=self._scratch(n, backward=False),
                                          **self._geometry())
        if self.use_bias:
            z += self.params["b"]
        if linear:
            out, self.logits = z, None
        else:
            out = self._buffers.get("out", shape, self.dtype)
            self.activation.forward(z, self.backend, out=out)
            self.logits = z
        self._x, self._y = x, out
        return out

    def backward(self, dy, need_dx=True):
        """Write dL/dW, dL/db into ``grads`` (overwriting) and return dL/dx."""
        if self._x is None:
            raise RuntimeError(f"{self._describe()}: backward called before forward")
        n = self._x.shape[0]
        self.check_output_grad(dy, n)
        dy = np.ascontiguousarray(dy)
        if self.logits is None:
            dz = dy
        else:
            dz = self._buffers.get("dz", dy.shape, self.dtype)
            self.activation.backward(self._y, dy, self.backend, x=self.logits, out=dz)
        return self.backward_from_logits(dz, need_dx)

    def backward_from_logits(self, dz, need_dx=True):
        """Backward given dL/dz for the pre-activation z (the Trainer's fused losses)."""
        if self._x is None:
            raise RuntimeError(f"{self._describe()}: backward called before forward")
        n = self._x.shape[0]
        self.check_output_grad(dz, n)
        dz = np.ascontiguousarray(dz)
        scratch = self._scratch(n, backward=True)
        w = self.params["W"]
        if self.use_bias:
            np.sum(dz, axis=(0, 1, 2), out=self.grads["b"])
        # dW: the weight gradient of the convolution from dz (its input) to x (its
        # output gradient); the activation is linear, so its "y" is never read.
        self.backend.conv2d_backward(dz, w, self._x, self._x, "linear", self.grads["W"],
                                     workspace=scratch, **self._geometry())
        dx = None
        if need_dx:
            dx = self._buffers.get("dx", self._x.shape, self.dtype)
            self.backend.conv2d_forward(dz, w, None, "linear", out=dx, workspace=scratch,
                                        **self._geometry())
        self.add_regularization_gradients()
        return dx

    # -- config -------------------------------------------------------------------

    def get_config(self):
        def reg(r):
            return None if r is None else r.serialize()
        return {
            "filters": self.filters,
            "kernel_size": list(self.kernel_size),
            "strides": list(self.strides),
            "padding": self.padding if isinstance(self.padding, str) else list(self.padding),
            "output_padding": None if self.output_padding is None else list(self.output_padding),
            "dilation_rate": list(self.dilation_rate),
            "activation": self.activation.get_config(),
            "use_bias": self.use_bias,
            "kernel_initializer": _spec_name(self.kernel_initializer),
            "bias_initializer": _spec_name(self.bias_initializer),
            "kernel_regularizer": reg(self.kernel_regularizer),
            "bias_regularizer": reg(self.bias_regularizer),
            "name": self.name,
        }
