"""Monte Carlo dropout (Gal & Ghahramani 2016): average predictions with dropout left on.

At inference a dropout network normally runs without dropout (the inverted
scaling already makes that the expected activation). Keeping dropout on and
averaging ``samples`` stochastic forward passes approximates the average
over the thinned networks, i.e. model averaging, and their spread measures
how unsure the model is::

    mean = rp.mc_predict(model, x_test, samples=20)
    mean, std = rp.mc_predict(model, x_test, samples=20, return_std=True)

Only the ``Dropout`` layers of the model's chain run in training mode; every
other layer (BatchNormalization, augmentation, ...) runs as at inference.
Dropout inside a container layer (``Residual``) is not switched on.
"""
import numbers

import numpy as np

from .layers.dropout import Dropout


def _check_positive_int(value, argname):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"mc_predict: {argname} must be an integer >= 1, got {value!r}")
    return int(value)


def mc_predict(model, x, samples=10, batch_size=None, seed=None, return_std=False):
    """Mean (and with ``return_std`` the standard deviation) of ``samples``
    forward passes with dropout active, computed in batches (default 1024).

    ``seed``: when given, the dropout layers draw from generators seeded with
    ``seed`` (their own generators are put back afterwards), so the result is
    reproducible; otherwise they use and advance their own generators.
    Raises ValueError when the model has no Dropout layer (the average would
    just be the ordinary prediction).
    """
    samples = _check_positive_int(samples, "samples")
    batch_size = 1024 if batch_size is None else _check_positive_int(batch_size, "batch_size")
    layers = list(model.layers)
    dropouts = [layer for layer in layers if isinstance(layer, Dropout)]
    if not dropouts:
        raise ValueError(f"mc_predict: model {getattr(model, 'name', '')!r} has no Dropout "
                         f"layer; MC dropout would return its ordinary prediction")
    x = model.prepare_input(x)
    saved = None
    if seed is not None:
        saved = [layer._rng for layer in dropouts]
        for i, layer in enumerate(dropouts):
            layer._rng = np.random.default_rng([int(seed), i])
    try:
        total = None
        total_sq = None
        n = x.shape[0]
        for _ in range(samples):
            for start in range(0, n, batch_size):
                h = x[start:start + batch_size]
                for layer in layers:
                    h = layer.forward(h, training=isinstance(layer, Dropout))
                if total is None:
                    total = np.zeros((n,) + h.shape[1:])
                    total_sq = np.zeros_like(total)
                h64 = h.astype(np.float64)
                total[start:start + h.shape[0]] += h64
                total_sq[start:start + h.shape[0]] += h64 * h64
    finally:
        if saved is not None:
            for layer, rng in zip(dropouts, saved):
                layer._rng = rng
    mean = total / samples
    if not return_std:
        return mean.astype(model.dtype)
    var = np.maximum(total_sq / samples - mean * mean, 0.0)
    return mean.astype(model.dtype), np.sqrt(var).astype(model.dtype)
