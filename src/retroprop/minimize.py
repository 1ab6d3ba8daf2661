"""Gradient descent on a plain function f: R^d -> R, with retroprop's optimizers.

The course's first algorithm, before any network::

    repeat  x <- x - lr * grad f(x)   until ||grad f(x)|| <= eps

``minimize(f, x0, grad=...)`` runs that loop on a NumPy vector (or array)
with any optimizer of :mod:`retroprop.optim` (plain SGD by default; also
momentum, Adam, a learning-rate schedule, gradient clipping), and records
the path. Without ``grad`` the gradient is taken by central differences.
"""
import math
import numbers

import numpy as np

from . import optim as optim_module


def numerical_gradient(f, x, h=1e-6):
    """Central differences (f(x + h e_i) - f(x - h e_i)) / 2h for every entry of x (float64)."""
    x = np.array(x, dtype=np.float64)
    g = np.empty_like(x)
    for i in range(x.size):
        old = x.flat[i]
        x.flat[i] = old + h
        plus = float(f(x))
        x.flat[i] = old - h
        minus = float(f(x))
        x.flat[i] = old
        g.flat[i] = (plus - minus) / (2.0 * h)
    return g


class MinimizeResult:
    """What :func:`minimize` returns.

    ``x`` the last point, ``fun`` f(x), ``grad_norm`` ||grad f(x)||, ``steps``
    the optimizer steps taken, ``converged`` whether ||grad f|| <= eps was
    reached, and ``history``: dict of per-step lists "f", "grad_norm", "lr"
    and "x" (copies of every point, the start included).
    """

    def __init__(self, x, fun, grad_norm, steps, converged, history):
        self.x = x
        self.fun = fun
        self.grad_norm = grad_norm
        self.steps = steps
        self.converged = converged
        self.history = history

    def __repr__(self):
        return (f"MinimizeResult(fun={self.fun:.6g}, grad_norm={self.grad_norm:.3g}, "
                f"steps={self.steps}, converged={self.converged})")


def minimize(f, x0, grad=None, lr=0.1, eps=1e-6, max_steps=10000, optimizer=None):
    """Minimise ``f`` from ``x0`` by gradient descent until ||grad f(x)|| <= ``eps``.

    Parameters
    ----------
    f : callable(x) -> float
    x0 : array-like (any shape; float64 is used)
    grad : callable(x) -> array of x's shape, or None for central differences
    lr : float or schedule, the step size of the default plain SGD
    eps : float >= 0, the gradient-norm tolerance
    max_steps : int >= 0; the loop stops there even if not converged
    optimizer : an :class:`retroprop.optim.Optimizer` instead of SGD(lr)

    Non-finite f or gradient values raise ValueError (a step size too large
    for f makes x overflow; the message says where).
    """
    if not callable(f):
        raise TypeError(f"minimize: f must be callable, got {type(f).__name__}")
    if grad is not None and not callable(grad):
        raise TypeError(f"minimize: grad must be callable or None, got {type(grad).__name__}")
    try:
        x = np.array(x0, dtype=np.float64)
    except (TypeError, ValueError):
        raise TypeError(f"minimize: x0 must be numeric, got {x0!r}") from None
    if x.size == 0 or not np.all(np.isfinite(x)):
        raise ValueError(f"minimize: x0 must be a non-empty finite array, got {x0!r}")
    eps = float(eps)
    if not (math.isfinite(eps) and eps >= 0):
        raise ValueError(f"minimize: eps must be a finite number >= 0, got {eps!r}")
    if isinstance(max_steps, bool) or not isinstance(max_steps, numbers.Integral) \
            or max_steps < 0:
        raise ValueError(f"minimize: max_steps must be an integer >= 0, got {max_steps!r}")
    if optimizer is None:
        optimizer = optim_module.SGD(lr=lr)
    elif not isinstance(optimizer, optim_module.Optimizer):
        raise TypeError(f"minimize: optimizer must be a retroprop Optimizer, "
                        f"got {type(optimizer).__name__}")

    def evaluate(point, step):
        # Overflow is reported below as a ValueError, not as NumPy warnings.
        with np.errstate(over="ignore", invalid="ignore"):
            value = float(f(point))
            g = numerical_gradient(f, point) if grad is None else \
                np.array(grad(point), dtype=np.float64)
        if g.shape != point.shape:
            raise ValueError(f"minimize: grad returned shape {g.shape}, x has {point.shape}")
        if not (math.isfinite(value) and np.all(np.isfinite(g))):
            raise ValueError(f"minimize: f or its gradient is not finite at step {step} "
                             f"(f = {value}); the step size is probably too large")
        return value, g

    history = {"f": [], "grad_norm": [], "lr": [], "x": []}
    value, g = evaluate(x, 0)
    steps = 0
    while True:
        with np.errstate(over="ignore"):
            norm = float(np.linalg.norm(g))
        history["f"].append(value)
        history["grad_norm"].append(norm)
        history["x"].append(x.copy())
        if norm <= eps or steps >= max_steps:
            break
        history["lr"].append(optimizer.current_lr())
        optimizer.step([("x", x, g)])
        steps += 1
        value, g = evaluate(x, steps)
    return MinimizeResult(x, value, norm, steps, norm <= eps, history)
