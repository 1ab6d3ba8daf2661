"""Dropout (Srivastava et al. 2014), inverted scaling."""
import numpy as np

from .base import Layer


class Dropout(Layer):
    """Zero each input entry with probability ``rate`` during training.

    Inverted dropout: kept entries are multiplied by 1 / (1 - rate) in
    training, so the expected activation is unchanged and inference is the
    identity (no rescaling at test time). ``seed`` seeds the layer's own
    generator (None: a fresh seed), so masks are reproducible.

    backward multiplies dy by the same scaled mask as the last training
    forward; after an inference forward it is the identity.
    """

    def __init__(self, rate, seed=None, name=None):
        super().__init__(name=name)
        rate = float(rate)
        if not 0.0 <= rate < 1.0:
            raise ValueError(f"Dropout: rate must be in [0, 1), got {rate!r}")
        self.rate = rate
        self.seed = seed
        self._rng = np.random.default_rng(seed)
        self._mask = None   # scaled mask of the last training forward; None = identity
        self._n = None

    def forward(self, x, training=False):
        """x * mask / (1 - rate) in training; x itself at inference."""
        self.check_input(x)
        self._n = x.shape[0]
        if not training or self.rate == 0.0:
            self._mask = None
            return x
        keep = self._rng.random(x.shape) >= self.rate
        # The mask holds 0 or 1/(1-rate), so forward and backward are one multiply.
        self._mask = keep.astype(self.dtype) * self.dtype.type(1.0 / (1.0 - self.rate))
        return x * self._mask

    def backward(self, dy, need_dx=True):
        """dy through the same mask (identity after an inference forward)."""
        if self._n is None:
            raise RuntimeError(f"{self._describe()}: backward called before forward")
        self.check_output_grad(dy, self._n)
        if not need_dx:
            return None
        return dy if self._mask is None else dy * self._mask

    def get_config(self):
        return {"rate": self.rate, "seed": self.seed, "name": self.name}
