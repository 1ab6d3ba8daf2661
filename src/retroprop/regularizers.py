"""Weight regularizers.

A regularizer adds ``penalty(w)`` to the training loss and ``gradient(w)`` to
the parameter's gradient. Conventions (as in Keras):

* L1(l1):  penalty = l1 * sum(|w|),   gradient = l1 * sign(w)  (0 at w == 0)
* L2(l2):  penalty = l2 * sum(w**2),  gradient = 2 * l2 * w
* L1L2(l1, l2): the sum of both.
"""
import numpy as np


def _check_factor(value, argname):
    value = float(value)
    if not np.isfinite(value) or value < 0:
        raise ValueError(f"{argname} must be a finite number >= 0, got {value!r}")
    return value


class Regularizer:
    """Base class: ``__call__(w) -> float penalty`` and ``gradient(w) -> array``."""

    def __call__(self, w):
        raise NotImplementedError

    def gradient(self, w):
        raise NotImplementedError

    def get_config(self):
        raise NotImplementedError

    def serialize(self):
        """JSON-serialisable description, the inverse of :func:`get`."""
        return {"class_name": type(self).__name__, "config": self.get_config()}

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        return f"{type(self).__name__}({args})"


class L1L2(Regularizer):
    """l1 * sum(|w|) + l2 * sum(w**2)."""

    def __init__(self, l1=0.0, l2=0.0):
        self.l1 = _check_factor(l1, "l1")
        self.l2 = _check_factor(l2, "l2")

    def __call__(self, w):
        penalty = 0.0
        if self.l1:
            penalty += self.l1 * float(np.sum(np.abs(w), dtype=np.float64))
        if self.l2:
            penalty += self.l2 * float(np.sum(np.square(w), dtype=np.float64))
        return penalty

    def gradient(self, w):
        g = np.zeros_like(w)
        if self.l1:
            g += self.l1 * np.sign(w)
        if self.l2:
            g += (2.0 * self.l2) * w
        return g

    def get_config(self):
        return {"l1": self.l1, "l2": self.l2}


class L1(L1L2):
    """l1 * sum(|w|)."""

    def __init__(self, l1=0.01):
        super().__init__(l1=l1, l2=0.0)

    def get_config(self):
        return {"l1": self.l1}


class L2(L1L2):
    """l2 * sum(w**2)."""

    def __init__(self, l2=0.01):
        super().__init__(l1=0.0, l2=l2)

    def get_config(self):
        return {"l2": self.l2}


_CLASSES = {"L1": L1, "L2": L2, "L1L2": L1L2}


def get(identifier):
    """Return a Regularizer from None, an instance, a name ("l1", "l2", "l1_l2")
    or a ``{"class_name": ..., "config": ...}`` dict."""
    if identifier is None or isinstance(identifier, Regularizer):
        return identifier
    if isinstance(identifier, str):
        key = identifier.lower().replace("_", "")
        for name, cls in _CLASSES.items():
            if name.lower() == key:
                return cls()
        raise ValueError(f"unknown regularizer {identifier!r}; valid names: l1, l2, l1_l2")
    if isinstance(identifier, dict) and identifier.get("class_name") in _CLASSES:
        return _CLASSES[identifier["class_name"]](**identifier.get("config", {}))
    raise TypeError(f"regularizer must be None, a Regularizer, a name or a config dict, "
                    f"got {identifier!r}")
