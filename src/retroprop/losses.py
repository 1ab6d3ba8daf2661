"""Loss functions.

A loss is an object with

* ``__call__(y_true, y_pred) -> float``: the batch mean (or, for the losses
  with ``reduction="sum"``, the sum of the per-sample losses),
* ``gradient(y_true, y_pred) -> dL/dy_pred``: of that value (so already divided
  by the batch size for a mean),
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


def _checked_predictions(y_pred, loss):
    """y_pred as an array of at least one sample with at least one value each:
    the batch mean of nothing is not a loss (it was NaN, and a division by
    zero in MSE's gradient)."""
    y_pred = np.asarray(y_pred)
    if y_pred.dtype.kind not in "fiu":
        raise TypeError(f"{type(loss).__name__}: y_pred must be numeric, got dtype {y_pred.dtype}")
    if y_pred.ndim < 1 or y_pred.size == 0:
        raise ValueError(f"{type(loss).__name__}: y_pred is empty (shape {y_pred.shape}); "
                         f"a loss needs at least one sample with at least one output")
    return y_pred


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

    #: Name of the output activation this loss fuses with, or None. When the
    #: model's last layer has exactly that activation (and ``backward_from_logits``)
    #: the Trainer calls :meth:`fused_value_and_grad` and starts backprop from
    #: the gradient w.r.t. the pre-activation.
    fused_activation = None

    def fused_value_and_grad(self, layer, y_pred, targets, backend):
        """(loss, dL/dlogits) for the last layer's output ``y_pred`` and its ``layer.logits``."""
        raise NotImplementedError(f"{type(self).__name__} has no fused path")

    def __call__(self, y_true, y_pred):
        y_pred = _checked_predictions(y_pred, self)
        targets = self.prepare_targets(y_true, y_pred.shape, y_pred.dtype)
        return self.value(targets, y_pred)

    def gradient(self, y_true, y_pred):
        y_pred = _checked_predictions(y_pred, self)
        targets = self.prepare_targets(y_true, y_pred.shape, y_pred.dtype)
        return self.grad(targets, y_pred)

    def get_config(self):
        return {}

    def serialize(self):
        return {"class_name": type(self).__name__, "config": self.get_config()}

    def __repr__(self):
        return f"{type(self).__name__}()"


REDUCTIONS = ("mean", "sum")


def _check_reduction(owner, reduction):
    if reduction not in REDUCTIONS:
        raise ValueError(f"{owner}: reduction must be one of {', '.join(REDUCTIONS)}, "
                         f"got {reduction!r}")
    return reduction


class MeanSquaredError(Loss):
    """Squared error (y_pred - y_true)**2, reduced over the batch.

    Each sample's loss is the mean over its elements (as in Keras); ``reduction``
    says how the batch is combined: ``"mean"`` (default: the mean over all
    elements) or ``"sum"`` (the per-sample losses added, so for one output the
    sum of squared errors, sum_i (y_pred_i - y_i)**2). For the course's
    half-squared error C = 1/2 (a - y)**2 see :class:`HalfSquaredError`.
    """

    name = "mse"

    def __init__(self, reduction="mean"):
        self.reduction = _check_reduction(type(self).__name__, reduction)

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

    def _divisor(self, y_pred):
        """What the sum over all elements is divided by: every element ("mean"),
        or the elements of one sample ("sum": per-sample means, added)."""
        if self.reduction == "mean" or y_pred.ndim == 0:
            return y_pred.size
        return max(y_pred.size // max(y_pred.shape[0], 1), 1)

    def value(self, targets, y_pred):
        diff = y_pred.astype(np.float64) - targets
        return float(np.sum(diff * diff) / self._divisor(y_pred))

    def grad(self, targets, y_pred):
        return (2.0 / self._divisor(y_pred)) * (y_pred - targets)

    def get_config(self):
        return {"reduction": self.reduction}

    def __repr__(self):
        return f"{type(self).__name__}(reduction={self.reduction!r})"


class HalfSquaredError(MeanSquaredError):
    """The course's quadratic cost: per sample C = 1/2 * sum_j (a_j - y_j)**2.

    The gradient is simply a - y (the 1/2 cancels the square's 2), which is
    what the hand-written backpropagation of the course uses
    (delta = (a - y) * sigma'(z) at the output). ``reduction="mean"``
    (default) averages C over the batch, Nielsen's C = 1/(2n) sum_x ||y(x) - a||**2;
    ``"sum"`` adds the per-sample costs. With one output and one sample both
    are 1/2 (a - y)**2. Also available as ``"half_mse"``.
    """

    name = "half_squared_error"

    def _batch_divisor(self, y_pred):
        return y_pred.shape[0] if self.reduction == "mean" and y_pred.ndim else 1

    def value(self, targets, y_pred):
        diff = y_pred.astype(np.float64) - targets
        return float(0.5 * np.sum(diff * diff) / self._batch_divisor(y_pred))

    def grad(self, targets, y_pred):
        return (y_pred - targets) / y_pred.dtype.type(self._batch_divisor(y_pred))


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

    @property
    def fused_activation(self):
        """Cross-entropy on probabilities fuses with a softmax output."""
        return None if self.from_logits else "softmax"

    def fused_value_and_grad(self, layer, y_pred, targets, backend):
        """Fused softmax + cross-entropy from the last layer's logits."""
        return self._softmax_cross_entropy(layer.logits, targets, backend)

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


class MeanAbsoluteError(MeanSquaredError):
    """Absolute error |y_pred - y_true|, reduced over the batch like :class:`MeanSquaredError`
    (``reduction="mean"``: the mean over all elements; ``"sum"``: per-sample means, added).

    The derivative sign(y_pred - y_true) / divisor is taken as 0 where the two
    are equal (a subgradient).
    """

    name = "mae"

    def value(self, targets, y_pred):
        return float(np.sum(np.abs(y_pred.astype(np.float64) - targets)) / self._divisor(y_pred))

    def grad(self, targets, y_pred):
        return (np.sign(y_pred - targets) / self._divisor(y_pred)).astype(y_pred.dtype)


class KLDivergence(MeanSquaredError):
    """Kullback-Leibler divergence KL(y_true || y_pred) = sum_j y_j log(y_j / p_j) per sample.

    Targets are probability rows with the predictions' shape (one-hot rows
    make it the categorical cross-entropy). Predictions are clipped to
    [eps, 1] as in the cross-entropy; terms with y_j = 0 are 0 (the limit of
    y log y). The gradient is -y / max(p, eps). ``reduction="mean"`` (default)
    averages the per-sample divergences over the batch, ``"sum"`` adds them.
    Negative targets are refused.
    """

    name = "kl_divergence"

    def __init__(self, reduction="mean", eps=1e-7):
        super().__init__(reduction)
        self.eps = float(eps)
        if not 0 < self.eps < 1:
            raise ValueError(f"KLDivergence: eps must be in (0, 1), got {eps!r}")

    def prepare_targets(self, y_true, pred_shape, dtype, argname="y_true"):
        y = super().prepare_targets(y_true, pred_shape, dtype, argname)
        if np.any(y < 0):
            i = tuple(int(j) for j in np.argwhere(y < 0)[0])
            raise ValueError(f"{argname} must hold probabilities >= 0 for the KL divergence, "
                             f"got {y[i]} at index {i}")
        return y

    def _batch_divisor(self, y_pred):
        return y_pred.shape[0] if self.reduction == "mean" and y_pred.ndim else 1

    def value(self, targets, y_pred):
        p = np.clip(y_pred.astype(np.float64), self.eps, 1.0)
        t = targets.astype(np.float64)
        positive = t > 0
        terms = np.zeros_like(t)
        terms[positive] = t[positive] * np.log(t[positive] / p[positive])
        return float(np.sum(terms) / self._batch_divisor(y_pred))

    def grad(self, targets, y_pred):
        p = np.maximum(y_pred, self.eps)
        return (-targets / (p * self._batch_divisor(y_pred))).astype(y_pred.dtype)

    def get_config(self):
        return {"reduction": self.reduction, "eps": self.eps}


def _log_sigmoid(z):
    """log(sigmoid(z)) = -log(1 + exp(-z)) = -logaddexp(0, -z), finite for any z."""
    return -np.logaddexp(0.0, -z)


class BinaryCrossentropy(MeanSquaredError):
    """Binary cross-entropy, mean over all elements (so over outputs and batch).

    Targets are 0/1 (or probabilities) with the predictions' shape; (N,)
    targets are accepted for a single-output model.

    * ``from_logits=False`` (default): predictions are probabilities p and
      L = -[y log p + (1 - y) log(1 - p)], with p clipped to [eps, 1 - eps] so
      p = 0 or 1 gives a finite loss; the gradient (p - y) / (p (1 - p)) / size
      uses the same clipped p.
    * ``from_logits=True``: predictions are logits z and
      L = -[y log sigmoid(z) + (1 - y) log sigmoid(-z)] via logaddexp, finite
      for any z; the gradient is (sigmoid(z) - y) / size.

    Fused path: when the model ends in a plain sigmoid (slope 1) and
    ``from_logits=False``, the Trainer starts backprop at the logits with the
    exact gradient (p - y) / size, as categorical cross-entropy does with softmax.
    """

    name = "binary_crossentropy"

    def __init__(self, from_logits=False, eps=1e-7):
        self.from_logits = bool(from_logits)
        self.eps = float(eps)
        if not 0 < self.eps < 0.5:
            raise ValueError(f"eps must be in (0, 0.5), got {eps!r}")

    def _value_from_logits(self, targets, z):
        z = z.astype(np.float64)
        return float(-np.mean(targets * _log_sigmoid(z) + (1.0 - targets) * _log_sigmoid(-z)))

    def value(self, targets, y_pred):
        if self.from_logits:
            return self._value_from_logits(targets, y_pred)
        p = np.clip(y_pred.astype(np.float64), self.eps, 1.0 - self.eps)
        return float(-np.mean(targets * np.log(p) + (1.0 - targets) * np.log1p(-p)))

    def grad(self, targets, y_pred):
        if self.from_logits:
            p = 0.5 * (1.0 + np.tanh(0.5 * y_pred))   # stable sigmoid
            return ((p - targets) / y_pred.size).astype(y_pred.dtype)
        p = np.clip(y_pred, self.eps, 1.0 - self.eps)
        return ((p - targets) / (p * (1.0 - p)) / y_pred.size).astype(y_pred.dtype)

    @property
    def fused_activation(self):
        """Binary cross-entropy on probabilities fuses with a sigmoid output."""
        return None if self.from_logits else "sigmoid"

    def fused_value_and_grad(self, layer, y_pred, targets, backend):
        """(loss, dL/dz) with z the sigmoid's input: the gradient is (p - y) / size.

        The value comes from the logits when the layer kept them (stable for
        any z); a Dense layer with the fused sigmoid kernel keeps only p, and
        then the clipped-probability formula is used.
        """
        grad = ((y_pred - targets) / y_pred.size).astype(y_pred.dtype)
        logits = getattr(layer, "logits", None)
        if logits is not None:
            return self._value_from_logits(targets, logits), grad
        return self.value(targets, y_pred), grad

    def get_config(self):
        return {"from_logits": self.from_logits, "eps": self.eps}

    def __repr__(self):
        return f"BinaryCrossentropy(from_logits={self.from_logits})"


class Hinge(CategoricalCrossentropy):
    """Multiclass SVM hinge loss (Weston-Watkins / CS231n form) on raw scores s::

        L_i = sum_{j != y_i} max(0, s_j - s_{y_i} + margin),   L = mean_i L_i

    with margin 1. Targets are class ids (N,) or one-hot rows (argmax taken).
    Gradient per sample: +1 for each wrong class with a positive margin term,
    minus their count at the true class; divided by N.
    """

    name = "hinge"

    def __init__(self, margin=1.0):
        super().__init__(from_logits=True)
        self.margin = float(margin)

    @property
    def fused_activation(self):
        """The hinge works on scores; it fuses with nothing."""
        return None

    def _ids(self, targets):
        return targets if targets.ndim == 1 else np.argmax(targets, axis=1)

    def _margins(self, targets, y_pred):
        ids = self._ids(targets)
        rows = np.arange(y_pred.shape[0])
        s = y_pred.astype(np.float64)
        m = np.maximum(0.0, s - s[rows, ids][:, None] + self.margin)
        m[rows, ids] = 0.0   # the true class is not a "wrong class"
        return m, rows, ids

    def value(self, targets, y_pred):
        m, _, _ = self._margins(targets, y_pred)
        return float(np.mean(m.sum(axis=1)))

    def grad(self, targets, y_pred):
        m, rows, ids = self._margins(targets, y_pred)
        g = (m > 0).astype(np.float64)
        g[rows, ids] = -g.sum(axis=1)
        return (g / y_pred.shape[0]).astype(y_pred.dtype)

    def value_and_grad(self, targets, y_pred, backend):
        return self.value(targets, y_pred), self.grad(targets, y_pred)

    def get_config(self):
        return {"margin": self.margin}

    def __repr__(self):
        return f"Hinge(margin={self.margin})"


_REGISTRY = {
    "mse": MeanSquaredError,
    "mean_squared_error": MeanSquaredError,
    "categorical_crossentropy": CategoricalCrossentropy,
    "sparse_categorical_crossentropy": CategoricalCrossentropy,
    "crossentropy": CategoricalCrossentropy,
    "mae": MeanAbsoluteError,
    "mean_absolute_error": MeanAbsoluteError,
    "half_squared_error": HalfSquaredError,
    "half_mse": HalfSquaredError,
    "kl_divergence": KLDivergence,
    "kld": KLDivergence,
    "kullback_leibler_divergence": KLDivergence,
    "binary_crossentropy": BinaryCrossentropy,
    "hinge": Hinge,
    "multiclass_hinge": Hinge,
}


def names():
    """Valid loss names, sorted."""
    return sorted(_REGISTRY)


def get(identifier, **kwargs):
    """Return a Loss for a name or a Loss instance.

    Keyword arguments go to the loss constructor, e.g.
    ``get("categorical_crossentropy", from_logits=True)``.
    """
    if isinstance(identifier, Loss):
        return identifier
    if isinstance(identifier, str):
        key = identifier.lower()
        if key in _REGISTRY:
            return _REGISTRY[key](**kwargs)
        raise ValueError(f"unknown loss {identifier!r}; valid names: {', '.join(names())}")
    raise TypeError(f"loss must be a name or a Loss instance, got {type(identifier).__name__}")
