"""Flatten: (N, d1, d2, ...) -> (N, d1*d2*...), the bridge from images to Dense."""
import numpy as np

from .base import Layer


class Flatten(Layer):
    """Reshape each sample to a vector; no parameters.

    Forward returns a view of the input when it is C-contiguous (a copy
    otherwise); backward reshapes dy back to the input's shape.
    """

    def __init__(self, name=None):
        super().__init__(name=name)
        self._batch = None

    def compute_output_shape(self, input_shape):
        return (int(np.prod(input_shape, dtype=np.int64)),)

    def forward(self, x, training=False):
        self.check_input(x)
        self._batch = x.shape[0]
        return np.ascontiguousarray(x).reshape(x.shape[0], -1)

    def backward(self, dy, need_dx=True):
        if self._batch is None:
            raise RuntimeError(f"{self._describe()}: backward called before forward")
        self.check_output_grad(dy, self._batch)
        if not need_dx:
            return None
        return dy.reshape((self._batch,) + self.input_shape)
