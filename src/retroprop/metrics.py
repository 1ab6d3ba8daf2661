"""Metrics: functions ``metric(y_true, y_pred) -> float`` averaged over the batch."""
import numpy as np


def accuracy(y_true, y_pred):
    """Fraction of correctly classified samples.

    * y_pred (N, C) with C > 1: the predicted class is the row's argmax;
      y_true is class ids (N,) or one-hot/probability rows (N, C) (argmax).
    * y_pred (N, 1) or (N,): binary; predicted class is y_pred > 0.5 and
      y_true is 0/1 (also thresholded at 0.5).
    """
    y_true = np.asarray(y_true)
    y_pred = np.asarray(y_pred)
    if y_pred.ndim == 0 or y_pred.shape[0] == 0:
        raise ValueError("accuracy needs at least one prediction")
    n = y_pred.shape[0]
    if y_true.shape[0] != n:
        raise ValueError(f"y_true has {y_true.shape[0]} samples but y_pred has {n}")
    if y_pred.ndim == 1 or (y_pred.ndim == 2 and y_pred.shape[1] == 1):
        predicted = y_pred.reshape(n) > 0.5
        actual = y_true.reshape(n) > 0.5
        return float(np.mean(predicted == actual))
    predicted = np.argmax(y_pred.reshape(n, -1), axis=1)
    if y_true.ndim == 1:
        actual = y_true
    elif y_true.ndim == 2 and y_true.shape[1] == 1:
        actual = y_true[:, 0]
    else:
        actual = np.argmax(y_true.reshape(n, -1), axis=1)
    return float(np.mean(predicted == actual))


def _class_ids(y, n, argname):
    """Class ids (N,) from ids, a column of ids, or one-hot/probability rows."""
    y = np.asarray(y)
    if y.shape[0] != n:
        raise ValueError(f"{argname} has {y.shape[0]} samples but expected {n}")
    if y.ndim == 1:
        return y.astype(np.int64)
    if y.ndim == 2 and y.shape[1] == 1:
        return y[:, 0].astype(np.int64)
    return np.argmax(y.reshape(n, -1), axis=1)


def _predicted_ids(y_pred):
    """Argmax of (N, C) scores; 0/1 by thresholding (N,) or (N, 1) at 0.5."""
    y_pred = np.asarray(y_pred)
    if y_pred.ndim == 0 or y_pred.shape[0] == 0:
        raise ValueError("metrics need at least one prediction")
    n = y_pred.shape[0]
    if y_pred.ndim == 1 or (y_pred.ndim == 2 and y_pred.shape[1] == 1):
        return (y_pred.reshape(n) > 0.5).astype(np.int64), 2
    return np.argmax(y_pred.reshape(n, -1), axis=1), y_pred.reshape(n, -1).shape[1]


def top_k_accuracy(y_true, y_pred, k=5):
    """Fraction of samples whose true class is among the k highest scores.

    y_pred is (N, C) scores or probabilities; y_true class ids or one-hot.
    Ties at the k-th score count in the sample's favour only when the true
    class's score is strictly above the (k+1)-th largest; with k >= C every
    sample counts as correct.
    """
    y_pred = np.asarray(y_pred)
    if y_pred.ndim != 2:
        raise ValueError(f"top_k_accuracy expects scores of shape (N, C), got {y_pred.shape}")
    n, c = y_pred.shape
    k = int(k)
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    ids = _class_ids(y_true, n, "y_true")
    if k >= c:
        return 1.0
    true_scores = y_pred[np.arange(n), ids]
    # The true class is in the top k when fewer than k classes score strictly higher.
    higher = np.sum(y_pred > true_scores[:, None], axis=1)
    return float(np.mean(higher < k))


def _named(fn, name, **kwargs):
    """fn with fixed keyword arguments, carrying ``name`` for the Trainer's logs."""
    def metric(y_true, y_pred):
        return fn(y_true, y_pred, **kwargs)
    metric.__name__ = name
    metric.__doc__ = f"{fn.__name__} with {kwargs}."
    return metric


def confusion_matrix(y_true, y_pred, num_classes=None):
    """(C, C) int64 counts: entry [i, j] = samples of true class i predicted as j.

    ``y_pred`` may be scores (argmax) or class ids (N,) of integer dtype;
    ``num_classes`` defaults to the number of score columns, or 1 + the
    largest id seen.
    """
    y_pred = np.asarray(y_pred)
    n = y_pred.shape[0]
    if y_pred.ndim == 1 and y_pred.dtype.kind in "iu":
        pred, c = y_pred.astype(np.int64), None
    else:
        pred, c = _predicted_ids(y_pred)
    actual = _class_ids(y_true, n, "y_true")
    if num_classes is None:
        num_classes = c if c is not None else int(max(pred.max(), actual.max())) + 1
    num_classes = max(int(num_classes), int(max(pred.max(), actual.max())) + 1)
    matrix = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(matrix, (actual, pred), 1)
    return matrix


def _macro(y_true, y_pred, which):
    m = confusion_matrix(y_true, y_pred).astype(np.float64)
    tp = np.diag(m)
    predicted = m.sum(axis=0)
    actual = m.sum(axis=1)
    # Classes never predicted (or absent) score 0 for that class, as in scikit-learn.
    precision = np.divide(tp, predicted, out=np.zeros_like(tp), where=predicted > 0)
    recall = np.divide(tp, actual, out=np.zeros_like(tp), where=actual > 0)
    if which == "precision":
        per_class = precision
    elif which == "recall":
        per_class = recall
    else:
        denom = precision + recall
        per_class = np.divide(2 * precision * recall, denom, out=np.zeros_like(tp),
                              where=denom > 0)
    # Macro average over the classes that occur in y_true or y_pred.
    present = (predicted + actual) > 0
    return float(per_class[present].mean())


def precision_macro(y_true, y_pred):
    """Unweighted mean over classes of TP / (TP + FP)."""
    return _macro(y_true, y_pred, "precision")


def recall_macro(y_true, y_pred):
    """Unweighted mean over classes of TP / (TP + FN)."""
    return _macro(y_true, y_pred, "recall")


def f1_macro(y_true, y_pred):
    """Unweighted mean over classes of 2 P R / (P + R).

    As a Trainer metric it is averaged over batches (like every metric here),
    which is close to but not exactly the F1 of the whole data set; compute
    it on ``model.predict`` output for the exact value.
    """
    return _macro(y_true, y_pred, "f1")


_REGISTRY = {"accuracy": accuracy, "acc": accuracy,
             "top_k_accuracy": _named(top_k_accuracy, "top_5_accuracy", k=5),
             "top_5_accuracy": _named(top_k_accuracy, "top_5_accuracy", k=5),
             "precision": precision_macro, "precision_macro": precision_macro,
             "recall": recall_macro, "recall_macro": recall_macro,
             "f1": f1_macro, "f1_macro": f1_macro}


def names():
    """Valid metric names, sorted."""
    return sorted(_REGISTRY)


def get(identifier):
    """Return a metric function for a name, or a callable unchanged."""
    if isinstance(identifier, str):
        key = identifier.lower()
        if key in _REGISTRY:
            return _REGISTRY[key]
        raise ValueError(f"unknown metric {identifier!r}; valid names: {', '.join(names())}")
    if callable(identifier):
        return identifier
    raise TypeError(f"metric must be a name or a callable, got {type(identifier).__name__}")
