"""Optimizers.

``Optimizer.step(params_and_grads)`` takes an iterable of ``(key, param, grad)``
triples, e.g. ``model.named_parameters()``, and updates each ``param`` in
place. Per-parameter state (such as the momentum velocity) is stored under
``key`` (``"dense/W"``), which stays stable across steps and across
save/load, unlike ``id(param)``. ``Optimizer.apply_step`` is the same step
made all-or-nothing: the Trainer uses it so that a NaN/Inf never reaches the
weights. Either way the whole step is one backend call.

The learning rate ``lr`` is a positive float or a callable ``schedule(t) ->
lr``, where ``t`` counts optimizer steps already taken (0 for the first
step), i.e. batches, not epochs.

Gradient clipping (every optimizer, as in Keras): ``clipvalue=v`` clips each
gradient entry to [-v, v]; ``clipnorm=c`` rescales each parameter's gradient
whose L2 norm exceeds c to norm c; ``global_clipnorm=c`` rescales all the
gradients together so that their joint L2 norm is at most c (PyTorch's
``clip_grad_norm_``). Norm clipping happens before value clipping. The
gradient arrays are clipped in place, just before the update. A step whose
gradients contain NaN or Inf is not clipped (clipping would hide the
overflow): the finite check refuses it as usual.
"""
import math

import numpy as np

from . import aligned
from .backend import get_backend, state_with_modules, state_without_modules


def _check_lr_value(lr, what="lr", allow_zero=False):
    try:
        value = float(lr)
    except (TypeError, ValueError):
        raise ValueError(f"{what} must be a positive number, got {lr!r}") from None
    if not math.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
        raise ValueError(f"{what} must be a positive finite number, got {lr!r}")
    return value


def _check_clip(value, name):
    """None, or a positive finite float (a gradient clipping threshold)."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise TypeError(f"{name} must be a positive number or None, got {value!r}")
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a positive number or None, got {value!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a positive finite number or None, got {value!r}")
    return value


def _check_step_item(item):
    """A ``(key, param, grad)`` triple whose param and grad are NumPy arrays
    (TypeError naming the parameter otherwise: the state arrays are made
    from the param's shape and dtype, and the step writes into it)."""
    try:
        key, param, grad = item
    except (TypeError, ValueError):
        raise TypeError(f"optimizer step: expected (key, param, grad) triples, got {item!r:.80}") \
            from None
    for name, arr in (("param", param), ("grad", grad)):
        if not isinstance(arr, np.ndarray):
            raise TypeError(f"optimizer step: the {name} of {key!r} must be a numpy.ndarray, "
                            f"got {type(arr).__name__}")
    return key, param, grad


def _l2_norm(g):
    """||g||_2 accumulated in float64 (a float32 sum of squares overflows past ~1e19)."""
    return math.sqrt(float(np.sum(np.square(g, dtype=np.float64))))


class Optimizer:
    """Base class: learning-rate handling, gradient clipping, step counting and per-key state."""

    def __init__(self, lr, clipnorm=None, clipvalue=None, global_clipnorm=None):
        if callable(lr):
            self.lr = lr
        else:
            self.lr = _check_lr_value(lr)
        self.clipnorm = _check_clip(clipnorm, "clipnorm")
        self.clipvalue = _check_clip(clipvalue, "clipvalue")
        self.global_clipnorm = _check_clip(global_clipnorm, "global_clipnorm")
        if self.clipnorm is not None and self.global_clipnorm is not None:
            raise ValueError("give clipnorm (per parameter) or global_clipnorm (all "
                             "parameters together), not both")
        self.iterations = 0   # optimizer steps taken so far
        self.backend = None   # set by the Trainer; get_backend() otherwise
        # The backend's argument lists of the last step, reused while the
        # same arrays come back (see _step_lists); _state_version counts
        # creations and replacements of state arrays, which invalidate them.
        self._last_lists = None
        self._state_version = 0

    # copy.deepcopy and pickle: the backend module travels as its name.
    def __getstate__(self):
        return state_without_modules(self.__dict__)

    def __setstate__(self, state):
        self.__dict__.update(state_with_modules(state))

    def current_lr(self):
        """The learning rate of the next step."""
        if callable(self.lr):
            # A schedule may end at exactly 0 (CosineDecay with alpha=0): a no-op step.
            return _check_lr_value(self.lr(self.iterations),
                                   f"lr schedule value at step {self.iterations}",
                                   allow_zero=True)
        return self.lr

    def step(self, params_and_grads):
        """Update every ``(key, param, grad)`` in place, then count one step."""
        self.apply_step(params_and_grads, check=False)

    def apply_step(self, params_and_grads, check=True):
        """One step over every ``(key, param, grad)``, in one backend call.

        With ``check`` (default) the step is all-or-nothing: when the update
        of any parameter would make it or its optimizer state NaN or Inf
        (a NaN/Inf gradient always does), nothing is written and the key of
        the first such parameter is returned; otherwise the step is applied,
        counted, and None is returned. The kernels run the update rule in a
        check-only pass first, so no copy of the weights is made."""
        return self._run(params_and_grads, "check_apply" if check else "apply")

    def find_nonfinite_update(self, params_and_grads):
        """Key of the first parameter that the next :meth:`step` would make NaN or
        Inf (in the weights or in the optimizer state), or None when the whole
        step is finite. Changes no weight and no state value."""
        return self._run(params_and_grads, "check")

    @property
    def clips_gradients(self):
        """Whether a step clips the gradients first (clipnorm, clipvalue, global_clipnorm)."""
        return (self.clipnorm is not None or self.clipvalue is not None
                or self.global_clipnorm is not None)

    def clip_gradients(self, grads):
        """Clip the gradient arrays ``grads`` in place as configured (see the module
        notes); returns the global L2 norm before clipping (None without clipping).
        Gradients containing NaN/Inf are left as they are."""
        if not self.clips_gradients:
            return None
        if not all(np.isfinite(g).all() for g in grads):
            return math.nan
        norms = [_l2_norm(g) for g in grads]
        total = math.sqrt(sum(n * n for n in norms))
        if self.global_clipnorm is not None and total > self.global_clipnorm:
            scale = self.global_clipnorm / total
            for g in grads:
                g *= g.dtype.type(scale)
        if self.clipnorm is not None:
            for g, norm in zip(grads, norms):
                if norm > self.clipnorm:
                    g *= g.dtype.type(self.clipnorm / norm)
        if self.clipvalue is not None:
            for g in grads:
                np.clip(g, -self.clipvalue, self.clipvalue, out=g)
        return total

    def _run(self, params_and_grads, mode):
        backend = self.backend if self.backend is not None else get_backend()
        lr = self.current_lr()
        keys, params, grads, state0, state1 = self._step_lists(params_and_grads)
        if self.clips_gradients:
            self.clip_gradients(grads)
        bad = backend.optimizer_step(self.rule, params, grads, state0, state1, lr=lr, mode=mode,
                                     **self.step_hyperparameters())
        return self._finish_step(keys, bad, mode)

    def _finish_step(self, keys, bad, mode):
        """After a backend step returned ``bad`` (a parameter index, or -1): the
        key of the refused parameter, or None after counting the step."""
        if bad >= 0:
            return keys[bad]
        if mode != "check":
            self.iterations += 1
        return None

    def _step_lists(self, params_and_grads):
        """(keys, params, grads, state0, state1): the backend's parallel lists.

        A training loop passes the same arrays every step, so the lists of
        the last step are reused when every key, parameter and gradient is
        the same (compared by identity) and no state array was created or
        replaced since; only then are the state arrays not looked up again.
        At batch 128 of a 784-256-128-10 MLP the lookups cost ~25 us a step."""
        items = params_and_grads if type(params_and_grads) is list else list(params_and_grads)
        last = self._last_lists
        if (last is not None and last[0] == self._state_version
                and last[1] == self._state_layout() and len(last[2]) == len(items)):
            keys, params, grads = last[2], last[3], last[4]
            for i, (key, param, grad) in enumerate(items):
                if param is not params[i] or grad is not grads[i] or key != keys[i]:
                    break
            else:
                return last[2:]
        keys, params, grads, state0, state1 = [], [], [], [], []
        for item in items:
            key, param, grad = _check_step_item(item)
            first, second = self.state_for(key, param)
            keys.append(key)
            params.append(param)
            grads.append(grad)
            state0.append(first)
            state1.append(second)
        # state_for may have created arrays (bumping the version): read it after.
        self._last_lists = (self._state_version, self._state_layout(),
                            keys, params, grads, state0, state1)
        return keys, params, grads, state0, state1

    def _state_layout(self):
        """What decides which state arrays ``state_for`` returns besides the key
        (SGD: whether momentum is on), so that changing it rebuilds the lists."""
        return None

    def _state_changed(self):
        """Called whenever state arrays are created or replaced."""
        self._state_version += 1

    # What a subclass defines: the backend rule, its state arrays, its numbers.
    rule = None

    def state_for(self, key, param):
        """The (state0, state1) arrays of ``param`` for the backend rule
        (created on first use; None where the rule has no such state)."""
        raise NotImplementedError

    def step_hyperparameters(self):
        """Keyword arguments of ``backend.optimizer_step`` for the next step."""
        raise NotImplementedError

    def state_arrays(self):
        """Dict key -> array of the per-parameter state that ``step`` updates in place.

        Saved in checkpoints (with :meth:`state_dict`) and inspected by tests.
        Change these arrays in place, or replace them all with
        :meth:`load_state_dict`: steps keep the arrays they found.
        """
        return {}

    def initial_state_value(self, key):
        """Value a state array of :meth:`state_arrays` starts from (0 unless overridden).

        State arrays are created with this value on a parameter's first update.
        """
        return 0.0

    def get_config(self):
        lr = self.lr
        if callable(lr):
            if hasattr(lr, "serialize"):      # a schedules.Schedule: rebuildable
                lr = lr.serialize()
            elif hasattr(lr, "get_config"):
                lr = lr.get_config()
            else:
                lr = getattr(lr, "__name__", repr(lr))
        config = {"lr": lr}
        # Only the clipping that is set, so configs without it are as before.
        for name in ("clipnorm", "clipvalue", "global_clipnorm"):
            if getattr(self, name) is not None:
                config[name] = getattr(self, name)
        return config

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

    Per element, the ``sgd`` rule of ``backend.optimizer_step`` (one C call for
    all parameters)::

        g = grad + weight_decay * param
        momentum == 0:  param -= lr * g
        otherwise:      v = momentum * v + g
                        param -= lr * (g + momentum * v)   if nesterov
                        param -= lr * v                    otherwise
    """

    def __init__(self, lr=0.01, momentum=0.0, nesterov=False, weight_decay=0.0,
                 clipnorm=None, clipvalue=None, global_clipnorm=None):
        super().__init__(lr, clipnorm, clipvalue, global_clipnorm)
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

    rule = "sgd"

    def state_for(self, key, param):
        if self.momentum == 0.0:
            return None, None
        velocity = self.velocity.get(key)
        if velocity is None:
            velocity = self.velocity[key] = aligned.zeros(param.shape, param.dtype)
            self._state_changed()
        elif velocity.shape != param.shape or velocity.dtype != param.dtype:
            raise ValueError(f"optimizer state for {key!r} has shape {velocity.shape} "
                             f"({velocity.dtype}) but the parameter is {param.shape} "
                             f"({param.dtype})")
        return velocity, None

    def step_hyperparameters(self):
        return dict(momentum=self.momentum, nesterov=self.nesterov, weight_decay=self.weight_decay)

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
        self.velocity = {k: aligned.copy(v) for k, v in state.get("velocity", {}).items()}
        self._state_changed()

    def _state_layout(self):
        return self.momentum != 0.0


def _check_unit_interval(value, name, upper_open=True):
    value = float(value)
    ok = 0.0 <= value < 1.0 if upper_open else 0.0 <= value <= 1.0
    if not ok:
        raise ValueError(f"{name} must be in [0, 1), got {value!r}")
    return value


def _check_positive(value, name, allow_zero=False):
    value = float(value)
    if not math.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{name} must be a finite number {bound}, got {value!r}")
    return value


class _StatefulOptimizer(Optimizer):
    """Shared bookkeeping of optimizers with named per-parameter state arrays.

    ``self.slots`` maps a slot name ("m", "v", ...) to a dict key -> array;
    arrays are created lazily, zero-filled unless ``_initial_value`` says
    otherwise, and checked against the parameter's shape and dtype.
    """

    _slot_names = ()

    def __init__(self, lr, clipnorm=None, clipvalue=None, global_clipnorm=None):
        super().__init__(lr, clipnorm, clipvalue, global_clipnorm)
        self.slots = {name: {} for name in self._slot_names}

    def _initial_value(self, slot):
        return 0.0

    def _slot(self, slot, key, param):
        arrays = self.slots[slot]
        arr = arrays.get(key)
        if arr is None:
            arr = arrays[key] = aligned.full(param.shape, self._initial_value(slot), param.dtype)
            self._state_changed()
        elif arr.shape != param.shape or arr.dtype != param.dtype:
            raise ValueError(f"optimizer state {slot!r} for {key!r} has shape {arr.shape} "
                             f"({arr.dtype}) but the parameter is {param.shape} ({param.dtype})")
        return arr

    def state_arrays(self):
        # Flat view, one entry per (slot, parameter); keys are unique.
        return {f"{slot}:{key}": arr for slot, arrays in self.slots.items()
                for key, arr in arrays.items()}

    def state_dict(self):
        state = super().state_dict()
        for slot, arrays in self.slots.items():
            state[slot] = {k: a.copy() for k, a in arrays.items()}
        return state

    def load_state_dict(self, state):
        super().load_state_dict(state)
        self.slots = {slot: {k: aligned.copy(a) for k, a in state.get(slot, {}).items()}
                      for slot in self._slot_names}
        self._state_changed()


class Adam(_StatefulOptimizer):
    """Adam (Kingma & Ba 2015) with bias-corrected moments.

    Per element, the ``adam`` rule of ``backend.optimizer_step`` (one C call for
    all parameters), with t the
    1-based step number::

        g = grad + weight_decay * param            (L2 decay, coupled into g)
        m = beta_1 m + (1 - beta_1) g
        v = beta_2 v + (1 - beta_2) g^2
        param -= lr * (m / (1 - beta_1^t)) / (sqrt(v / (1 - beta_2^t)) + epsilon)

    ``weight_decay`` here is an L2 penalty: it passes through the adaptive
    scaling, so heavily-updated weights are barely decayed. :class:`AdamW`
    decouples it.
    """

    _slot_names = ("m", "v")
    _decoupled = False

    def __init__(self, lr=1e-3, beta_1=0.9, beta_2=0.999, epsilon=1e-7, weight_decay=0.0,
                 clipnorm=None, clipvalue=None, global_clipnorm=None):
        super().__init__(lr, clipnorm, clipvalue, global_clipnorm)
        self.beta_1 = _check_unit_interval(beta_1, "beta_1")
        self.beta_2 = _check_unit_interval(beta_2, "beta_2")
        self.epsilon = _check_positive(epsilon, "epsilon")
        self.weight_decay = _check_positive(weight_decay, "weight_decay", allow_zero=True)

    rule = "adam"

    def state_for(self, key, param):
        return self._slot("m", key, param), self._slot("v", key, param)

    def step_hyperparameters(self):
        # iterations counts the steps already taken, so this is step t = iterations + 1.
        return dict(beta_1=self.beta_1, beta_2=self.beta_2, epsilon=self.epsilon,
                    step=self.iterations + 1, weight_decay=self.weight_decay,
                    decoupled=self._decoupled)

    def get_config(self):
        config = super().get_config()
        config.update(beta_1=self.beta_1, beta_2=self.beta_2, epsilon=self.epsilon,
                      weight_decay=self.weight_decay)
        return config


class AdamW(Adam):
    """Adam with decoupled weight decay (Loshchilov & Hutter 2019).

    The decay shrinks the weights directly, param -= lr * weight_decay * param,
    instead of entering the gradient; the Adam update then uses the raw
    gradient. The default ``weight_decay`` is 0.01 (as in PyTorch/Keras).
    """

    _decoupled = True

    def __init__(self, lr=1e-3, beta_1=0.9, beta_2=0.999, epsilon=1e-7, weight_decay=0.01,
                 clipnorm=None, clipvalue=None, global_clipnorm=None):
        super().__init__(lr, beta_1, beta_2, epsilon, weight_decay, clipnorm, clipvalue,
                         global_clipnorm)


class RMSprop(_StatefulOptimizer):
    """RMSprop (Hinton's lecture 6e), optionally with momentum.

    Per element, the ``rmsprop`` rule of ``backend.optimizer_step`` (one C call for
    all parameters)::

        ms = rho ms + (1 - rho) grad^2
        u  = lr * grad / (sqrt(ms) + epsilon)
        momentum == 0:  param -= u
        otherwise:      mom = momentum mom + u;  param -= mom

    (epsilon is added outside the square root, as in PyTorch.)
    """

    _slot_names = ("ms", "mom")

    def __init__(self, lr=1e-3, rho=0.9, momentum=0.0, epsilon=1e-7,
                 clipnorm=None, clipvalue=None, global_clipnorm=None):
        super().__init__(lr, clipnorm, clipvalue, global_clipnorm)
        self.rho = _check_unit_interval(rho, "rho")
        self.momentum = _check_unit_interval(momentum, "momentum")
        self.epsilon = _check_positive(epsilon, "epsilon")

    rule = "rmsprop"

    def state_for(self, key, param):
        mom = self._slot("mom", key, param) if self.momentum > 0.0 else None
        return self._slot("ms", key, param), mom

    def _state_layout(self):
        return self.momentum > 0.0

    def step_hyperparameters(self):
        return dict(rho=self.rho, momentum=self.momentum, epsilon=self.epsilon)

    def get_config(self):
        config = super().get_config()
        config.update(rho=self.rho, momentum=self.momentum, epsilon=self.epsilon)
        return config


class Adagrad(_StatefulOptimizer):
    """Adagrad (Duchi et al. 2011): per-weight step sizes shrinking with the
    accumulated squared gradient.

    Per element, the ``adagrad`` rule of ``backend.optimizer_step`` (one C call for
    all parameters)::

        acc += grad^2                    (acc starts at initial_accumulator_value)
        param -= lr * grad / (sqrt(acc) + epsilon)
    """

    _slot_names = ("acc",)

    def __init__(self, lr=1e-3, initial_accumulator_value=0.1, epsilon=1e-7,
                 clipnorm=None, clipvalue=None, global_clipnorm=None):
        super().__init__(lr, clipnorm, clipvalue, global_clipnorm)
        self.initial_accumulator_value = _check_positive(
            initial_accumulator_value, "initial_accumulator_value", allow_zero=True)
        self.epsilon = _check_positive(epsilon, "epsilon")

    def _initial_value(self, slot):
        return self.initial_accumulator_value

    def initial_state_value(self, key):
        return self.initial_accumulator_value

    rule = "adagrad"

    def state_for(self, key, param):
        return self._slot("acc", key, param), None

    def step_hyperparameters(self):
        return dict(epsilon=self.epsilon)

    def get_config(self):
        config = super().get_config()
        config.update(initial_accumulator_value=self.initial_accumulator_value,
                      epsilon=self.epsilon)
        return config


_REGISTRY = {"sgd": SGD, "adam": Adam, "adamw": AdamW, "rmsprop": RMSprop, "adagrad": Adagrad}


def deserialize(config):
    """Rebuild an optimizer from ``Optimizer.serialize()`` output (numeric lr only)."""
    classes = {cls.__name__: cls for cls in _REGISTRY.values()}
    if not isinstance(config, dict) or config.get("class_name") not in classes:
        raise ValueError(f"unknown optimizer config {config!r}; known classes: "
                         f"{', '.join(sorted(classes))}")
    kwargs = dict(config.get("config", {}))
    lr = kwargs.get("lr")
    if isinstance(lr, dict) and "class_name" in lr:
        from . import schedules   # a serialized schedules.Schedule
        kwargs["lr"] = schedules.deserialize(lr)
    elif not isinstance(kwargs.get("lr", 0.01), (int, float)):
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
