"""Reshape: give each sample a new shape with the same number of values."""
import numpy as np

from .base import Layer, format_shape


class Reshape(Layer):
    """(N, *input_shape) -> (N, *target_shape); one entry of ``target_shape``
    may be -1, worked out from the others. No parameters.

    Forward returns a view of the input when it is C-contiguous (a copy
    otherwise); backward reshapes dy back to the input's shape (a view).
    """

    def __init__(self, target_shape, name=None):
        super().__init__(name=name)
        try:
            target = tuple(int(s) for s in target_shape)
            ok = all(not isinstance(s, bool) and int(s) == s for s in target_shape)
        except (TypeError, ValueError):
            target, ok = (), False
        if not ok or not target or any(s < 1 and s != -1 for s in target) \
                or target.count(-1) > 1:
            raise ValueError(f"{self._describe()}: target_shape must be a tuple of positive ints "
                             f"with at most one -1, got {target_shape!r}")
        self.target_shape = target
        self._batch = None

    def compute_output_shape(self, input_shape):
        size = int(np.prod(input_shape, dtype=np.int64))
        known = int(np.prod([s for s in self.target_shape if s != -1], dtype=np.int64))
        if -1 in self.target_shape:
            if size % known:
                raise ValueError(f"{self._describe()}: cannot reshape {format_shape(input_shape)} "
                                 f"({size} values per sample) to {format_shape(self.target_shape)}")
            return tuple(size // known if s == -1 else s for s in self.target_shape)
        if known != size:
            raise ValueError(f"{self._describe()}: cannot reshape {format_shape(input_shape)} "
                             f"({size} values per sample) to {format_shape(self.target_shape)} "
                             f"({known} values)")
        return self.target_shape

    def forward(self, x, training=False):
        self.check_input(x)
        self._batch = x.shape[0]
        return np.ascontiguousarray(x).reshape((x.shape[0],) + tuple(self.output_shape))

    def backward(self, dy, need_dx=True):
        if self._batch is None:
            raise RuntimeError(f"{self._describe()}: backward called before forward")
        self.check_output_grad(dy, self._batch)
        if not need_dx:
            return None
        return np.ascontiguousarray(dy).reshape((self._batch,) + tuple(self.input_shape))

    def get_config(self):
        return {"target_shape": list(self.target_shape), "name": self.name}
