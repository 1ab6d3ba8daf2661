"""Loss functions.

A loss is an object with

* ``__call__(y_true, y_pred) -> float``: the batch mean,
* ``gradient(y_true, y_pred) -> dL/dy_pred``: already divided by the batch size,
* ``name``.

Both validate and convert ``y_true`` each call. The Trainer validates the whole
target array once with ``prepare_targets`` and then calls the unchecked
``value`` / ``value_and_grad`` on batches of prepared targets.
"""
import numpy as np


def _as_numeric(y, argname):
    y = np.asarray(y)
    if y.dtype.kind not in "biuf":
        raise TypeError(f"{argname} must be numeric, got dtype {y.dtype}")
    return y


def _first_nonfinite(arr):
    """Index tuple of the first NaN/Inf in arr, or None."""
    bad = ~np.isfinite(arr)
    if not bad.any():
        return None
    return tuple(int(i) for i in np.argwhere(bad)[0])


class Loss:
    """Base class of losses."""

    name = None

    def prepare_targets(self, y_true, pred_shape, dtype, argname="y_true"):
        """Validate targets against predictions of shape ``pred_shape`` and convert them."""
        raise NotImplementedError

    def value(self, targets, y_pred):
        """Batch-mean loss for prepared targets (no validation)."""
        raise NotImplementedError

    def grad(self, targets, y_pred):
        """dL/dy_pred for prepared targets (no validation), divided by the batch size."""
        raise NotImplementedError

    def value_and_grad(self, targets, y_pred, backend):
        """(loss, dL/dy_pred) for prepared targets; subclasses may use a fused backend op."""
        return self.value(targets, y_pred), self.grad(targets, y_pred)

    def __call__(self, y_true, y_pred):
        y_pred = np.asarray(y_pred)
        targets = self.prepare_targets(y_true, y_pred.shape, y_pred.dtype)
        return self.value(targets, y_pred)

    def gradient(self, y_true, y_pred):
        y_pred = np.asarray(y_pred)
        targets = self.prepare_targets(y_true, y_pred.shape, y_pred.dtype)
        return self.grad(targets, y_pred)

    def get_config(self):
        return {}

    def serialize(self):
        return {"class_name": type(self).__name__, "config": self.get_config()}

    def __repr__(self):
        return f"{type(self).__name__}()"


class MeanSquaredError(Loss):
    """mean((y_pred - y_true)**2) over all elements (per-sample mean, then batch mean)."""

    name = "mse"

    def prepare_targets(self, y_true, pred_shape, dtype, argname="y_true"):
        y = _as_numeric(y_true, argname)
        pred_shape = tuple(pred_shape)
        if y.ndim >= 1 and len(pred_shape) >= 1 and y.shape[0] != pred_shape[0]:
            raise ValueError(f"{argname} has {y.shape[0]} samples but the predictions have "
                             f"{pred_shape[0]}")
        # A single-output model may be given plain (N,) targets.
        if y.ndim == 1 and len(pred_shape) == 2 and pred_shape[1] == 1:
            y = y.reshape(-1, 1)
        if y.shape[1:] != pred_shape[1:]:
            raise ValueError(f"{argname} has per-sample shape {y.shape[1:]} but the model "
                             f"outputs {tuple(pred_shape[1:])}")
        y = np.ascontiguousarray(y, dtype=dtype)
        bad = _first_nonfinite(y)
        if bad is not None:
            raise ValueError(f"{argname} contains NaN or Inf at index {bad}")
        return y

    def value(self, targets, y_pred):
        diff = y_pred.astype(np.float64) - targets
        return float(np.mean(diff * diff))

    def grad(self, targets, y_pred):
        return (2.0 / y_pred.size) * (y_pred - targets)


class CategoricalCrossentropy(Loss):
    """Cross-entropy between class targets and predicted class probabilities.

    Targets are integer class ids of shape (N,) or one-hot/probability rows
    (N, C). With ``from_logits=False`` (default) predictions are probabilities
    and are clipped to [eps, 1] for the value; the gradient is
    -y_true / max(p, eps) / N. With ``from_logits=True`` predictions are
    logits and the stable ``softmax_cross_entropy`` is used.
    """

    name = "categorical_crossentropy"

    def __init__(self, from_logits=False, eps=1e-7):
        self.from_logits = bool(from_logits)
        self.eps = float(eps)
        if not 0 < self.eps < 1:
            raise ValueError(f"eps must be in (0, 1), got {eps!r}")
        self._grad_buffer = None

    def prepare_targets(self, y_true, pred_shape, dtype, argname="y_true"):
        """int64 class ids (N,) or a (N, C) float array of ``dtype``; validated."""
        y = _as_numeric(y_true, argname)
        if len(pred_shape) != 2:
            raise ValueError(f"categorical cross-entropy expects predictions of shape (N, C), "
                             f"got {tuple(pred_shape)}")
        n, c = pred_shape
        if y.ndim == 0:
            raise ValueError(f"{argname} must be class ids (N,) or one-hot (N, {c}), got a scalar")
        if y.shape[0] != n:
            raise ValueError(f"{argname} has {y.shape[0]} samples but the predictions have {n}")
        if y.ndim == 2 and y.shape[1] == 1 and c > 1:
            y = y[:, 0]  # a column of class ids
        if y.ndim == 1:
            return self._prepare_ids(y, c, argname)
        if y.ndim != 2 or y.shape[1] != c:
            raise ValueError(f"{argname} must be class ids (N,) or one-hot (N, {c}), "
                             f"got shape {y.shape}")
        y = np.ascontiguousarray(y, dtype=dtype)
        bad = _first_nonfinite(y)
        if bad is not None:
            raise ValueError(f"{argname} contains NaN or Inf at index {bad}")
        return y

    @staticmethod
    def _prepare_ids(y, c, argname):
        if y.dtype.kind == "f":
            # Float labels are accepted when they are whole numbers.
            bad = ~np.isfinite(y) | (y != np.round(y))
            if bad.any():
                i = int(np.flatnonzero(bad)[0])
                raise ValueError(f"{argname}[{i}] = {y[i].item()!r} is not an integer class id")
        elif y.dtype.kind == "b":
            raise TypeError(f"{argname} must hold integer class ids, got dtype bool")
        bad = (y < 0) | (y >= c)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            label = y[i].item()
            raise ValueError(f"{argname} contains label {label} at index {i}, out of range "
                             f"for {c} classes (valid labels are 0..{c - 1})")
        return np.ascontiguousarray(y, dtype=np.int64)

    # -- values and gradients on prepared targets -----------------------------

    def value(self, targets, y_pred):
        n = y_pred.shape[0]
        if self.from_logits:
            z = y_pred.astype(np.float64)
            row_max = z.max(axis=1, keepdims=True)
            lse = row_max[:, 0] + np.log(np.exp(z - row_max).sum(axis=1))
            if targets.ndim == 1:
                picked = z[np.arange(n), targets]
            else:
                picked = (targets * z).sum(axis=1)
            return float(np.mean(lse - picked))
        p = np.clip(y_pred.astype(np.float64), self.eps, 1.0)
        if targets.ndim == 1:
            return float(-np.mean(np.log(p[np.arange(n), targets])))
        return float(-np.sum(targets * np.log(p)) / n)

    def grad(self, targets, y_pred):
        n = y_pred.shape[0]
        if self.from_logits:
            z = y_pred - y_pred.max(axis=1, keepdims=True)
            g = np.exp(z)
            g /= g.sum(axis=1, keepdims=True)
            if targets.ndim == 1:
                g[np.arange(n), targets] -= 1
            else:
                g -= targets
            g /= n
            return g
        # The derivative of -log(p) is -1/p; using max(p, eps) keeps a learning
        # signal for confidently wrong predictions instead of a clipped zero.
        p = np.maximum(y_pred, self.eps)
        if targets.ndim == 1:
            g = np.zeros_like(y_pred)
            rows = np.arange(n)
            g[rows, targets] = -1.0 / (n * p[rows, targets])
            return g
        return -targets / (n * p)

    def value_and_grad(self, targets, y_pred, backend):
        if self.from_logits:
            return self._softmax_cross_entropy(y_pred, targets, backend)
        return super().value_and_grad(targets, y_pred, backend)

    # -- fused softmax + cross-entropy ---------------------------------------

    def _softmax_cross_entropy(self, logits, targets, backend):
        # The gradient buffer is reused while the batch shape stays the same.
        buf = self._grad_buffer
        if buf is None or buf.shape != logits.shape or buf.dtype != logits.dtype:
            buf = self._grad_buffer = np.empty_like(logits)
        loss, grad = backend.softmax_cross_entropy(logits, targets, grad=buf)
        return float(loss), grad

    def fused_with_softmax(self, logits, y_true, backend):
        """(loss, dL/dlogits) of softmax(logits) against y_true in one backend op.

        This is what the Trainer uses when the model ends in a softmax: the
        gradient w.r.t. the logits is (softmax(logits) - y) / N, which is both
        cheaper and more accurate than chaining the two backward passes.
        """
        logits = np.asarray(logits)
        targets = self.prepare_targets(y_true, logits.shape, logits.dtype)
        return self._softmax_cross_entropy(logits, targets, backend)

    def get_config(self):
        return {"from_logits": self.from_logits, "eps": self.eps}

    def __repr__(self):
        return f"CategoricalCrossentropy(from_logits={self.from_logits})"


_REGISTRY = {
    "mse": MeanSquaredError,
    "mean_squared_error": MeanSquaredError,
    "categorical_crossentropy": CategoricalCrossentropy,
    "sparse_categorical_crossentropy": CategoricalCrossentropy,
    "crossentropy": CategoricalCrossentropy,
}


def names():
    """Valid loss names, sorted."""
    return sorted(_REGISTRY)


def get(identifier):
    """Return a Loss for a name or a Loss instance."""
    if isinstance(identifier, Loss):
        return identifier
    if isinstance(identifier, str):
        key = identifier.lower()
        if key in _REGISTRY:
            return _REGISTRY[key]()
        raise ValueError(f"unknown loss {identifier!r}; valid names: {', '.join(names())}")
    raise TypeError(f"loss must be a name or a Loss instance, got {type(identifier).__name__}")
