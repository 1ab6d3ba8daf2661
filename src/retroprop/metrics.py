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


_REGISTRY = {"accuracy": accuracy, "acc": accuracy}


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
