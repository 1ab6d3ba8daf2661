"""Learning-rate schedules: callables ``t -> lr``.

A schedule can be given wherever a learning rate is, e.g.
``rp.optim.Adam(lr=rp.schedules.ExponentialDecay(1e-2, 1e-3))``. The
optimizer calls it before every step with ``t`` = the number of optimizer
steps already taken (0 for the first step), i.e. ``t`` counts **batches**,
not epochs. For a per-epoch schedule use
``callbacks.LearningRateScheduler`` instead.

Each schedule has ``get_config()`` (its constructor arguments) and
``serialize()``; :func:`deserialize` rebuilds it, so optimizers with a
schedule can be saved and restored.
"""
import math


def _positive(value, name, allow_zero=False):
    value = float(value)
    if not math.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{name} must be a finite number {bound}, got {value!r}")
    return value


def _step_index(t):
    t = float(t)
    if not t >= 0:
        raise ValueError(f"schedule step t must be >= 0, got {t!r}")
    return t


class Schedule:
    """Base class: ``__call__(t) -> lr`` plus (de)serialisation helpers."""

    def __call__(self, t):
        raise NotImplementedError

    def get_config(self):
        """Constructor arguments as a JSON-serialisable dict."""
        raise NotImplementedError

    def serialize(self):
        """``{"class_name": ..., "config": ...}``, the inverse of :func:`deserialize`."""
        return {"class_name": type(self).__name__, "config": self.get_config()}

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        return f"{type(self).__name__}({args})"


class InverseTimeDecay(Schedule):
    """lr(t) = lr0 / (1 + rate * t)."""

    def __init__(self, lr0, rate):
        self.lr0 = _positive(lr0, "lr0")
        self.rate = _positive(rate, "rate", allow_zero=True)

    def __call__(self, t):
        return self.lr0 / (1.0 + self.rate * _step_index(t))

    def get_config(self):
        return {"lr0": self.lr0, "rate": self.rate}


class ExponentialDecay(Schedule):
    """lr(t) = lr0 * exp(-rate * t)."""

    def __init__(self, lr0, rate):
        self.lr0 = _positive(lr0, "lr0")
        self.rate = _positive(rate, "rate", allow_zero=True)

    def __call__(self, t):
        return self.lr0 * math.exp(-self.rate * _step_index(t))

    def get_config(self):
        return {"lr0": self.lr0, "rate": self.rate}


class StepDecay(Schedule):
    """lr(t) = lr0 * factor ** floor(t / step): multiply by ``factor`` every ``step`` steps."""

    def __init__(self, lr0, factor, step):
        self.lr0 = _positive(lr0, "lr0")
        self.factor = _positive(factor, "factor")
        if int(step) != step or step < 1:
            raise ValueError(f"step must be an integer >= 1, got {step!r}")
        self.step = int(step)

    def __call__(self, t):
        return self.lr0 * self.factor ** math.floor(_step_index(t) / self.step)

    def get_config(self):
        return {"lr0": self.lr0, "factor": self.factor, "step": self.step}


class CosineDecay(Schedule):
    """Half a cosine from lr0 down to alpha * lr0 over ``decay_steps``, then flat::

        s = min(t, decay_steps) / decay_steps
        lr(t) = lr0 * ((1 - alpha) * 0.5 * (1 + cos(pi * s)) + alpha)
    """

    def __init__(self, lr0, decay_steps, alpha=0.0):
        self.lr0 = _positive(lr0, "lr0")
        if int(decay_steps) != decay_steps or decay_steps < 1:
            raise ValueError(f"decay_steps must be an integer >= 1, got {decay_steps!r}")
        self.decay_steps = int(decay_steps)
        self.alpha = float(alpha)
        if not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"alpha must be in [0, 1], got {alpha!r}")

    def __call__(self, t):
        s = min(_step_index(t), self.decay_steps) / self.decay_steps
        cosine = 0.5 * (1.0 + math.cos(math.pi * s))
        return self.lr0 * ((1.0 - self.alpha) * cosine + self.alpha)

    def get_config(self):
        return {"lr0": self.lr0, "decay_steps": self.decay_steps, "alpha": self.alpha}


class PolynomialDecay(Schedule):
    """From lr0 down to end_lr along a polynomial of degree ``power`` over
    ``decay_steps``, then flat at end_lr::

        s = min(t, decay_steps) / decay_steps
        lr(t) = (lr0 - end_lr) * (1 - s) ** power + end_lr

    ``power=1`` is a straight line; ``power=2`` drops fast first, ``0.5`` late.
    ``end_lr`` may be 0 (the optimizer then takes a no-op step at the end) and
    may be larger than lr0 (a warm-up ramp).
    """

    def __init__(self, lr0, decay_steps, end_lr=0.0, power=1.0):
        self.lr0 = _positive(lr0, "lr0")
        if isinstance(decay_steps, bool) or int(decay_steps) != decay_steps or decay_steps < 1:
            raise ValueError(f"decay_steps must be an integer >= 1, got {decay_steps!r}")
        self.decay_steps = int(decay_steps)
        self.end_lr = _positive(end_lr, "end_lr", allow_zero=True)
        self.power = _positive(power, "power")

    def __call__(self, t):
        s = min(_step_index(t), self.decay_steps) / self.decay_steps
        return (self.lr0 - self.end_lr) * (1.0 - s) ** self.power + self.end_lr

    def get_config(self):
        return {"lr0": self.lr0, "decay_steps": self.decay_steps, "end_lr": self.end_lr,
                "power": self.power}


class PiecewiseConstantDecay(Schedule):
    """A constant rate per interval: ``values[i]`` for ``boundaries[i-1] <= t < boundaries[i]``.

    ``values`` has one more entry than ``boundaries`` (strictly increasing,
    >= 0): values[0] before the first boundary, values[-1] from the last one
    on. The rate changes AT the boundary (as PyTorch's MultiStepLR milestones).
    The course's "divide the rate by 10 at epochs 60 and 90" is, per epoch::

        callbacks.LearningRateScheduler(PiecewiseConstantDecay([60, 90], [0.1, 0.01, 0.001]))

    (epochs 0-59 at 0.1, 60-89 at 0.01, then 0.001); given to an optimizer as
    ``lr`` the same boundaries count steps (batches) instead.
    """

    def __init__(self, boundaries, values):
        try:
            boundaries = [float(b) for b in boundaries]
            values = [float(v) for v in values]
        except (TypeError, ValueError):
            raise ValueError(f"boundaries and values must be sequences of numbers, got "
                             f"{boundaries!r} and {values!r}") from None
        if len(values) != len(boundaries) + 1:
            raise ValueError(f"values must have one more entry than boundaries, got "
                             f"{len(values)} values for {len(boundaries)} boundaries")
        for b in boundaries:
            _positive(b, "each boundary", allow_zero=True)
        if any(b1 <= b0 for b0, b1 in zip(boundaries, boundaries[1:])):
            raise ValueError(f"boundaries must be strictly increasing, got {boundaries!r}")
        for v in values:
            _positive(v, "each value", allow_zero=True)
        self.boundaries = boundaries
        self.values = values

    def __call__(self, t):
        t = _step_index(t)
        index = sum(1 for b in self.boundaries if t >= b)
        return self.values[index]

    def get_config(self):
        return {"boundaries": list(self.boundaries), "values": list(self.values)}


_REGISTRY = {cls.__name__: cls for cls in
             (InverseTimeDecay, ExponentialDecay, StepDecay, CosineDecay, PolynomialDecay,
              PiecewiseConstantDecay)}


def deserialize(config):
    """Rebuild a schedule from :meth:`Schedule.serialize` output."""
    if not isinstance(config, dict) or config.get("class_name") not in _REGISTRY:
        raise ValueError(f"unknown schedule config {config!r}; known classes: "
                         f"{', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[config["class_name"]](**config.get("config", {}))
