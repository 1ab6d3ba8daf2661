"""The C backend: NumPy arrays in and out, the kernels of ``_core`` underneath.

This module is the one place that decides about copies and allocation:
inputs that are not C-contiguous are copied (the kernels need contiguity);
outputs must already be contiguous arrays of the right dtype, or are
allocated here when not given. Workspaces the kernels need are cached per
shape and thread, so a training loop allocates nothing per step.
See docs/BACKEND.md for the contract shared with ``numpy_ref``.
"""
import threading

import numpy as np

from .. import _core

FUSED_ACTIVATIONS = ("linear", "relu", "sigmoid", "tanh")
_REAL = (np.dtype(np.float32), np.dtype(np.float64))
_local = threading.local()


def _input(arr, name, dtype=None):
    """A C-contiguous float32/float64 view or copy of ``arr``; TypeError otherwise."""
    if not isinstance(arr, np.ndarray):
        raise TypeError(f"{name}: expected a numpy.ndarray, got {type(arr).__name__}")
    if arr.dtype not in _REAL:
        raise TypeError(f"{name}: expected dtype float32 or float64, got {arr.dtype}")
    if dtype is not None and arr.dtype != dtype:
        raise TypeError(f"{name}: expected dtype {dtype}, got {arr.dtype}")
    return np.ascontiguousarray(arr)


def _output(arr, name, shape, dtype):
    """Validate a caller-supplied output array, or allocate one."""
    if arr is None:
        return np.empty(shape, dtype=dtype)
    if not isinstance(arr, np.ndarray):
        raise TypeError(f"{name}: expected a numpy.ndarray, got {type(arr).__name__}")
    if arr.dtype != dtype:
        raise TypeError(f"{name}: expected dtype {dtype}, got {arr.dtype}")
    if not arr.flags.c_contiguous:
        raise TypeError(f"{name}: output arrays must be C-contiguous")
    if arr.shape != tuple(shape):
        raise ValueError(f"{name}: expected shape {tuple(shape)}, got {arr.shape}")
    return arr


def _workspace(shape, dtype):
    """A scratch array reused across calls with the same shape, per thread."""
    cache = getattr(_local, "workspaces", None)
    if cache is None:
        cache = _local.workspaces = {}
    key = (tuple(shape), np.dtype(dtype).str)
    buf = cache.get(key)
    if buf is None:
        if len(cache) > 32:  # shapes come and go (e.g. a last partial batch)
            cache.clear()
        buf = cache[key] = np.empty(shape, dtype=dtype)
    return buf


def _fused(activation):
    if activation is None:
        return "linear"
    if activation not in FUSED_ACTIVATIONS:
        raise ValueError(f"activation: expected one of {FUSED_ACTIVATIONS}, got {activation!r}")
    return activation


# ---------------------------------------------------------------- runtime

def set_num_threads(n):
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)):
        raise TypeError(f"set_num_threads: expected an int >= 1, got {n!r}")
    _core.set_num_threads(int(n))


def get_num_threads():
    return _core.get_num_threads()


def backend_info():
    best, in_use = _core.simd_levels()
    return {
        "backend": "cpu",
        "simd": in_use,
        "simd_best": best,
        "threads": _core.get_num_threads(),
        "openmp": _core.have_openmp(),
        "compiler": _core.compiler(),
        "cuda": False,
        "cuda_note": "built without CUDA (RETROPROP_CUDA=OFF)",
    }


def set_simd(name):
    """Switch the kernels to 'generic' or 'avx2+fma' (for tests and benchmarks)."""
    return _core.set_simd(name)


# ---------------------------------------------------------------- kernels

def gemm(a, b, out=None, *, trans_a=False, trans_b=False, alpha=1.0, beta=0.0):
    a = _input(a, "a")
    b = _input(b, "b", a.dtype)
    if a.ndim != 2 or b.ndim != 2:
        raise ValueError(f"gemm: expected 2-D a and b, got shapes {a.shape} and {b.shape}")
    m = a.shape[1] if trans_a else a.shape[0]
    n = b.shape[0] if trans_b else b.shape[1]
    if out is None and beta != 0.0:
        raise ValueError("gemm: beta != 0 needs an out array to accumulate into")
    out = _output(out, "out", (m, n), a.dtype)
    return _core.gemm(a, b, out, bool(trans_a), bool(trans_b), float(alpha), float(beta))


def dense_forward(x, w, b, activation, out=None):
    x = _input(x, "x")
    w = _input(w, "w", x.dtype)
    if b is not None:
        b = _input(b, "b", x.dtype)
    if x.ndim != 2 or w.ndim != 2:
        raise ValueError(f"dense_forward: expected 2-D x and w, got shapes {x.shape} and {w.shape}")
    out = _output(out, "out", (x.shape[0], w.shape[1]), x.dtype)
    return _core.dense_forward(x, w, b, _fused(activation), out)


def dense_backward(x, w, y, dy, activation, dw, db=None, dx=None):
    x = _input(x, "x")
    w = _input(w, "w", x.dtype)
    y = _input(y, "y", x.dtype)
    dy = _input(dy, "dy", x.dtype)
    if x.ndim != 2 or w.ndim != 2:
        raise ValueError(f"dense_backward: expected 2-D x and w, got shapes {x.shape} and {w.shape}")
    dz = _workspace(dy.shape, dy.dtype)
    return _core.dense_backward(x, w, y, dy, _fused(activation), dz, dw, db, dx)


def activation_forward(name, x, out=None):
    x = _input(x, "x")
    out = _output(out, "out", x.shape, x.dtype)
    return _core.act_forward(_fused(name), x, out)


def activation_backward(name, y, dy, out=None):
    y = _input(y, "y")
    dy = _input(dy, "dy", y.dtype)
    out = _output(out, "out", y.shape, y.dtype)
    return _core.act_backward(_fused(name), y, dy, out)


def softmax(x, out=None):
    x = _input(x, "x")
    out = _output(out, "out", x.shape, x.dtype)
    return _core.softmax(x, out)


def softmax_cross_entropy(logits, targets, grad=None):
    logits = _input(logits, "logits")
    if logits.ndim != 2:
        raise ValueError(f"softmax_cross_entropy: expected logits of shape (N, C), got {logits.shape}")
    targets = np.asarray(targets)
    if targets.ndim == 1:
        if not np.issubdtype(targets.dtype, np.integer):
            raise TypeError(f"targets: class ids must be integers, got dtype {targets.dtype}")
        labels, onehot = np.ascontiguousarray(targets, dtype=np.int64), None
    else:
        if targets.dtype.kind not in "fiub":
            raise TypeError(f"targets: expected numbers, got dtype {targets.dtype}")
        labels, onehot = None, np.ascontiguousarray(targets, dtype=logits.dtype)
    grad = _output(grad, "grad", logits.shape, logits.dtype)
    loss = _core.softmax_cross_entropy(logits, labels, onehot, grad)
    return loss, grad


def sgd_step(param, grad, velocity, *, lr, momentum=0.0, nesterov=False, weight_decay=0.0):
    # param and velocity are updated in place, so they cannot be copies.
    grad = _input(grad, "grad", param.dtype)
    _core.sgd_step(param, grad, velocity, float(lr), float(momentum), bool(nesterov),
                   float(weight_decay))
