"""Training callbacks.

The Trainer calls, in order: ``on_train_begin(logs)``, then per epoch
``on_epoch_begin(epoch, logs)``, ``on_batch_end(batch, logs)`` after every
optimizer step and ``on_epoch_end(epoch, logs)`` with the epoch's metrics
("loss", "accuracy", "val_loss", ...), and finally ``on_train_end(logs)``.
Epochs and batches are 0-based here. A callback stops training by setting
``self.trainer.stop_training = True``.
"""
import csv
import inspect
import math
import os
import sys
import time
import warnings

import numpy as np


class Callback:
    """Base class; ``self.trainer`` and ``self.model`` are set before training starts."""

    def __init__(self):
        self.trainer = None
        self.model = None

    def set_trainer(self, trainer):
        self.trainer = trainer
        self.model = trainer.model

    def on_train_begin(self, logs=None):
        pass

    def on_train_end(self, logs=None):
        pass

    def on_epoch_begin(self, epoch, logs=None):
        pass

    def on_epoch_end(self, epoch, logs=None):
        pass

    def on_batch_end(self, batch, logs=None):
        pass

    def on_train_abort(self):
        """Training is ending with an exception, which propagates after this call."""
        pass


class History(Callback):
    """Records the epoch logs: ``history[key]`` is a per-epoch list; ``epoch`` the epoch indices."""

    def __init__(self):
        super().__init__()
        self.history = {}
        self.epoch = []
        self.params = {}

    def on_train_begin(self, logs=None):
        self.history = {}
        self.epoch = []

    def on_epoch_end(self, epoch, logs=None):
        self.epoch.append(epoch)
        for key, value in (logs or {}).items():
            self.history.setdefault(key, []).append(value)

    def __repr__(self):
        return f"<History epochs={len(self.epoch)} keys={sorted(self.history)}>"


def _format_duration(seconds):
    """37 -> "37s", 125 -> "2:05", 3725 -> "1:02:05"."""
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}:{seconds:02d}"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{seconds:02d}"


class ProgressBar(Callback):
    """Training progress: loss, metrics, samples/s and ETA.

    ``Trainer.fit(verbose=1)`` adds one (unless ``callbacks`` already holds a
    ProgressBar); ``verbose=0`` adds none.

    * ``verbose=1`` on a terminal (``stream.isatty()``): a bar redrawn in
      place after each batch (at most every ``min_interval`` seconds, and
      always after the last batch)::

          Epoch 2/10  35/47 [=====>..] - ETA 1s - loss: 0.4213 - accuracy: 0.8512 - 9,870 samples/s

      where loss and metrics are the running means over the epoch so far;
      then, at the end of the epoch, the same line completed with the
      epoch's logs (validation included) and the epoch's duration.
    * ``verbose=1`` when the stream is not a terminal (a log file, a pipe),
      and ``verbose=2`` always: one line per epoch and nothing per batch::

          Epoch 2/10 - loss: 0.4102 - accuracy: 0.8550 - val_loss: 0.4400 - 9,870 samples/s - 3.81s

    samples/s counts training samples over the time spent on training
    batches (validation excluded); the duration includes validation.
    ``stream`` defaults to ``sys.stdout`` as it is when training starts.
    """

    def __init__(self, verbose=1, stream=None, width=30, min_interval=0.05):
        super().__init__()
        if verbose not in (1, 2):
            raise ValueError(f"ProgressBar: verbose must be 1 or 2, got {verbose!r}")
        if isinstance(width, bool) or not isinstance(width, int) or width < 1:
            raise ValueError(f"ProgressBar: width must be an integer >= 1, got {width!r}")
        min_interval = float(min_interval)
        if not min_interval >= 0:
            raise ValueError(f"ProgressBar: min_interval must be >= 0, got {min_interval!r}")
        self.verbose = verbose
        self.stream = stream
        self.width = width
        self.min_interval = min_interval
        self._out = None
        self._live = False
        self._line_open = False
        self._epochs = None
        self._n_batches = None

    def on_train_begin(self, logs=None):
        self._out = self.stream if self.stream is not None else sys.stdout
        isatty = getattr(self._out, "isatty", None)
        self._live = self.verbose == 1 and callable(isatty) and bool(isatty())
        # Totals from the Trainer's History parameters (absent outside fit: no bar, no ETA).
        history = getattr(self.trainer, "history", None)
        params = getattr(history, "params", None) or {}
        self._epochs = params.get("epochs")
        samples, batch_size = params.get("samples"), params.get("batch_size")
        self._n_batches = (-(-samples // batch_size) if samples and batch_size else None)

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch
        self._start = time.perf_counter()
        self._train_end = self._start
        self._last_draw = -math.inf
        self._seen = 0
        self._batches = 0
        self._sums = {}
        self._width_drawn = 0

    def on_batch_end(self, batch, logs=None):
        logs = logs or {}
        size = logs.get("size", 1)
        for key, value in logs.items():
            if key != "size":
                self._sums[key] = self._sums.get(key, 0.0) + value * size
        self._seen += size
        self._batches = batch + 1
        now = time.perf_counter()
        self._train_end = now
        last = self._n_batches is not None and self._batches >= self._n_batches
        if self._live and (last or now - self._last_draw >= self.min_interval):
            self._last_draw = now
            running = {k: v / self._seen for k, v in self._sums.items()}
            eta = None
            if self._n_batches is not None:
                per_batch = (now - self._start) / self._batches
                eta = per_batch * max(self._n_batches - self._batches, 0)
            rate = self._seen / max(now - self._start, 1e-12)
            self._redraw(self._bar_prefix() + self._format_logs(running, eta=eta)
                         + f" - {rate:,.0f} samples/s")

    def on_epoch_end(self, epoch, logs=None):
        train_time = max(self._train_end - self._start, 1e-12)
        elapsed = time.perf_counter() - self._start
        tail = (self._format_logs(logs or {}) + f" - {self._seen / train_time:,.0f} samples/s"
                + f" - {elapsed:.2f}s")
        if self._live:
            self._redraw(self._bar_prefix() + tail)
            self._out.write("\n")
            self._line_open = False
        else:
            self._out.write(self._epoch_label() + tail + "\n")
        self._out.flush()

    # -- formatting -------------------------------------------------------------------

    def _epoch_label(self):
        total = "?" if self._epochs is None else self._epochs
        return f"Epoch {self._epoch + 1}/{total}"

    def _bar_prefix(self):
        """"Epoch 2/10  35/47 [=====>....]" (no bar when the batch count is unknown)."""
        if self._n_batches is None:
            return f"{self._epoch_label()}  {self._batches}"
        total = self._n_batches
        digits = len(str(total))
        done = min(self._batches, total)
        filled = self.width * done // total
        if done < total:
            bar = "=" * max(filled - 1, 0) + ">" + "." * (self.width - max(filled, 1))
        else:
            bar = "=" * self.width
        return f"{self._epoch_label()}  {done:>{digits}}/{total} [{bar}]"

    def _format_logs(self, logs, eta=None):
        parts = [] if eta is None else [f"ETA {_format_duration(eta)}"]
        parts += [f"{key}: {value:.4f}" for key, value in logs.items()]
        return "".join(f" - {p}" for p in parts)

    def on_train_abort(self):
        # A bar drawn in place has no newline yet: end it so the traceback or
        # the caller's next output starts on a line of its own.
        if self._live and self._line_open:
            self._out.write("\n")
            self._out.flush()
            self._line_open = False

    def _redraw(self, line):
        # Carriage return, then spaces over whatever the previous, longer line left.
        pad = max(self._width_drawn - len(line), 0)
        self._out.write("\r" + line + " " * pad)
        self._out.flush()
        self._width_drawn = len(line)
        self._line_open = True


class EarlyStopping(Callback):
    """Stop when ``monitor`` has not improved for ``patience`` epochs.

    An epoch improves when the monitored value is better than the best so
    far by more than ``min_delta``. ``mode`` is "min", "max" or "auto"
    ("max" for names containing "acc", "min" otherwise). ``baseline`` (a
    number, optional) is the value to beat: the best starts there, so an
    epoch only counts as an improvement once it does better than the
    baseline, and training stops after ``patience`` epochs that do not (as in
    Keras). With ``restore_best_weights=True`` the weights of the best epoch
    are put back at the end of training. After training, ``stopped_epoch`` is
    the (0-based) epoch at which training was stopped, or None, and
    ``best_epoch`` the epoch of the best value (None when the baseline was
    never beaten).
    """

    def __init__(self, monitor="val_loss", patience=0, min_delta=0.0, mode="auto",
                 restore_best_weights=False, baseline=None):
        super().__init__()
        if isinstance(patience, bool) or not isinstance(patience, int) or patience < 0:
            raise ValueError(f"patience must be an integer >= 0, got {patience!r}")
        if mode not in ("auto", "min", "max"):
            raise ValueError(f"mode must be 'auto', 'min' or 'max', got {mode!r}")
        min_delta = float(min_delta)
        if not math.isfinite(min_delta):
            raise ValueError(f"min_delta must be finite, got {min_delta!r}")
        if baseline is not None:
            baseline = _finite_number(baseline, "EarlyStopping: baseline")
        self.monitor = monitor
        self.patience = patience
        self.min_delta = abs(min_delta)
        if mode == "auto":
            mode = "max" if "acc" in monitor else "min"
        self.mode = mode
        self.restore_best_weights = bool(restore_best_weights)
        self.baseline = baseline
        self._reset()

    def _reset(self):
        self.wait = 0
        if self.baseline is not None:
            self.best = self.baseline
        else:
            self.best = math.inf if self.mode == "min" else -math.inf
        self.best_epoch = None
        self.best_weights = None
        self.stopped_epoch = None
        self._warned = False

    def _improved(self, value):
        if self.mode == "min":
            return value < self.best - self.min_delta
        return value > self.best + self.min_delta

    def on_train_begin(self, logs=None):
        self._reset()

    def on_epoch_end(self, epoch, logs=None):
        value = (logs or {}).get(self.monitor)
        if value is None:
            if not self._warned:
                warnings.warn(f"EarlyStopping: monitored value {self.monitor!r} is not in the "
                              f"logs (available: {sorted(logs or {})}); not stopping",
                              RuntimeWarning, stacklevel=2)
                self._warned = True
            return
        if self._improved(value):
            self.best = value
            self.best_epoch = epoch
            self.wait = 0
            if self.restore_best_weights:
                self.best_weights = self.model.get_weights()
            return
        self.wait += 1
        if self.wait >= self.patience:
            self.stopped_epoch = epoch
            self.trainer.stop_training = True

    def on_train_end(self, logs=None):
        if self.restore_best_weights and self.best_weights is not None:
            self.model.set_weights(self.best_weights)


def _improved(mode, value, best):
    return value < best if mode == "min" else value > best


def _finite_number(value, what):
    if isinstance(value, bool):
        raise TypeError(f"{what} must be a number, got {value!r}")
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise TypeError(f"{what} must be a number, got {value!r}") from None
    if not math.isfinite(value):
        raise ValueError(f"{what} must be finite, got {value!r}")
    return value


class StopAtThreshold(Callback):
    """Stop training once ``monitor`` reaches ``threshold``: the course's "iterate
    until the training loss falls below epsilon".

    ``mode="min"`` (default) stops when the value is <= threshold (a loss),
    ``"max"`` when it is >= threshold (an accuracy); ``"auto"`` picks "max"
    for names containing "acc". Checked after every epoch on the epoch logs,
    or after every batch with ``per_batch=True`` (then ``monitor`` must be a
    batch log: "loss" or a metric). ``stopped_epoch`` / ``stopped_batch``
    (0-based) say where training stopped, None when the threshold was never
    reached.
    """

    def __init__(self, threshold, monitor="loss", mode="min", per_batch=False):
        super().__init__()
        if mode not in ("auto", "min", "max"):
            raise ValueError(f"StopAtThreshold: mode must be 'auto', 'min' or 'max', "
                             f"got {mode!r}")
        if not isinstance(monitor, str) or not monitor:
            raise ValueError(f"StopAtThreshold: monitor must be a log name, got {monitor!r}")
        self.threshold = _finite_number(threshold, "StopAtThreshold: threshold")
        self.monitor = monitor
        self.mode = ("max" if "acc" in monitor else "min") if mode == "auto" else mode
        self.per_batch = bool(per_batch)
        self.stopped_epoch = None
        self.stopped_batch = None
        self._epoch = 0

    def _reached(self, logs):
        value = (logs or {}).get(self.monitor)
        if value is None:
            raise ValueError(f"StopAtThreshold: {self.monitor!r} is not in the logs "
                           f"(available: {sorted(logs or {})})")
        return value <= self.threshold if self.mode == "min" else value >= self.threshold

    def on_train_begin(self, logs=None):
        self.stopped_epoch = None
        self.stopped_batch = None

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def on_batch_end(self, batch, logs=None):
        if self.per_batch and self._reached(logs):
            self.stopped_epoch, self.stopped_batch = self._epoch, batch
            self.trainer.stop_training = True

    def on_epoch_end(self, epoch, logs=None):
        if not self.per_batch and self.stopped_epoch is None and self._reached(logs):
            self.stopped_epoch = epoch
            self.trainer.stop_training = True


class ModelCheckpoint(Callback):
    """Save the model with ``model.save(path)`` at the end of epochs.

    ``path`` may contain ``{epoch}`` (1-based) and log keys, e.g.
    ``"ckpt-{epoch:02d}-{val_loss:.3f}.rpz"``. With ``save_best_only=True``
    only epochs where ``monitor`` improves on the best value so far are saved
    (``mode`` "min", "max" or "auto": "max" for names containing "acc").
    ``saved`` lists the paths written, in order.

    With ``save_optimizer=True`` (the default) each file also holds the
    optimizer's state and ``{"epoch": epochs done}``, so training can resume
    from it: ``rp.load_model(path, return_optimizer=True)`` returns
    ``(model, optimizer, extra)``; see ``Trainer.fit(initial_epoch=...)``.
    """

    def __init__(self, path, monitor="val_loss", save_best_only=False, mode="auto",
                 save_optimizer=True):
        super().__init__()
        self.save_optimizer = bool(save_optimizer)
        if mode not in ("auto", "min", "max"):
            raise ValueError(f"mode must be 'auto', 'min' or 'max', got {mode!r}")
        self.path = str(path)
        self.monitor = monitor
        self.save_best_only = bool(save_best_only)
        self.mode = ("max" if "acc" in monitor else "min") if mode == "auto" else mode
        self.best = None
        self.saved = []
        self._warned = False

    def on_train_begin(self, logs=None):
        self.best = math.inf if self.mode == "min" else -math.inf

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        if self.save_best_only:
            value = logs.get(self.monitor)
            if value is None:
                if not self._warned:
                    warnings.warn(f"ModelCheckpoint: monitored value {self.monitor!r} is not "
                                  f"in the logs (available: {sorted(logs)}); not saving",
                                  RuntimeWarning, stacklevel=2)
                    self._warned = True
                return
            if not _improved(self.mode, value, self.best):
                return
            self.best = value
        path = self.path.format(epoch=epoch + 1, **logs)
        optimizer = self.trainer.optimizer if self.save_optimizer else None
        self.model.save(path, optimizer=optimizer, extra={"epoch": epoch + 1})
        self.saved.append(path)


class LearningRateScheduler(Callback):
    """Set the optimizer's learning rate at the start of every epoch.

    ``schedule(epoch) -> lr`` with 0-based epochs (or ``schedule(epoch, lr)``
    receiving the current rate, when it takes two arguments). This replaces
    the optimizer's ``lr`` (a number or a per-step schedule) with the number
    returned; ``lrs`` records the rates used.
    """

    def __init__(self, schedule):
        super().__init__()
        if not callable(schedule):
            raise TypeError(f"schedule must be callable, got {type(schedule).__name__}")
        self.schedule = schedule
        self.lrs = []
        try:
            self._two_args = len(inspect.signature(schedule).parameters) >= 2
        except (TypeError, ValueError):
            self._two_args = False

    def on_epoch_begin(self, epoch, logs=None):
        optimizer = self.trainer.optimizer
        if self._two_args:
            lr = self.schedule(epoch, optimizer.current_lr())
        else:
            lr = self.schedule(epoch)
        lr = float(lr)
        if not math.isfinite(lr) or lr <= 0:
            raise ValueError(f"LearningRateScheduler: schedule({epoch}) gave {lr!r}; "
                             f"the learning rate must be a positive finite number")
        optimizer.lr = lr
        self.lrs.append(lr)


class CSVLogger(Callback):
    """Write one CSV row per epoch: ``epoch`` (0-based) then the log keys, sorted.

    The header is written with the first epoch's keys; ``append=True`` adds
    rows to an existing file (no second header).
    """

    def __init__(self, path, separator=",", append=False):
        super().__init__()
        self.path = str(path)
        self.separator = separator
        self.append = bool(append)
        self._keys = None
        self._file = None

    def on_train_begin(self, logs=None):
        exists = os.path.exists(self.path) and os.path.getsize(self.path) > 0
        self._file = open(self.path, "a" if self.append else "w", newline="")
        self._keys = None
        self._header_written = self.append and exists

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        if self._keys is None:
            self._keys = sorted(logs)
        writer = csv.writer(self._file, delimiter=self.separator)
        if not self._header_written:
            writer.writerow(["epoch"] + self._keys)
            self._header_written = True
        writer.writerow([epoch] + [logs.get(k, "") for k in self._keys])
        self._file.flush()   # readable while training is still running

    def on_train_end(self, logs=None):
        if self._file is not None:
            self._file.close()
            self._file = None


class TerminateOnNaN(Callback):
    """Stop training as soon as a batch loss is NaN or infinite.

    (The Trainer already refuses a step whose loss or update is not finite,
    raising NonFiniteError; this callback is for losses that become
    non-finite without failing the step, e.g. a custom loss.)
    ``stopped_batch`` is the (0-based) batch that triggered it, or None.
    """

    def __init__(self):
        super().__init__()
        self.stopped_batch = None

    def on_train_begin(self, logs=None):
        self.stopped_batch = None

    def on_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(loss):
            self.stopped_batch = batch
            self.trainer.stop_training = True


def _histogram(values, bins):
    counts, edges = np.histogram(values, bins=bins)
    return {"counts": counts.tolist(), "edges": edges.tolist()}


def _stats(entry, prefix, values, bins):
    entry[f"{prefix}_mean"] = float(np.mean(values))
    entry[f"{prefix}_std"] = float(np.std(values))
    if bins is not None:
        entry[f"{prefix}_hist"] = _histogram(values, bins)


def gradient_statistics(model, loss, x, y, bins=None):
    """Per-layer statistics of one forward/backward pass on (x, y), without a step.

    Returns a list with one dict per layer of ``model.layers`` (a graph's
    layers in topological order; a layer called several times: its first
    call):

    * ``name``;
    * ``act_mean``, ``act_std``: the layer's output h;
    * ``out_grad_mean``, ``out_grad_std``: the back-propagated gradient dL/dh
      of the loss w.r.t. that output (Glorot & Bengio's figure 7; summed over
      every consumer of h where the graph forks);
    * ``grad_mean``, ``grad_std``: the gradient of the loss w.r.t. the layer's
      kernel "W" when it has one, otherwise all its parameters together
      (None for parameter-free layers).

    With ``bins`` (an int) each dict also has ``act_hist``, ``out_grad_hist``
    and ``grad_hist`` (None for parameter-free layers): ``{"counts": [...],
    "edges": [...]}`` histograms over each quantity's own range
    (``numpy.histogram``). The pass runs node by node through the model's
    plan with ``training=False``; the loss gradient is taken at the output
    (at the pre-activation when the loss fuses with the output activation,
    as in training, while the output's own dL/dh is reported w.r.t. the
    output). The layers' ``grads`` are overwritten.
    """
    # Imported here: trainer imports this module.
    from . import losses as losses_module
    from .trainer import _objective

    loss = losses_module.get(loss)
    xs = model.prepare_inputs(x)
    plan = model._plan(xs[0].shape[0], False)
    plan._forward_nodes(xs)
    first_slot = {}
    for step in plan.steps:
        first_slot.setdefault(id(step.layer), step.out)
    slots = [first_slot[id(layer)] for layer in model.layers]
    stats = []
    for layer, slot in zip(model.layers, slots):
        # Statistics right away: layers return reused buffers.
        entry = {"name": layer.name}
        _stats(entry, "act", plan.values[slot], bins)
        stats.append(entry)
    if len(plan.output_slots) != 1:
        raise ValueError(f"gradient_statistics: model {model.name!r} has "
                         f"{len(plan.output_slots)} outputs; it takes one loss for one output")
    out_slot = plan.output_slots[0]
    h = plan.values[out_slot]
    targets = loss.prepare_targets(y, h.shape, h.dtype)
    objective = _objective(model, loss)
    with np.errstate(over="ignore", invalid="ignore", divide="ignore", under="ignore"):
        dh = np.asarray(loss.grad(targets, h), dtype=h.dtype)
        _, _, seeds = objective.value_and_seeds(plan.output_runners(), [h], [targets],
                                                model.backend, True)
        grads = plan.backward(seeds, objective.fused_indices, wanted=slots, params="all")
        for entry, slot in zip(stats, slots):
            g = dh if slot == out_slot else grads[slot]
            _stats(entry, "out_grad", plan._zeros_for(slot) if g is None else g, bins)
    for layer, entry in zip(model.layers, stats):
        if "W" in layer.grads:
            g = layer.grads["W"].ravel()
        elif layer.grads:
            g = np.concatenate([a.ravel() for a in layer.grads.values()])
        else:
            g = None
        entry["grad_mean"] = None if g is None else float(np.mean(g))
        entry["grad_std"] = None if g is None else float(np.std(g))
        if bins is not None:
            entry["grad_hist"] = None if g is None else _histogram(g, bins)
    return stats


class GradientMonitor(Callback):
    """Per-layer activation and gradient statistics, to see vanishing or exploding gradients.

    The statistics come from :func:`gradient_statistics` on a fixed monitoring
    batch ``(x, y)`` (keep it small: it costs one extra forward and backward
    each time): means, standard deviations and ``bins``-bin histograms of
    every layer's output h, of the back-propagated gradient dL/dh and of the
    loss gradient w.r.t. its kernel. Works on chain models (``model.layers``
    run in order).

    Recorded when training starts (the initialisation, which is what Glorot
    & Bengio's figures show) and after every epoch: ``history[i]`` is the
    per-layer list of dicts of the i-th record and ``epochs[i]`` the number
    of epochs completed then (0 for the initial record). ``record(model,
    loss)`` takes one record outside training. ``table(i)`` formats a record
    as text; ``plot(path, i)`` renders it as a PNG when matplotlib is
    installed and returns the numbers otherwise.
    """

    def __init__(self, x, y, bins=30):
        super().__init__()
        if isinstance(bins, bool) or not isinstance(bins, int) or bins < 1:
            raise ValueError(f"GradientMonitor: bins must be an integer >= 1, got {bins!r}")
        self.x = x
        self.y = y
        self.bins = bins
        self.history = []
        self.epochs = []

    def record(self, model, loss, epochs_done=0):
        """Append the statistics of ``model`` with ``loss`` now; returns them."""
        stats = gradient_statistics(model, loss, self.x, self.y, bins=self.bins)
        self.history.append(stats)
        self.epochs.append(epochs_done)
        return stats

    def on_train_begin(self, logs=None):
        self.history = []
        self.epochs = []
        self.record(self.model, self.trainer.loss, 0)

    def on_epoch_end(self, epoch, logs=None):
        self.record(self.model, self.trainer.loss, epoch + 1)

    def table(self, index=-1):
        """A text table of one record (default: the last)."""
        return format_gradient_table(self.history[index])

    def plot(self, path, index=-1):
        """Write a PNG of one record (default: the last) and return ``path``.

        Four panels: the activation histograms of every layer, the
        back-propagated gradient (dL/dh) histograms, the kernel gradient
        histograms, and the three standard deviations per layer on a log
        scale. Without matplotlib nothing is written and the record itself
        (the list of per-layer dicts) is returned, with a RuntimeWarning.
        """
        stats = self.history[index]
        try:
            import matplotlib
            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
        except ImportError:
            warnings.warn("GradientMonitor.plot: matplotlib is not installed; returning the "
                          "statistics instead of writing a PNG", RuntimeWarning, stacklevel=2)
            return stats
        fig, axes = plt.subplots(1, 4, figsize=(20, 4.2))
        for key, ax, title in (("act_hist", axes[0], "activation values h"),
                               ("out_grad_hist", axes[1], "back-propagated gradients dL/dh"),
                               ("grad_hist", axes[2], "kernel gradients dL/dW")):
            for s in stats:
                hist = s.get(key)
                if hist is None:
                    continue
                counts = np.asarray(hist["counts"], dtype=float)
                edges = np.asarray(hist["edges"])
                centres = (edges[:-1] + edges[1:]) / 2
                ax.plot(centres, counts / max(counts.sum(), 1.0), label=s["name"])
            ax.set_title(f"{title} (fraction per bin)")
            ax.legend(fontsize="x-small")
        positions = np.arange(1, len(stats) + 1)
        for key, label in (("act_std", "activation std"), ("out_grad_std", "dL/dh std"),
                           ("grad_std", "kernel-gradient std")):
            values = [np.nan if s.get(key) is None or s[key] <= 0 else s[key] for s in stats]
            axes[3].semilogy(positions, values, "o-", label=label)
        axes[3].set_xlabel("layer (1 = next to the input)")
        axes[3].set_title("per-layer standard deviation")
        axes[3].legend()
        epochs_done = self.epochs[index]
        fig.suptitle("at initialisation" if epochs_done == 0 else f"after epoch {epochs_done}")
        fig.tight_layout()
        fig.savefig(path, dpi=90)
        plt.close(fig)
        return path


def format_gradient_table(stats):
    """Text table of :func:`gradient_statistics` output, one row per layer."""
    lines = [f"{'layer':<16}{'act mean':>12}{'act std':>12}{'dL/dh std':>12}"
             f"{'grad mean':>12}{'grad std':>12}"]
    for s in stats:
        gm = "-" if s["grad_mean"] is None else f"{s['grad_mean']:.3e}"
        gs = "-" if s["grad_std"] is None else f"{s['grad_std']:.3e}"
        hs = "-" if s.get("out_grad_std") is None else f"{s['out_grad_std']:.3e}"
        lines.append(f"{s['name']:<16}{s['act_mean']:>12.4f}{s['act_std']:>12.4f}"
                     f"{hs:>12}{gm:>12}{gs:>12}")
    return "\n".join(lines)
