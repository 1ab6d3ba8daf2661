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


class EarlyStopping(Callback):
    """Stop when ``monitor`` has not improved for ``patience`` epochs.

    An epoch improves when the monitored value is better than the best so
    far by more than ``min_delta``. ``mode`` is "min", "max" or "auto"
    ("max" for names containing "acc", "min" otherwise). With
    ``restore_best_weights=True`` the weights of the best epoch are put back
    at the end of training. After training, ``stopped_epoch`` is the
    (0-based) epoch at which training was stopped, or None, and
    ``best_epoch`` the epoch of the best value.
    """

    def __init__(self, monitor="val_loss", patience=0, min_delta=0.0, mode="auto",
                 restore_best_weights=False):
        super().__init__()
        if isinstance(patience, bool) or not isinstance(patience, int) or patience < 0:
            raise ValueError(f"patience must be an integer >= 0, got {patience!r}")
        if mode not in ("auto", "min", "max"):
            raise ValueError(f"mode must be 'auto', 'min' or 'max', got {mode!r}")
        min_delta = float(min_delta)
        if not math.isfinite(min_delta):
            raise ValueError(f"min_delta must be finite, got {min_delta!r}")
        self.monitor = monitor
        self.patience = patience
        self.min_delta = abs(min_delta)
        if mode == "auto":
            mode = "max" if "acc" in monitor else "min"
        self.mode = mode
        self.restore_best_weights = bool(restore_best_weights)
        self._reset()

    def _reset(self):
        self.wait = 0
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


def gradient_statistics(model, loss, x, y):
    """Per-layer statistics of one forward/backward pass on (x, y), without a step.

    Returns a list with one dict per layer: ``name``, ``act_mean`` and
    ``act_std`` (the layer's output), ``grad_mean`` and ``grad_std`` (the
    gradient of the loss w.r.t. the layer's kernel "W" when it has one,
    otherwise all its parameters together; None for parameter-free layers).
    Layers run with ``training=False``; the layers' ``grads`` are overwritten.
    """
    # Imported here: trainer imports this module.
    from . import losses as losses_module
    from .trainer import backpropagate, forward_loss

    loss = losses_module.get(loss)
    x = model.prepare_input(x)
    stats = []
    h = x
    for layer in model.layers:
        # Statistics right away: layers return reused buffers.
        h = layer.forward(h, training=False)
        stats.append({"name": layer.name, "act_mean": float(np.mean(h)),
                      "act_std": float(np.std(h))})
    targets = loss.prepare_targets(y, h.shape, h.dtype)
    _, _, seed = forward_loss(model, loss, x, targets, training=False, with_grad=True)
    backpropagate(model, loss, seed, input_grad=False)
    for layer, entry in zip(model.layers, stats):
        if "W" in layer.grads:
            g = layer.grads["W"].ravel()
        elif layer.grads:
            g = np.concatenate([a.ravel() for a in layer.grads.values()])
        else:
            g = None
        entry["grad_mean"] = None if g is None else float(np.mean(g))
        entry["grad_std"] = None if g is None else float(np.std(g))
    return stats


class GradientMonitor(Callback):
    """Record per-layer activation and gradient statistics at the end of every epoch.

    The statistics come from :func:`gradient_statistics` on a fixed monitoring
    batch ``(x, y)`` (keep it small: it costs one extra forward and backward
    per epoch). ``history`` is a list, one entry per epoch, of the per-layer
    dicts; ``table(epoch=-1)`` formats one epoch as text.
    """

    def __init__(self, x, y):
        super().__init__()
        self.x = x
        self.y = y
        self.history = []

    def on_train_begin(self, logs=None):
        self.history = []

    def on_epoch_end(self, epoch, logs=None):
        self.history.append(gradient_statistics(self.model, self.trainer.loss, self.x, self.y))

    def table(self, epoch=-1):
        """A text table of one recorded epoch (default: the last)."""
        return format_gradient_table(self.history[epoch])


def format_gradient_table(stats):
    """Text table of :func:`gradient_statistics` output, one row per layer."""
    lines = [f"{'layer':<16}{'act mean':>12}{'act std':>12}{'grad mean':>12}{'grad std':>12}"]
    for s in stats:
        gm = "-" if s["grad_mean"] is None else f"{s['grad_mean']:.3e}"
        gs = "-" if s["grad_std"] is None else f"{s['grad_std']:.3e}"
        lines.append(f"{s['name']:<16}{s['act_mean']:>12.4f}{s['act_std']:>12.4f}"
                     f"{gm:>12}{gs:>12}")
    return "\n".join(lines)
