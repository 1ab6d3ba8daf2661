"""Merge layers: several tensors in, one out (Keras' names and semantics).

* ``Add``, ``Multiply``, ``Maximum``: elementwise over two or more tensors of
  one shape; ``Subtract``: exactly two, ``a - b``.
* ``Concatenate(axis=-1)``: join along one axis; the other axes must agree.

Called on a list: ``rp.layers.Add()([a, b])``. Shapes are checked when the
layer is called on symbolic tensors (or built), so a mismatch is a
ValueError on the line that wrote it, naming the shapes.

Backward: the gradient of a sum reaches each input unchanged; of a product,
dy times the product of the other inputs; of a maximum, the input the
maximum came from (the first on ties); of a concatenation, each input's
slice of dy. ``need_dx`` (a bool, or one per input) skips the inputs whose
gradient nobody needs: their entry of the returned list is None.
"""
import numpy as np

from .base import BufferCache, Layer, format_shape


def _need_list(need_dx, count):
    if isinstance(need_dx, (list, tuple)):
        if len(need_dx) != count:
            raise ValueError(f"need_dx: expected {count} flags, got {len(need_dx)}")
        return [bool(n) for n in need_dx]
    return [bool(need_dx)] * count


class _Merge(Layer):
    """Shared plumbing: a list of inputs, kept for backward; reused buffers."""

    takes_list = True
    min_inputs = 2
    max_inputs = 1 << 16

    def __init__(self, name=None):
        super().__init__(name=name)
        self._buffers = BufferCache()
        self._xs = None

    def compute_output_shape(self, input_shapes):
        shapes = [tuple(s) for s in input_shapes]
        if not self.min_inputs <= len(shapes) <= self.max_inputs:
            raise ValueError(f"{self._describe()} takes {self._count_text()} inputs, "
                             f"got {len(shapes)}")
        first = shapes[0]
        for i, shape in enumerate(shapes[1:], start=1):
            if shape != first:
                raise ValueError(
                    f"{self._describe()}: inputs must have the same shape, got "
                    + ", ".join(format_shape(s) for s in shapes)
                    + f" (input {i} differs from input 0)")
        return first

    def _count_text(self):
        if self.min_inputs == self.max_inputs:
            return f"exactly {self.min_inputs}"
        return f"at least {self.min_inputs}"

    def forward(self, xs, training=False):
        self.check_input(xs)
        out = self._buffers.get("out", xs[0].shape, self.dtype)
        self._compute(list(xs), out)
        self._xs = list(xs)
        return out

    def _check_backward(self, dy):
        if self._xs is None:
            raise RuntimeError(f"{self._describe()}: backward called before forward")
        self.check_output_grad(dy, self._xs[0].shape[0])

    def _dx_buffer(self, i):
        return self._buffers.get(f"dx{i}", self._xs[i].shape, self.dtype)


class Add(_Merge):
    """y = x_1 + x_2 + ... (summed left to right); dL/dx_i = dy."""

    def _compute(self, xs, out):
        self.backend.add_n(xs, out)

    def backward(self, dy, need_dx=True):
        self._check_backward(dy)
        # Each input's gradient is dy itself: no copy is needed (a plan
        # that sums gradients at a fork writes into buffers of its own).
        return [dy if n else None for n in _need_list(need_dx, len(self._xs))]


class Subtract(_Merge):
    """y = a - b; dL/da = dy, dL/db = -dy."""

    min_inputs = max_inputs = 2

    def _compute(self, xs, out):
        self.backend.binary_forward("subtract", xs[0], xs[1], out)

    def backward(self, dy, need_dx=True):
        self._check_backward(dy)
        need_a, need_b = _need_list(need_dx, 2)
        db = None
        if need_b:
            db = self._dx_buffer(1)
            self.backend.binary_backward("subtract", self._xs[0], self._xs[1], dy, None, db)
        return [dy if need_a else None, db]


class Multiply(_Merge):
    """y = x_1 * x_2 * ...; dL/dx_i = dy times the product of the other inputs."""

    def _compute(self, xs, out):
        self.backend.binary_forward("multiply", xs[0], xs[1], out)
        for x in xs[2:]:
            self.backend.binary_forward("multiply", out, x, out)

    def backward(self, dy, need_dx=True):
        self._check_backward(dy)
        dxs = []
        for i, need in enumerate(_need_list(need_dx, len(self._xs))):
            if not need:
                dxs.append(None)
                continue
            dx = self._dx_buffer(i)
            self.backend.product_except(self._xs, i, dx)
            self.backend.binary_forward("multiply", dx, dy, dx)
            dxs.append(dx)
        return dxs


class Maximum(_Merge):
    """y = the elementwise maximum; dL/dx_i = dy where x_i gave the maximum (the
    first such input on ties), 0 elsewhere."""

    def _compute(self, xs, out):
        kind = np.int8 if len(xs) <= 127 else np.int32
        self._argmax = self._buffers.get("argmax", out.shape, np.dtype(kind))
        self.backend.maximum_forward(xs, out, self._argmax)

    def backward(self, dy, need_dx=True):
        self._check_backward(dy)
        dxs = []
        for i, need in enumerate(_need_list(need_dx, len(self._xs))):
            if not need:
                dxs.append(None)
                continue
            dxs.append(self.backend.maximum_backward(self._argmax, dy, i, self._dx_buffer(i)))
        return dxs


class Concatenate(_Merge):
    """Join the inputs along ``axis`` (of the full tensor: -1, the default, is
    the last; 0, the batch axis, is not allowed); the other axes must agree.
    dL/dx_i is x_i's slice of dy."""

    def __init__(self, axis=-1, name=None):
        super().__init__(name=name)
        if isinstance(axis, bool) or not isinstance(axis, (int, np.integer)):
            raise TypeError(f"{self._describe()}: axis must be an int, got {axis!r}")
        self.axis = int(axis)

    def _sample_axis(self, rank):
        """The axis as an index into the per-sample shape (ValueError when invalid)."""
        axis = self.axis + rank + 1 if self.axis < 0 else self.axis
        if not 1 <= axis <= rank:
            raise ValueError(f"{self._describe()}: axis {self.axis} is not an axis of inputs "
                             f"of per-sample rank {rank} (the batch axis 0 cannot be joined)")
        return axis - 1

    def compute_output_shape(self, input_shapes):
        shapes = [tuple(s) for s in input_shapes]
        if len(shapes) < 2:
            raise ValueError(f"{self._describe()} takes at least 2 inputs, got {len(shapes)}")
        ranks = {len(s) for s in shapes}
        if len(ranks) != 1:
            raise ValueError(f"{self._describe()}: inputs must have the same rank, got "
                             + ", ".join(format_shape(s) for s in shapes))
        axis = self._sample_axis(ranks.pop())
        first = shapes[0]
        for shape in shapes[1:]:
            if shape[:axis] != first[:axis] or shape[axis + 1:] != first[axis + 1:]:
                raise ValueError(
                    f"{self._describe()}: inputs must agree on every axis but the "
                    f"concatenation axis {self.axis}, got "
                    + ", ".join(format_shape(s) for s in shapes))
        return first[:axis] + (sum(s[axis] for s in shapes),) + first[axis + 1:]

    def forward(self, xs, training=False):
        self.check_input(xs)
        out = self._buffers.get("out", (xs[0].shape[0],) + tuple(self.output_shape), self.dtype)
        self.backend.concatenate(list(xs), self._sample_axis(len(self.output_shape)) + 1, out)
        self._xs = list(xs)
        return out

    def backward(self, dy, need_dx=True):
        self._check_backward(dy)
        axis = self._sample_axis(len(self.output_shape)) + 1
        need = _need_list(need_dx, len(self._xs))
        outs = [self._dx_buffer(i) if n else None for i, n in enumerate(need)]
        widths = [shape[axis - 1] for shape in self.input_shape]
        self.backend.split(dy, axis, widths, outs)
        return outs

    def get_config(self):
        return {"axis": self.axis, "name": self.name}
