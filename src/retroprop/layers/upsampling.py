"""UpSampling2D: enlarge NHWC images by whole factors, nearest or bilinear.

With the transposed convolution, this is how the fully convolutional
networks of the course grow their feature maps back to the image size. It
has no parameters, and both modes are linear maps of the input, so
backward applies the transposed map to dy:

* ``"nearest"``: each pixel becomes a size_h x size_w block of copies;
  backward adds up each block of dy.
* ``"bilinear"``: half-pixel centres (Keras' and PyTorch's
  ``align_corners=False``): output row i samples input row
  (i + 0.5) / size - 0.5, clamped to the image, between its two
  neighbours. Per axis this is a sparse (out x in) matrix A, so the output
  is A_h x A_w^T per channel and backward is A_h^T dy A_w.
"""
import numpy as np

from .base import Layer, format_shape
from .conv import int_tuple

INTERPOLATIONS = ("nearest", "bilinear")


def bilinear_matrix(size, factor, dtype):
    """The (size * factor, size) matrix of 1-D linear interpolation, half-pixel centres."""
    out = size * factor
    src = (np.arange(out) + 0.5) / factor - 0.5
    src = np.clip(src, 0.0, size - 1)
    lower = np.floor(src).astype(np.int64)
    upper = np.minimum(lower + 1, size - 1)
    frac = src - lower
    matrix = np.zeros((out, size), dtype=np.float64)
    rows = np.arange(out)
    np.add.at(matrix, (rows, lower), 1.0 - frac)
    np.add.at(matrix, (rows, upper), frac)
    return matrix.astype(dtype)


class UpSampling2D(Layer):
    """Repeat (``"nearest"``) or interpolate (``"bilinear"``) NHWC images by ``size``.

    ``size``: an int or (size_h, size_w), each >= 1. Output shape
    (H * size_h, W * size_w, C).
    """

    def __init__(self, size=(2, 2), interpolation="nearest", name=None):
        super().__init__(name=name)
        self.size = int_tuple(size, 2, "size", self._describe())
        if interpolation not in INTERPOLATIONS:
            raise ValueError(f"{self._describe()}: interpolation must be one of "
                             f"{', '.join(INTERPOLATIONS)}, got {interpolation!r}")
        self.interpolation = interpolation
        self._n = None
        self._matrices = None   # (A_h, A_w) for bilinear, built with the layer

    def compute_output_shape(self, input_shape):
        if len(input_shape) != 3:
            raise ValueError(f"{self._describe()} expects (N, H, W, C) images, got shape "
                             f"{format_shape(input_shape)}")
        h, w, c = input_shape
        return (h * self.size[0], w * self.size[1], c)

    def build(self, input_shape, dtype, rng, backend=None):
        output_shape = super().build(input_shape, dtype, rng, backend)
        if self.interpolation == "bilinear":
            h, w, _ = self.input_shape
            self._matrices = (bilinear_matrix(h, self.size[0], self.dtype),
                              bilinear_matrix(w, self.size[1], self.dtype))
        return output_shape

    def forward(self, x, training=False):
        self.check_input(x)
        self._n = n = x.shape[0]
        h, w, c = self.input_shape
        sh, sw = self.size
        if self.interpolation == "nearest":
            blocks = np.broadcast_to(x[:, :, None, :, None, :], (n, h, sh, w, sw, c))
            return np.ascontiguousarray(blocks).reshape((n,) + self.output_shape)
        a_h, a_w = self._matrices
        rows = np.matmul(a_h, x.reshape(n, h, w * c)).reshape(n, h * sh, w, c)
        # (n, H, w, c) -> columns: contract w with A_w (W x w).
        return np.ascontiguousarray(np.einsum("Jw,nHwc->nHJc", a_w, rows, optimize=True))

    def backward(self, dy, need_dx=True):
        if self._n is None:
            raise RuntimeError(f"{self._describe()}: backward called before forward")
        self.check_output_grad(dy, self._n)
        if not need_dx:
            return None
        n = self._n
        h, w, c = self.input_shape
        sh, sw = self.size
        if self.interpolation == "nearest":
            return np.ascontiguousarray(dy.reshape(n, h, sh, w, sw, c).sum(axis=(2, 4)))
        a_h, a_w = self._matrices
        cols = np.einsum("Jw,nHJc->nHwc", a_w, dy, optimize=True)     # A_w^T per row
        dx = np.matmul(a_h.T, cols.reshape(n, h * sh, w * c))
        return np.ascontiguousarray(dx.reshape((n,) + self.input_shape))

    def get_config(self):
        return {"size": list(self.size), "interpolation": self.interpolation, "name": self.name}
