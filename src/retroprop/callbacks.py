"""Training callbacks.

The Trainer calls, in order: ``on_train_begin(logs)``, then per epoch
``on_epoch_begin(epoch, logs)``, ``on_batch_end(batch, logs)`` after every
optimizer step and ``on_epoch_end(epoch, logs)`` with the epoch's metrics
("loss", "accuracy", "val_loss", ...), and finally ``on_train_end(logs)``.
Epochs and batches are 0-based here. A callback stops training by setting
``self.trainer.stop_training = True``.
"""
import math
import warnings


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
