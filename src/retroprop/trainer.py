"""Trainer: batching, shuffling, epochs, validation, callbacks and History.

One training step is::

    y_pred = model.forward(xb, training=True)
    loss, seed = loss and its gradient (fused softmax + cross-entropy when possible)
    check the loss (plus regularisation) is finite       -> NonFiniteError otherwise
    model.backward(seed)  /  model.backward_from_logits(seed)
    optimizer.apply_step(model.named_parameters())       -> NonFiniteError when refused

``apply_step`` is one backend call over all parameters: it runs the update
rule in a check-only pass first and writes only when no weight or optimizer
state value would become NaN/Inf (a NaN/Inf gradient always fails), so when a
step is refused the weights are exactly those from before it, and no copies
are made. (``check_finite=False`` keeps only the loss check and skips the
check-only pass.)

Fused path: when the last layer's activation is softmax and the loss is
categorical cross-entropy on probabilities, the loss and its gradient
w.r.t. the logits come from the backend's ``softmax_cross_entropy`` and
backprop starts with ``model.backward_from_logits``.

One-call path: for a model of Dense layers with fused hidden activations and
a softmax output trained with categorical cross-entropy, the whole step above
is one backend call (``stack_step.py``): the same kernels, the same checks and
errors, identical weights, without the Python between the kernels.
"""
import math
import weakref

import numpy as np

from . import activations as activations_module
from . import aligned
from . import losses as losses_module
from . import metrics as metrics_module
from . import optim as optim_module
from . import stack_step
from .backend import get_backend
from .callbacks import Callback, History, ProgressBar, TerminateOnNaN

# on_batch_end methods that only read (progress, logs, stop_training): with
# only these, the one-call step's optimizer bounds stay valid across batches.
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
# loss + gradient of a model, shared with gradcheck
# --------------------------------------------------------------------------

def uses_fused_output(model, loss):
    """True when the loss fuses with the model's output activation.

    A loss names the activation it fuses with in ``loss.fused_activation``
    (softmax for categorical cross-entropy, sigmoid for binary cross-entropy,
    both on probabilities). The last layer must have exactly that activation
    (a sigmoid with a slope other than 1 does not qualify) and a
    ``backward_from_logits`` method.
    """
    last = model.layers[-1]
    activation = getattr(last, "activation", None)
    fused_name = getattr(loss, "fused_activation", None)
    return (fused_name is not None
            and isinstance(activation, activations_module.Activation)
            and activation == activations_module.get(fused_name)
            and hasattr(last, "backward_from_logits"))


# The older name, from when softmax + cross-entropy was the only fusion.
uses_fused_softmax = uses_fused_output


def forward_loss(model, loss, x, targets, training=False, with_grad=False, fused=None):
    """Forward x and return (data loss, y_pred, gradient seed or None).

    ``targets`` must come from ``loss.prepare_targets``. With ``with_grad`` the
    seed is dL/dlogits on the fused path and dL/dy_pred otherwise; pass it to
    :func:`backpropagate`. The regularisation penalty is not included.
    ``fused`` is ``uses_fused_output(model, loss)``, worked out here when None
    (a training loop passes it, to decide once and not on every batch).
    """
    y_pred = model.forward(x, training=training)
    backend = model.backend
    if fused is None:
        fused = uses_fused_output(model, loss)
    if fused:
        value, seed = loss.fused_value_and_grad(model.layers[-1], y_pred, targets, backend)
    elif with_grad:
        value, seed = loss.value_and_grad(targets, y_pred, backend)
    else:
        value, seed = loss.value(targets, y_pred), None
    return float(value), y_pred, (seed if with_grad else None)


def backpropagate(model, loss, seed, input_grad=False, fused=None):
    """Backward pass from the seed of :func:`forward_loss`; returns dL/dx (or None)."""
    if fused is None:
        fused = uses_fused_output(model, loss)
    if fused:
        return model.backward_from_logits(seed, input_grad=input_grad)
    return model.backward(seed, input_grad=input_grad)


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


def _check_positive_int(value, argname, minimum=1):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{argname} must be an integer >= {minimum}, got {value!r}")
    return int(value)


class Trainer:
    """Fits a model with a loss and an optimizer.

    Parameters
    ----------
    model : Sequential
    loss : str or Loss ("categorical_crossentropy", "mse", ...)
    optimizer : str or Optimizer
    metrics : iterable of names or callables ``f(y_true, y_pred) -> float``
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
    """

    def __init__(self, model, loss, optimizer, metrics=("accuracy",), callbacks=None,
                 check_finite=True):
        self.model = model
        self.loss = losses_module.get(loss)
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
        self._fused = None      # uses_fused_output, decided once per fit
        self._stack_ok = False  # whether steps may run in one call (stack_step.py), per fit
        self._stack_plans = {}  # batch size -> stack_step.DenseStackPlan
        # The optimizer's bounds between one-call steps (backend dense_stack_step):
        # valid only while nothing but those steps wrote the weights and the
        # optimizer state, so cleared (_forget_step_bounds) at every fit and
        # epoch start, after any other kind of step and after a callback that
        # may write them.
        self._step_bounds = np.zeros(3)
        self._finite_inputs = []  # weak references to arrays already scanned for NaN/Inf
        self.history = None

    # -- validation -----------------------------------------------------------

    def _check_x(self, x, argname):
        """x as an array of the model's dtype; finite; model built.

        The scan for NaN/Inf reads all of x (~1.5 ms for 12,000 MNIST
        images), so it runs once per array: fitting again on the same array
        object (``fit(x, y, epochs=1)`` in a loop) skips it. A NaN written into
        that array in place afterwards is still caught, as a non-finite loss
        (NonFiniteError) at the first batch that holds it, before its step;
        so is an Inf, unless a saturating activation (sigmoid, tanh) absorbs
        it first."""
        x = self.model.prepare_input(x, argname=argname)
        if any(ref() is x for ref in self._finite_inputs):
            return x
        bad = _first_nonfinite_index(x, self.model.backend)
        if bad is not None:
            raise ValueError(f"{argname} contains NaN or Inf at index {bad}")
        # Weak references: the Trainer keeps no data set alive, and a freed
        # array's id cannot be mistaken for a new one's.
        self._finite_inputs = [ref for ref in self._finite_inputs if ref() is not None][-3:]
        self._finite_inputs.append(weakref.ref(x))
        return x

    def _check_xy(self, x, y, xname="x", yname="y"):
        x = self._check_x(x, xname)
        y_arr = np.asarray(y)
        if y_arr.ndim == 0:
            raise ValueError(f"{yname} must have one entry per sample, got a scalar")
        if y_arr.shape[0] != x.shape[0]:
            raise ValueError(f"{xname} and {yname} have different lengths: "
                             f"{x.shape[0]} samples in {xname}, {y_arr.shape[0]} in {yname}")
        # Check that x fits the model before the targets are checked against its output.
        self.model.layers[0].check_input(x)
        pred_shape = (x.shape[0],) + tuple(self.model.output_shape)
        targets = self.loss.prepare_targets(y_arr, pred_shape, self.model.dtype, argname=yname)
        return x, targets

    # -- steps --------------------------------------------------------------------

    def _forget_step_bounds(self):
        self._step_bounds[0] = 0.0

    def _train_step(self, xb, yb, epoch, batch, epochs, n_batches, next_batch=None):
        """One optimizer step on a batch; ``epoch``/``batch`` are 1-based (for
        messages). Returns (loss, metric values, whether the step also did the
        ``next_batch`` gather, an (x, index, out) triple: only a step in one
        backend call does)."""
        plan = self._stack_plan(xb)
        if plan is not None:
            return self._stack_step(plan, xb, yb, epoch, batch, epochs, n_batches, next_batch)
        self._forget_step_bounds()
        model = self.model
        fused = self._fused if self._fused is not None else uses_fused_output(model, self.loss)
        loss_value, y_pred, seed = forward_loss(model, self.loss, xb, yb, training=True,
                                                with_grad=True, fused=fused)
        total = loss_value + model.regularization_loss()
        if not math.isfinite(total):
            self._raise_nonfinite_loss(total, epoch, batch, epochs, n_batches)
        # Metrics before backward: they only read y_pred.
        metric_values = [fn(yb, y_pred) for fn in self.metric_fns]
        backpropagate(model, self.loss, seed, input_grad=False, fused=fused)
        params = list(model.named_parameters())
        bad_key = self.optimizer.apply_step(params, check=self.check_finite)
        if bad_key is not None:
            self._raise_refused_step(params, bad_key, epoch, batch, epochs, n_batches)
        return total, metric_values, False

    def _stack_plan(self, xb):
        """The one-call step's plan for this batch (stack_step.py), or None when
        the step goes layer by layer."""
        if not self._stack_ok or not (type(xb) is np.ndarray and xb.ndim == 2
                                      and xb.dtype is self.model.dtype
                                      and xb.flags.c_contiguous):
            return None
        n = xb.shape[0]
        plan = self._stack_plans.get(n)
        if plan is not None and plan.optimizer is self.optimizer and plan.still_valid():
            return plan
        backend = self.model.backend
        if not stack_step.qualifies(self.model, self.loss, backend):
            self._stack_ok = False
            return None
        plan = self._stack_plans[n] = stack_step.DenseStackPlan(self.model, self.optimizer,
                                                                backend, n)
        self._forget_step_bounds()
        return plan

    def _stack_step(self, plan, xb, yb, epoch, batch, epochs, n_batches, next_batch):
        """_train_step in one backend call: the same kernels, the same checks."""
        status, total, bad_key = plan.step(xb, yb, "check_apply" if self.check_finite else "apply",
                                           next_batch, self._step_bounds)
        if status == 1:
            self._raise_nonfinite_loss(total, epoch, batch, epochs, n_batches)
        if status == 2:
            self._raise_refused_step(plan.items, bad_key, epoch, batch, epochs, n_batches)
        y_pred = plan.outputs[-1]
        return total, [fn(yb, y_pred) for fn in self.metric_fns], next_batch is not None

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

    def _evaluate_arrays(self, x, targets, batch_size):
        n = x.shape[0]
        loss_sum = 0.0
        metric_sums = [0.0] * len(self.metric_fns)
        for start in range(0, n, batch_size):
            xb = x[start:start + batch_size]
            tb = targets[start:start + batch_size]
            value, y_pred, _ = forward_loss(self.model, self.loss, xb, tb, training=False)
            nb = xb.shape[0]
            loss_sum += value * nb
            for i, fn in enumerate(self.metric_fns):
                metric_sums[i] += fn(tb, y_pred) * nb
        logs = {"loss": loss_sum / n + self.model.regularization_loss()}
        for name, s in zip(self.metric_names, metric_sums):
            logs[name] = s / n
        return logs

    # -- public API -----------------------------------------------------------------

    def fit(self, x, y, epochs=1, batch_size=32, validation_data=None, validation_split=0.0,
            shuffle=True, verbose=1, seed=None, initial_epoch=0):
        """Train for ``epochs`` passes over (x, y); returns a :class:`History`.

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
        """
        if verbose not in (0, 1, 2):
            raise ValueError(f"verbose must be 0, 1 or 2, got {verbose!r}")
        epochs = _check_positive_int(epochs, "epochs", minimum=0)
        initial_epoch = _check_positive_int(initial_epoch, "initial_epoch", minimum=0)
        if initial_epoch > epochs:
            raise ValueError(f"initial_epoch ({initial_epoch}) must not exceed epochs ({epochs}): "
                             f"epochs is the epoch to stop at when resuming")
        batch_size = _check_positive_int(batch_size, "batch_size")
        x, targets = self._check_xy(x, y)

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
            n_val = int(x.shape[0] * split)
            if n_val == 0 or n_val == x.shape[0]:
                raise ValueError(f"validation_split={validation_split} of {x.shape[0]} samples "
                                 f"leaves an empty training or validation set")
            val = (x[-n_val:], targets[-n_val:])
            x, targets = x[:-n_val], targets[:-n_val]

        if seed is None and self.model.seed is not None:
            seed = self.model.seed
        rng = np.random.default_rng(seed)
        self.optimizer.backend = self.model.backend

        history = History()
        history.params = {"epochs": epochs, "batch_size": batch_size, "samples": x.shape[0]}
        callbacks = self.callbacks + [history]
        if verbose and not any(isinstance(cb, ProgressBar) for cb in self.callbacks):
            callbacks.insert(0, ProgressBar(verbose=verbose))
        for cb in callbacks:
            cb.set_trainer(self)
        self.history = history
        self.stop_training = False
        self._fused = uses_fused_output(self.model, self.loss)
        self._stack_ok = self._fused and stack_step.qualifies(self.model, self.loss,
                                                             self.model.backend)
        self._stack_plans = {}
        self._forget_step_bounds()
        # The callbacks whose on_batch_end may write the weights or the
        # optimizer's state between two steps: any but the built-in ones
        # known not to.
        batch_end_writers = [cb for cb in callbacks
                             if type(cb).on_batch_end not in _READ_ONLY_BATCH_END]

        n = x.shape[0]
        n_batches = (n + batch_size - 1) // batch_size
        # Shuffled batches are gathered into reused buffers (by the backend:
        # in C, threaded) rather than a fresh array per batch. Two of them: a
        # step in one backend call (stack_step.py) copies the next batch into
        # one while it trains on the other.
        backend = self.model.backend
        batch_buffers = None
        if shuffle and x.flags.c_contiguous and hasattr(backend, "gather_rows"):
            shape = (min(batch_size, n),) + x.shape[1:]
            batch_buffers = (aligned.empty(shape, x.dtype), aligned.empty(shape, x.dtype))
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
                metric_sums = [0.0] * len(self.metric_fns)
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
                                xb = batch_buffers[b % 2][:hi - lo]
                                if not gathered:
                                    backend.gather_rows(x, idx, xb)
                                if hi < n:
                                    next_hi = min(hi + batch_size, n)
                                    next_batch = (x, order[hi:next_hi],
                                                  batch_buffers[(b + 1) % 2][:next_hi - hi])
                            else:
                                xb = x[idx]
                            tb = targets[idx]
                        else:
                            xb, tb = x[lo:hi], targets[lo:hi]
                        total, metric_values, gathered = self._train_step(
                            xb, tb, epoch + 1, b + 1, epochs, n_batches, next_batch)
                        nb = hi - lo
                        seen += nb
                        loss_sum += total * nb
                        for i, v in enumerate(metric_values):
                            metric_sums[i] += v * nb
                        batch_logs = {"loss": total, "size": nb}
                        batch_logs.update(zip(self.metric_names, metric_values))
                        for cb in callbacks:
                            cb.on_batch_end(b, batch_logs)
                        if batch_end_writers:
                            self._forget_step_bounds()
                        if self.stop_training:
                            break

                logs = {"loss": loss_sum / seen}
                for name, s in zip(self.metric_names, metric_sums):
                    logs[name] = s / seen
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
        """Mean loss (including regularisation) and metrics over (x, y), in batches."""
        batch_size = _check_positive_int(batch_size, "batch_size")
        x, targets = self._check_xy(x, y)
        return self._evaluate_arrays(x, targets, batch_size)

    def predict(self, x, batch_size=None):
        """Model output for x (see Sequential.predict)."""
        return self.model.predict(x, batch_size=batch_size)
