"""One scratch array shared by all the layers of a model.

Convolution needs large temporary arrays: the im2col column matrix (one row
per output pixel, kh*kw*C columns) and, in backward, dz = dy * act'(y). They
live only during one forward or backward call of one layer, so every layer
of a model can use the same memory. ``Sequential`` owns one ``Workspace``,
hands it to each layer at build time, and sizes it, before the first layer
runs, to the largest need of any layer for the batch size in use
(``Layer.workspace_size``). It only ever grows, so a training loop with a
fixed batch size (and a smaller last batch) allocates it once.

A layer used on its own (outside a model) creates a workspace of its own.
"""
import numpy as np

from . import aligned


class Workspace:
    """A growable 1-D scratch array of one dtype.

    ``take(count)`` returns a view of the first ``count`` elements (growing
    the array first if it is smaller). Callers must not keep the view after
    the call that took it: the next layer overwrites it.
    """

    def __init__(self, dtype):
        self.dtype = np.dtype(dtype)
        self._array = aligned.empty(0, self.dtype)
        self.allocations = 0   # how many times memory was (re)allocated, for tests

    @property
    def size(self):
        """Number of elements currently allocated."""
        return self._array.size

    def reserve(self, count):
        """Make room for at least ``count`` elements (never shrinks)."""
        count = int(count)
        if count > self._array.size:
            self._array = aligned.empty(count, self.dtype)
            self.allocations += 1

    def take(self, count):
        """A view of ``count`` elements of scratch memory (contents undefined)."""
        self.reserve(count)
        return self._array[:int(count)]

    def __repr__(self):
        return f"<Workspace dtype={self.dtype.name} size={self.size}>"
