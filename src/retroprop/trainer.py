"""Trainer: batching, shuffling, epochs, validation, callbacks and History.

One training step of a model, whatever its graph::

    y_pred = the model's training plan, forward (plan.py)
    loss, seeds = each output's loss and its gradient (fused softmax/sigmoid
                  + cross-entropy when the output allows), weighted and summed
    check the loss (plus regularisation) is finite  -> NonFiniteError otherwise
    backward through the plan (only the gradients something needs)
    optimizer.apply_step(model.named_parameters())  -> NonFiniteError when refused

``apply_step`` is one backend call over all parameters: it runs the update
rule in a check-only pass first and writes only when no weight or optimizer
state value would become NaN/Inf (a NaN/Inf gradient always fails), so when a
step is refused the weights are exactly those from before it, and no copies
are made. (``check_finite=False`` keeps only the loss check and skips the
check-only pass.)

With the C backend the step runs as a *step program* (step.py): the plan's
nodes lowered to C records (dense, convolution, pooling, activations,
dropout, merges, the fused loss, the regularizers, the optimizer over all
parameters, the accuracy metric), run in one C call per stretch of such
records with the GIL released; a node without a C form (a custom layer) runs
in Python between two stretches. Its results are those of the step above,
bit for bit where the kernels are the same (tests/test_step_program.py).

Several inputs: ``x`` is a list of arrays (in the model's input order) or a
dict keyed by input name; several outputs: ``y`` likewise, keyed by output
name, ``loss`` one loss for every output or a list/dict of them, and
``loss_weights`` their weights in the total.
"""
import copy
import math
import weakref

import numpy as np

from . import activations as activations_module
from . import aligned
from . import losses as losses_module
from . import metrics as metrics_module
from . import optim as optim_module
from . import step as step_module
from .backend import get_backend
from .callbacks import Callback, History, ProgressBar, TerminateOnNaN

# on_batch_end methods that only read (progress, logs, stop_training): with
# only these, the optimizer's bounds stay valid across batches (step.py).
_READ_ONLY_BATCH_END = (Callback.on_batch_end, ProgressBar.on_batch_end,
                        TerminateOnNaN.on_batch_end)


class NonFiniteError(ValueError, FloatingPointError):
    """A loss, gradient or parameter became NaN/Inf during training.

    ``epoch`` and ``batch`` (ints, 1-based as in the message) locate the
    step; the weights are those from before that step.
    """

    def __init__(self, message, epoch=None, batch=None):
        super().__init__(message)
        self.epoch = epoch
        self.batch = batch


# --------------------------------------------------------------------------
# the objective: one loss per output
# --------------------------------------------------------------------------

def _fuses(layer, loss):
    """Whether ``loss`` fuses with ``layer``'s output activation (see uses_fused_output)."""
    activation = getattr(layer, "activation", None)
    fused_name = getattr(loss, "fused_activation", None)
    return (fused_name is not None
            and isinstance(activation, activations_module.Activation)
            and activation == activations_module.get(fused_name)
            and hasattr(layer, "backward_from_logits"))


def uses_fused_output(model, loss, output=0):
    """True when the loss fuses with the activation of the layer that computes
    the model's output (index ``output``).

    A loss names the activation it fuses with in ``loss.fused_activation``
    (softmax for categorical cross-entropy, sigmoid for binary cross-entropy,
    both on probabilities). The layer must have exactly that activation (a
    sigmoid with a slope other than 1 does not qualify), a
    ``backward_from_logits`` method, and its output must not also be used
    inside the model.
    """
    layer = model.output_fusable(output)
    return layer is not None and _fuses(layer, loss)


# The older name, from when softmax + cross-entropy was the only fusion.
uses_fused_softmax = uses_fused_output


def _per_output(spec, model, what, convert):
    """A value per output from one value, a list (output order) or a dict (output names)."""
    names = model.output_names
    if isinstance(spec, dict):
        unknown = [k for k in spec if k not in names]
        missing = [n for n in names if n not in spec]
        if unknown or missing:
            raise ValueError(f"{what}: " + "; ".join(
                ([f"unknown output name(s) {unknown}"] if unknown else [])
                + ([f"no entry for output(s) {missing}"] if missing else []))
                + f" (the outputs are {names})")
        return [convert(spec[n]) for n in names]
    if isinstance(spec, (list, tuple)):
        if len(spec) != len(names):
            raise ValueError(f"{what}: the model has {len(names)} outputs ({names}), got "
                             f"{len(spec)} entries")
        return [convert(v) for v in spec]
    return [convert(spec) for _ in names]


class Objective:
    """The training objective of a model: a loss per output, and their weights.

    ``value_and_seeds`` computes sum_k w_k L_k and the gradient seeds; an
    output whose loss fuses with its layer's activation (``fused[k]``) gets
    its seed w.r.t. that layer's pre-activation.
    """

    def __init__(self, model, loss, loss_weights=None):
        self.model = model
        first = [True]

        def one_loss(spec):
            value = losses_module.get(spec)
            # Losses keep buffers (the fused gradient): each output its own object.
            if not first[0] and not isinstance(spec, str):
                value = copy.copy(value)
                if hasattr(value, "_grad_buffer"):
                    value._grad_buffer = None
            first[0] = False
            return value
        if losses_module.is_function_pair(loss):
            loss = losses_module.get(loss)    # one custom loss, not a loss per output
        self.losses = _per_output(loss, model, "loss", one_loss)

        def weight(w):
            w = float(w)
            if not math.isfinite(w) or w < 0:
                raise ValueError(f"loss_weights must be finite numbers >= 0, got {w!r}")
            return w
        self.weights = _per_output(1.0 if loss_weights is None else loss_weights, model,
                                   "loss_weights", weight)
        self.fused = [uses_fused_output(model, l, k) for k, l in enumerate(self.losses)]
        self.fused_indices = [k for k, f in enumerate(self.fused) if f]

    def prepare_targets(self, y, n, argname="y", xname="x"):
        """One prepared target array per output (``y``: an array for one output,
        a list or a dict keyed by output name for several)."""
        names = self.model.output_names
        if len(names) == 1:
            if isinstance(y, dict):
                ys = _per_output(y, self.model, argname, lambda v: v)
            else:
                ys = [y]
        elif isinstance(y, (dict, list, tuple)):
            ys = _per_output(y, self.model, argname, lambda v: v)
        else:
            raise ValueError(f"model {self.model.name!r} has {len(names)} outputs ({names}): "
                             f"pass {argname} as a list or a dict of arrays")
        targets = []
        for k, (values, loss, tensor) in enumerate(zip(ys, self.losses, self.model.outputs)):
            arr = np.asarray(values)
            name = argname if len(names) == 1 else f"{argname}[{names[k]!r}]"
            if arr.ndim == 0:
                raise ValueError(f"{name} must have one entry per sample, got a scalar")
            if arr.shape[0] != n:
                raise ValueError(f"{xname} and {name} have different lengths: {n} samples in "
                                 f"{xname}, {arr.shape[0]} in {name}")
            targets.append(loss.prepare_targets(arr, (n,) + tuple(tensor.shape),
                                                self.model.dtype, argname=name))
        return targets

    def value_and_seeds(self, runners, ys, targets, backend, with_grad):
        """(total, [per-output values], [seeds or None]). ``runners[k]``: the layer
        object that computed output k (its ``logits`` serve the fused losses)."""
        total = 0.0
        values, seeds = [], []
        for k, (loss, y, t) in enumerate(zip(self.losses, ys, targets)):
            if self.fused[k]:
                value, seed = loss.fused_value_and_grad(runners[k], y, t, backend)
            elif with_grad:
                value, seed = loss.value_and_grad(t, y, backend)
            else:
                value, seed = loss.value(t, y), None
            value = float(value)
            w = self.weights[k]
            total += w * value
            if seed is not None and w != 1.0:
                seed = seed * seed.dtype.type(w)
            values.append(value)
            seeds.append(seed if with_grad else None)
        return total, values, seeds


def _objective(model, loss):
    return loss if isinstance(loss, Objective) else Objective(model, loss)


def forward_loss(model, loss, x, targets, training=False, with_grad=False, fused=None):
    """Forward x and return (data loss, y_pred, gradient seed or None).

    ``loss`` is a Loss (one output) or an :class:`Objective`; ``targets`` come
    from ``loss.prepare_targets`` (a list per output for an Objective). With
    ``with_grad`` the seed is dL/dlogits on the fused path and dL/dy_pred
    otherwise; pass it to :func:`backpropagate`. The regularisation penalty is
    not included. For several outputs y_pred and the seed are lists.
    ``fused`` is accepted for compatibility (the objective decides).
    """
    objective = _objective(model, loss)
    xs = x if isinstance(x, list) else [x]
    ys = model._forward_arrays(xs, training=training)
    plan = model._last_plan
    ts = targets if isinstance(loss, Objective) else [targets]
    total, _, seeds = objective.value_and_seeds(plan.output_runners(), ys, ts, model.backend,
                                                with_grad)
    single = len(ys) == 1
    return (total, ys[0] if single else ys,
            (seeds[0] if single else seeds) if with_grad else None)


def backpropagate(model, loss, seed, input_grad=False, fused=None):
    """Backward pass from the seed of :func:`forward_loss`; returns dL/dx (or None)."""
    objective = _objective(model, loss)
    return model.backward(seed, input_grad=input_grad, from_logits=list(objective.fused))


# --------------------------------------------------------------------------
# input validation
# --------------------------------------------------------------------------

def _first_nonfinite_index(arr, backend=None):
    """Index of the first NaN/Inf in arr (an int, or a tuple for N-d arrays), or None.

    One pass of the backend's ``find_nonfinite`` (in C: threaded, vectorised,
    no temporary arrays), run on every fit over the whole training set."""
    if backend is None:
        backend = get_backend()
    flat = backend.find_nonfinite(np.ascontiguousarray(arr))
    if flat < 0:
        return None
    index = tuple(int(i) for i in np.unravel_index(flat, arr.shape))
    return index[0] if len(index) == 1 else index


def _target_kind(targets, dtype):
    """"labels" (int64 class ids), "targets" (rows of the model's dtype) or None."""
    if type(targets) is np.ndarray and targets.flags.c_contiguous:
        if targets.dtype == np.int64 and targets.ndim == 1:
            return "labels"
        if targets.dtype == dtype and targets.ndim >= 2:
            return "targets"
    return None


def _check_positive_int(value, argname, minimum=1):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{argname} must be an integer >= {minimum}, got {value!r}")
    return int(value)


class Trainer:
    """Fits a model with a loss and an optimizer.

    Parameters
    ----------
    model : Model or Sequential
    loss : str or Loss ("categorical_crossentropy", "mse", ...); for a model
        of several outputs also a list (output order) or a dict (output names)
    optimizer : str or Optimizer
    metrics : iterable of names or callables ``f(y_true, y_pred) -> float``
        (computed for every output; logged as "accuracy", or "<output>_accuracy"
        with several outputs)
    callbacks : list of Callback
    check_finite : bool (default True)
        Each optimizer step first runs its update rule in check-only mode over
        every parameter (``Optimizer.apply_step``, in the same C call): a
        step whose gradients are NaN/Inf, or which would overflow a weight or
        an optimizer state value, is refused before anything is written, so
        the weights stay those of the last good step. This costs one extra
        read of the parameters, gradients and state per step and no copies.
        With False only the loss is checked (which is free), so an
        overflowing step is reported one step later, with the weights already
        non-finite.
    loss_weights : None, a list or a dict of floats
        Weight of each output's loss in the total (default 1 each).
    """

    def __init__(self, model, loss, optimizer, metrics=("accuracy",), callbacks=None,
                 check_finite=True, loss_weights=None):
        self.model = model
        self._loss_spec = loss
        if isinstance(loss, (list, tuple)) and not losses_module.is_function_pair(loss):
            self.loss = [losses_module.get(v) for v in loss]
        elif isinstance(loss, dict):
            self.loss = {k: losses_module.get(v) for k, v in loss.items()}
        else:
            self.loss = losses_module.get(loss)
        self.loss_weights = loss_weights
        self.optimizer = optim_module.get(optimizer)
        self.metric_names = []
        self.metric_fns = []
        for m in metrics or ():
            fn = metrics_module.get(m)
            name = "accuracy" if fn is metrics_module.accuracy else getattr(fn, "__name__", str(m))
            self.metric_names.append(name)
            self.metric_fns.append(fn)
        self.callbacks = list(callbacks or [])
        for cb in self.callbacks:
            if not isinstance(cb, Callback):
                raise TypeError(f"callbacks must be Callback instances, got {type(cb).__name__}")
        self.check_finite = bool(check_finite)
        self.stop_training = False
        self._objective_cache = None
        self._programs = {}          # batch size -> step.StepProgram (C backend)
        # The optimizer's bounds between steps (optim.h, rp_opt_bounds): valid
        # only while nothing but the Trainer's steps wrote the weights and the
        # optimizer state, so cleared (_forget_step_bounds) at every fit and
        # epoch start, after a callback that may write them, and whenever a
        # step is not a tracked one.
        self._step_bounds = np.zeros(3)
        self._finite_inputs = []  # weak references to arrays already scanned for NaN/Inf
        self.history = None

    # -- the objective --------------------------------------------------------------

    @property
    def objective(self):
        """The model's :class:`Objective` (made once the model is built)."""
        cached = self._objective_cache
        if cached is None or cached.model is not self.model or \
                cached.model_version != self.model._version:
            losses = self.loss
            cached = Objective(self.model, losses, self.loss_weights)
            cached.model_version = self.model._version
            self._objective_cache = cached
        return cached

    def _log_names(self):
        """(metric log names per output, per-output loss names or None)."""
        outs = self.model.output_names
        if len(outs) == 1:
            return [list(self.metric_names)], None
        return ([[f"{o}_{m}" for m in self.metric_names] for o in outs],
                [f"{o}_loss" for o in outs])

    # -- validation -----------------------------------------------------------

    def _check_x(self, x, argname):
        """x as a list of arrays of the model's dtype; finite; model built.

        The scan for NaN/Inf reads all of x (~1.5 ms for 12,000 MNIST
        images), so it runs once per array: fitting again on the same array
        object (``fit(x, y, epochs=1)`` in a loop) skips it. A NaN written into
        that array in place afterwards is still caught, as a non-finite loss
        (NonFiniteError) at the first batch that holds it, before its step;
        so is an Inf, unless a saturating activation (sigmoid, tanh) absorbs
        it first."""
        xs = self.model.prepare_inputs(x, argname=argname)
        for i, arr in enumerate(xs):
            if any(ref() is arr for ref in self._finite_inputs):
                continue
            bad = _first_nonfinite_index(arr, self.model.backend)
            if bad is not None:
                where = argname if len(xs) == 1 else f"{argname}[{self.model.input_names[i]!r}]"
                raise ValueError(f"{where} contains NaN or Inf at index {bad}")
            # Weak references: the Trainer keeps no data set alive, and a freed
            # array's id cannot be mistaken for a new one's.
            self._finite_inputs = [ref for ref in self._finite_inputs if ref() is not None][-3:]
            self._finite_inputs.append(weakref.ref(arr))
        return xs

    def _check_xy(self, x, y, xname="x", yname="y"):
        xs = self._check_x(x, xname)
        return xs, self.objective.prepare_targets(y, xs[0].shape[0], yname, xname)

    # -- steps --------------------------------------------------------------------

    def _forget_step_bounds(self):
        self._step_bounds[0] = 0.0

    def _train_step(self, xs, targets, epoch, batch, epochs, n_batches, next_batch=None):
        """One optimizer step on a batch; ``epoch``/``batch`` are 1-based (for
        messages). Returns (loss, per-output losses, metric values per output,
        whether the step also did the ``next_batch`` gather)."""
        model = self.model
        program = self._program_for(xs, targets)
        lock = model._lock
        acquired = lock.acquire_write()
        try:
            if program is not None:
                return self._program_step(program, xs, targets, epoch, batch, epochs, n_batches,
                                          next_batch)
            return self._plan_step(xs, targets, epoch, batch, epochs, n_batches)
        finally:
            lock.release_write(acquired)

    def _plan_step(self, xs, targets, epoch, batch, epochs, n_batches):
        """The step through the model's training plan, node by node."""
        self._forget_step_bounds()
        model = self.model
        objective = self.objective
        plan = model._plan(xs[0].shape[0], True)
        ys = plan.forward(xs)
        model._last_plan = plan
        data_loss, values, seeds = objective.value_and_seeds(plan.output_runners(), ys, targets,
                                                             model.backend, True)
        total = data_loss + model.regularization_loss()
        if not math.isfinite(total):
            self._raise_nonfinite_loss(total, epoch, batch, epochs, n_batches)
        # Metrics before backward: they only read y_pred.
        metric_values = [[fn(t, y) for fn in self.metric_fns] for t, y in zip(targets, ys)]
        plan.backward(seeds, objective.fused_indices, (), "trainable")
        params = list(model.named_parameters())
        bad_key = self.optimizer.apply_step(params, check=self.check_finite)
        if bad_key is not None:
            self._raise_refused_step(params, bad_key, epoch, batch, epochs, n_batches)
        return total, values, metric_values, False

    def _program_for(self, xs, targets):
        """The step program for this batch (C backend, step.py), made once per
        batch size and kept while valid; None when the backend has none."""
        model = self.model
        if not step_module.supported(model.backend):
            return None
        n = xs[0].shape[0]
        kinds = tuple(_target_kind(t, model.dtype) for t in targets)
        key = (n, kinds)
        program = self._programs.get(key)
        if program is not None and program.optimizer is self.optimizer and \
                program.objective is self.objective and program.still_valid():
            return program
        if len(self._programs) >= 4:          # batch sizes come and go
            self._programs.clear()
        plan = model._plan(n, True)
        program = step_module.StepProgram(plan, self.objective, self.optimizer, self.metric_fns,
                                          kinds)
        program.prepare(list(model.named_parameters()))
        self._programs[key] = program
        self._forget_step_bounds()
        return program

    def _program_step(self, program, xs, targets, epoch, batch, epochs, n_batches, next_batch):
        """The step as a step program: the same kernels, the same checks."""
        mode = "check_apply" if self.check_finite else "apply"
        status, total, bad_key, parts, metric_values = program.step(
            xs, targets, mode, next_batch, self._step_bounds)
        if status == 1:
            self._raise_nonfinite_loss(total, epoch, batch, epochs, n_batches)
        if status == 2:
            self._raise_refused_step(program._items, bad_key, epoch, batch, epochs, n_batches)
        return total, parts, metric_values, next_batch is not None

    @staticmethod
    def _raise_nonfinite_loss(total, epoch, batch, epochs, n_batches):
        where = f"at epoch {epoch}/{epochs}, batch {batch}/{n_batches}"
        raise NonFiniteError(f"loss is {total} {where}; the step was not applied "
                             f"(try a lower learning rate)", epoch, batch)

    @staticmethod
    def _raise_refused_step(params, bad_key, epoch, batch, epochs, n_batches):
        where = f"at epoch {epoch}/{epochs}, batch {batch}/{n_batches}"
        grad = next(g for key, _, g in params if key == bad_key)
        if not np.isfinite(grad).all():
            raise NonFiniteError(f"gradient of {bad_key} contains NaN or Inf {where}; "
                                 f"the step was not applied", epoch, batch)
        raise NonFiniteError(f"parameter {bad_key} would become NaN or Inf with the "
                             f"optimizer step {where}; the step was not applied and "
                             f"the weights are unchanged (try a lower learning rate)",
                             epoch, batch)

    def _evaluate_arrays(self, xs, targets, batch_size):
        """Mean loss and metrics over checked arrays, on this thread's private
        inference plans (safe beside predict in other threads and a fit)."""
        model = self.model
        objective = self.objective
        n = xs[0].shape[0]
        loss_sum = 0.0
        part_sums = [0.0] * len(targets)
        metric_sums = [[0.0] * len(self.metric_fns) for _ in targets]
        lock = model._lock
        acquired = lock.acquire_read()
        try:
            for start in range(0, n, batch_size):
                xb = [x[start:start + batch_size] for x in xs]
                tb = [t[start:start + batch_size] for t in targets]
                plan = model._private_plan(xb[0].shape[0])
                ys = plan.forward(xb)
                value, values, _ = objective.value_and_seeds(plan.output_runners(), ys, tb,
                                                             model.backend, False)
                nb = xb[0].shape[0]
                loss_sum += value * nb
                for k, v in enumerate(values):
                    part_sums[k] += v * nb
                for k, (t, y) in enumerate(zip(tb, ys)):
                    for i, fn in enumerate(self.metric_fns):
                        metric_sums[k][i] += fn(t, y) * nb
            reg = model.regularization_loss()
        finally:
            lock.release_read(acquired)
        logs = {"loss": loss_sum / n + reg}
        metric_names, loss_names = self._log_names()
        if loss_names:
            logs.update((name, s / n) for name, s in zip(loss_names, part_sums))
        for names, sums in zip(metric_names, metric_sums):
            logs.update((name, s / n) for name, s in zip(names, sums))
        return logs

    # -- public API -----------------------------------------------------------------

    def fit(self, x, y, epochs=1, batch_size=32, validation_data=None, validation_split=0.0,
            shuffle=True, verbose=1, seed=None, initial_epoch=0):
        """Train for ``epochs`` passes over (x, y); returns a :class:`History`.

        ``x``: an array, or for a model of several inputs a list (input order)
        or a dict keyed by input name; ``y`` likewise per output.
        ``validation_data`` is an (x_val, y_val) pair; otherwise
        ``validation_split`` holds out that fraction of the *last* samples
        (before shuffling). ``seed`` fixes the shuffling order (default: derived
        from the model's seed). ``verbose``: 0 silent; 1 a per-batch progress
        bar on a terminal, one line per epoch otherwise; 2 one line per epoch
        (see :class:`callbacks.ProgressBar`, added unless ``callbacks`` has one).

        ``initial_epoch`` resumes a run (as in Keras, ``epochs`` is then the
        epoch to stop at, not a count): epochs ``initial_epoch`` to
        ``epochs - 1`` (0-based) are trained, with the shuffling order those
        epochs would have had in one uninterrupted run. With the model and
        optimizer from a checkpoint (``ModelCheckpoint`` saves the optimizer
        state and the epoch reached)::

            model, optimizer, extra = rp.load_model(path, return_optimizer=True)
            trainer = rp.Trainer(model, "categorical_crossentropy", optimizer)
            trainer.fit(x, y, epochs=10, initial_epoch=extra["epoch"])

        continues exactly where the saved run stopped.

        One fit at a time per model: a fit started while another thread's fit
        of the same model runs raises RuntimeError. ``predict`` from other
        threads is safe meanwhile.
        """
        if verbose not in (0, 1, 2):
            raise ValueError(f"verbose must be 0, 1 or 2, got {verbose!r}")
        epochs = _check_positive_int(epochs, "epochs", minimum=0)
        initial_epoch = _check_positive_int(initial_epoch, "initial_epoch", minimum=0)
        if initial_epoch > epochs:
            raise ValueError(f"initial_epoch ({initial_epoch}) must not exceed epochs ({epochs}): "
                             f"epochs is the epoch to stop at when resuming")
        batch_size = _check_positive_int(batch_size, "batch_size")
        nested = self.model._lock.begin_fit(self.model.name)
        try:
            return self._fit(x, y, epochs, batch_size, validation_data, validation_split,
                             shuffle, verbose, seed, initial_epoch)
        finally:
            self.model._lock.end_fit(nested)

    def _fit(self, x, y, epochs, batch_size, validation_data, validation_split, shuffle,
             verbose, seed, initial_epoch):
        xs, targets = self._check_xy(x, y)
        val = None
        if validation_data is not None:
            if not isinstance(validation_data, (tuple, list)) or len(validation_data) != 2:
                raise ValueError("validation_data must be an (x_val, y_val) pair")
            val = self._check_xy(validation_data[0], validation_data[1],
                                 "validation_data x", "validation_data y")
        elif validation_split:
            split = float(validation_split)
            if not 0.0 < split < 1.0:
                raise ValueError(f"validation_split must be in [0, 1), got {validation_split!r}")
            n_all = xs[0].shape[0]
            n_val = int(n_all * split)
            if n_val == 0 or n_val == n_all:
                raise ValueError(f"validation_split={validation_split} of {n_all} samples "
                                 f"leaves an empty training or validation set")
            val = ([a[-n_val:] for a in xs], [t[-n_val:] for t in targets])
            xs, targets = [a[:-n_val] for a in xs], [t[:-n_val] for t in targets]

        if seed is None and self.model.seed is not None:
            seed = self.model.seed
        rng = np.random.default_rng(seed)
        self.optimizer.backend = self.model.backend

        history = History()
        n = xs[0].shape[0]
        history.params = {"epochs": epochs, "batch_size": batch_size, "samples": n}
        callbacks = self.callbacks + [history]
        if verbose and not any(isinstance(cb, ProgressBar) for cb in self.callbacks):
            callbacks.insert(0, ProgressBar(verbose=verbose))
        for cb in callbacks:
            cb.set_trainer(self)
        self.history = history
        self.stop_training = False
        self._programs = {}
        self._forget_step_bounds()
        # The callbacks whose on_batch_end may write the weights or the
        # optimizer's state between two steps: any but the built-in ones
        # known not to.
        batch_end_writers = [cb for cb in callbacks
                             if type(cb).on_batch_end not in _READ_ONLY_BATCH_END]
        metric_names, loss_names = self._log_names()

        n_batches = (n + batch_size - 1) // batch_size
        # Shuffled batches are gathered into reused buffers (by the backend:
        # in C, threaded) rather than a fresh array per batch. Two per input:
        # a step program copies the next batch into one while it trains on
        # the other.
        backend = self.model.backend
        batch_buffers = None
        if shuffle and hasattr(backend, "gather_rows") and all(a.flags.c_contiguous for a in xs):
            batch_buffers = []
            for a in xs:
                shape = (min(batch_size, n),) + a.shape[1:]
                batch_buffers.append((aligned.empty(shape, a.dtype), aligned.empty(shape, a.dtype)))
        if shuffle:
            # Draw (and drop) the orders of the epochs already trained, so a
            # resumed run sees the same order as an uninterrupted one.
            for _ in range(initial_epoch):
                rng.permutation(n)
        for cb in callbacks:
            cb.on_train_begin({})
        try:
            for epoch in range(initial_epoch, epochs):
                for cb in callbacks:
                    cb.on_epoch_begin(epoch, {})
                self._forget_step_bounds()
                order = rng.permutation(n) if shuffle else None
                loss_sum = 0.0
                part_sums = [0.0] * len(targets)
                metric_sums = [[0.0] * len(self.metric_fns) for _ in targets]
                seen = 0
                gathered = False   # whether the last step copied this batch already
                # Overflow is detected explicitly (NonFiniteError), so NumPy's
                # floating-point warnings would only be noise in the batch loop.
                with np.errstate(over="ignore", invalid="ignore", divide="ignore",
                                 under="ignore"):
                    for b in range(n_batches):
                        lo, hi = b * batch_size, min((b + 1) * batch_size, n)
                        next_batch = None
                        if order is not None:
                            idx = order[lo:hi]
                            if batch_buffers is not None:
                                xb = [buffers[b % 2][:hi - lo] for buffers in batch_buffers]
                                if not gathered:
                                    for a, out in zip(xs, xb):
                                        backend.gather_rows(a, idx, out)
                                if hi < n:
                                    next_hi = min(hi + batch_size, n)
                                    next_index = order[hi:next_hi]
                                    next_batch = [(a, next_index,
                                                   buffers[(b + 1) % 2][:next_hi - hi])
                                                  for a, buffers in zip(xs, batch_buffers)]
                                    if len(next_batch) == 1:
                                        next_batch = next_batch[0]
                            else:
                                xb = [a[idx] for a in xs]
                            tb = [t[idx] for t in targets]
                        else:
                            xb, tb = [a[lo:hi] for a in xs], [t[lo:hi] for t in targets]
                        total, parts, metric_values, gathered = self._train_step(
                            xb, tb, epoch + 1, b + 1, epochs, n_batches, next_batch)
                        nb = hi - lo
                        seen += nb
                        loss_sum += total * nb
                        for k, v in enumerate(parts):
                            part_sums[k] += v * nb
                        for k, values in enumerate(metric_values):
                            for i, v in enumerate(values):
                                metric_sums[k][i] += v * nb
                        batch_logs = {"loss": total, "size": nb}
                        if loss_names:
                            batch_logs.update(zip(loss_names, parts))
                        for names, values in zip(metric_names, metric_values):
                            batch_logs.update(zip(names, values))
                        for cb in callbacks:
                            cb.on_batch_end(b, batch_logs)
                        if batch_end_writers:
                            self._forget_step_bounds()
                        if self.stop_training:
                            break

                logs = {"loss": loss_sum / seen}
                if loss_names:
                    logs.update((name, s / seen) for name, s in zip(loss_names, part_sums))
                for names, sums in zip(metric_names, metric_sums):
                    logs.update((name, s / seen) for name, s in zip(names, sums))
                if val is not None:
                    val_logs = self._evaluate_arrays(val[0], val[1], max(batch_size, 256))
                    logs.update({f"val_{k}": v for k, v in val_logs.items()})
                for cb in callbacks:
                    cb.on_epoch_end(epoch, logs)
                if self.stop_training:
                    break
        except BaseException:
            # An error (NonFiniteError, KeyboardInterrupt, ...) ends training
            # mid-epoch: let callbacks tidy up (the progress bar ends its line)
            # before the exception propagates.
            for cb in callbacks:
                cb.on_train_abort()
            raise
        for cb in callbacks:
            cb.on_train_end({})
        return history

    def evaluate(self, x, y, batch_size=256):
        """Mean loss (including regularisation) and metrics over (x, y), in batches.

        Safe from several threads, and beside a fit in another thread."""
        batch_size = _check_positive_int(batch_size, "batch_size")
        xs, targets = self._check_xy(x, y)
        return self._evaluate_arrays(xs, targets, batch_size)

    def predict(self, x, batch_size=None):
        """Model output for x (see Model.predict)."""
        return self.model.predict(x, batch_size=batch_size)
