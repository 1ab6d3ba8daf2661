"""Optimizers.

``Optimizer.step(params_and_grads)`` takes an iterable of ``(key, param, grad)``
triples, e.g. ``model.named_parameters()``, and updates each ``param`` in
place. Per-parameter state (such as the momentum velocity) is stored under
``key`` (``"dense/W"``), which stays stable across steps and across
save/load, unlike ``id(param)``.

The learning rate ``lr`` is a positive float or a callable ``schedule(t) ->
lr``, where ``t`` counts optimizer steps already taken (0 for the first
step), i.e. batches, not epochs.
"""
import math

import numpy as np

from .backend import get_backend


def _check_lr_value(lr, what="lr"):
    try:
        value = float(lr)
    except (TypeError, ValueError):
        raise ValueError(f"{what} must be a positive number, got {lr!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{what} must be a positive finite number, got {lr!r}")
    return value


class Optimizer:
    """Base class: learning-rate handling, step counting and per-key state."""

    def __init__(self, lr):
        if callable(lr):
            self.lr = lr
        else:
            self.lr = _check_lr_value(lr)
        self.iterations = 0   # optimizer steps taken so far
        self.backend = None   # set by the Trainer; get_backend() otherwise

    def current_lr(self):
        """The learning rate of the next step."""
        if callable(self.lr):
            return _check_lr_value(self.lr(self.iterations),
                                   f"lr schedule value at step {self.iterations}")
        return self.lr

    def step(self, params_and_grads):
        """Update every ``(key, param, grad)`` in place, then count one step."""
        backend = self.backend if self.backend is not None else get_backend()
        lr = self.current_lr()
        for key, param, grad in params_and_grads:
            self.update(key, param, grad, lr, backend)
        self.iterations += 1

    def update(self, key, param, grad, lr, backend):
        raise NotImplementedError

    def state_arrays(self):
        """Dict key -> array of the per-parameter state that ``step`` updates in place.

        The Trainer copies these before a step so that a step which overflows
        can be rolled back completely.
        """
        return {}

    def get_config(self):
        lr = self.lr
        if callable(lr):
            lr = lr.get_config() if hasattr(lr, "get_config") else getattr(lr, "__name__", repr(lr))
        return {"lr": lr}

    def state_dict(self):
        """Copy of the optimizer state: the step count and per-key arrays."""
        return {"iterations": self.iterations}

    def load_state_dict(self, state):
        """Restore a state produced by :meth:`state_dict`."""
        self.iterations = int(state.get("iterations", 0))

    def serialize(self):
        return {"class_name": type(self).__name__, "config": self.get_config()}


class SGD(Optimizer):
    """Stochastic gradient descent with optional (Nesterov) momentum and weight decay.

    Per parameter, in one backend pass (``backend.sgd_step``)::

        g = grad + weight_decay * param
        momentum == 0:  param -= lr * g
        otherwise:      v = momentum * v + g
                        param -= lr * (g + momentum * v)   if nesterov
                        param -= lr * v                    otherwise
    """

    def __init__(self, lr=0.01, momentum=0.0, nesterov=False, weight_decay=0.0):
        super().__init__(lr)
        momentum = float(momentum)
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"momentum must be in [0, 1), got {momentum!r}")
        if nesterov and momentum == 0.0:
            raise ValueError("nesterov=True requires momentum > 0")
        weight_decay = float(weight_decay)
        if not math.isfinite(weight_decay) or weight_decay < 0:
            raise ValueError(f"weight_decay must be a finite number >= 0, got {weight_decay!r}")
        self.momentum = momentum
        self.nesterov = bool(nesterov)
        self.weight_decay = weight_decay
        self.velocity = {}

    def update(self, key, param, grad, lr, backend):
        velocity = None
        if self.momentum > 0.0:
            velocity = self.velocity.get(key)
            if velocity is None:
                velocity = self.velocity[key] = np.zeros_like(param)
            elif velocity.shape != param.shape or velocity.dtype != param.dtype:
                raise ValueError(f"optimizer state for {key!r} has shape {velocity.shape} "
                                 f"({velocity.dtype}) but the parameter is {param.shape} "
                                 f"({param.dtype})")
        backend.sgd_step(param, grad, velocity, lr=lr, momentum=self.momentum,
                         nesterov=self.nesterov, weight_decay=self.weight_decay)

    def state_arrays(self):
        return self.velocity

    def get_config(self):
        config = super().get_config()
        config.update(momentum=self.momentum, nesterov=self.nesterov,
                      weight_decay=self.weight_decay)
        return config

    def state_dict(self):
        state = super().state_dict()
        state["velocity"] = {k: v.copy() for k, v in self.velocity.items()}
        return state

    def load_state_dict(self, state):
        super().load_state_dict(state)
        self.velocity = {k: np.array(v, copy=True) for k, v in state.get("velocity", {}).items()}


_REGISTRY = {"sgd": SGD}


def deserialize(config):
    """Rebuild an optimizer from ``Optimizer.serialize()`` output (numeric lr only)."""
    classes = {cls.__name__: cls for cls in _REGISTRY.values()}
    if not isinstance(config, dict) or config.get("class_name") not in classes:
        raise ValueError(f"unknown optimizer config {config!r}; known classes: "
                         f"{', '.join(sorted(classes))}")
    kwargs = dict(config.get("config", {}))
    if not isinstance(kwargs.get("lr", 0.01), (int, float)):
        raise ValueError(f"cannot rebuild a learning-rate schedule from {kwargs['lr']!r}; "
                         f"create the optimizer yourself and call load_state_dict")
    return classes[config["class_name"]](**kwargs)


def get(identifier):
    """Return an Optimizer for a name ("sgd", default arguments) or an instance."""
    if isinstance(identifier, Optimizer):
        return identifier
    if isinstance(identifier, str):
        key = identifier.lower()
        if key in _REGISTRY:
            return _REGISTRY[key]()
        raise ValueError(f"unknown optimizer {identifier!r}; valid names: "
                         f"{', '.join(sorted(_REGISTRY))}")
    raise TypeError(f"optimizer must be a name or an Optimizer, got {type(identifier).__name__}")
