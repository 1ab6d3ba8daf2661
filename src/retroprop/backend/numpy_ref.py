"""Plain NumPy reference backend.

Implements every function of docs/BACKEND.md with ordinary NumPy so that:

* the C kernels of the ``cpu`` backend have an independent reference to be
  tested against, and
* the library can run (slowly) without the compiled extension, selected with
  ``RETROPROP_BACKEND=numpy``.

The code favours clarity over speed, but keeps the numerically careful forms
(a sigmoid that never overflows, max-subtracted softmax and logsumexp),
because the reference must be at least as accurate as what it checks.

Arrays must be float32 or float64 NumPy arrays (``TypeError`` otherwise, naming
the argument); all float arguments of one call must share one dtype. Shape
mismatches raise ``ValueError``. ``out``-style arguments are written in place
and returned.
"""
import numpy as np

FUSED_ACTIVATIONS = ("linear", "relu", "sigmoid", "tanh")

_FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))
_num_threads = 1


# --------------------------------------------------------------------------
# validation helpers
# --------------------------------------------------------------------------

def _check_float(arr, argname, dtype=None, ndim=None):
    """Check that ``arr`` is a float32/float64 ndarray (of ``dtype`` and rank ``ndim``)."""
    if not isinstance(arr, np.ndarray):
        raise TypeError(f"{argname} must be a numpy.ndarray, got {type(arr).__name__}")
    if arr.dtype not in _FLOAT_DTYPES:
        raise TypeError(f"{argname} must have dtype float32 or float64, got {arr.dtype}")
    if dtype is not None and arr.dtype != dtype:
        raise TypeError(f"{argname} has dtype {arr.dtype}, expected {dtype} "
                        f"(all arrays of one call share a dtype)")
    if ndim is not None and arr.ndim != ndim:
        raise ValueError(f"{argname} must be {ndim}-D, got shape {arr.shape}")
    return arr


def _check_out(out, argname, shape, dtype):
    """Return ``out`` after checking it, or a new uninitialised array when None."""
    if out is None:
        return np.empty(shape, dtype=dtype)
    _check_float(out, argname, dtype)
    if out.shape != tuple(shape):
        raise ValueError(f"{argname} has shape {out.shape}, expected {tuple(shape)}")
    return out


def _check_activation(name):
    if name not in FUSED_ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}; expected one of {FUSED_ACTIVATIONS}")


# --------------------------------------------------------------------------
# runtime information (the reference has no threads of its own)
# --------------------------------------------------------------------------

def set_num_threads(n):
    """Accept a thread count for API compatibility; the reference is single-threaded."""
    global _num_threads
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"number of threads must be an integer >= 1, got {n!r}")
    _num_threads = int(n)


def get_num_threads():
    """Always 1: NumPy's own BLAS threading is outside this backend's control."""
    return 1


def backend_info():
    """Describe this backend."""
    return {
        "backend": "numpy",
        "numpy_version": np.__version__,
        "threads": 1,
        "simd": "none",
        "openmp": False,
        "cuda": False,
    }


# --------------------------------------------------------------------------
# GEMM
# --------------------------------------------------------------------------

def gemm(a, b, out=None, *, trans_a=False, trans_b=False, alpha=1.0, beta=0.0):
    """out = alpha * op(a) @ op(b) + beta * out, with op(a) = a.T when trans_a."""
    _check_float(a, "a", ndim=2)
    _check_float(b, "b", a.dtype, ndim=2)
    op_a = a.T if trans_a else a
    op_b = b.T if trans_b else b
    if op_a.shape[1] != op_b.shape[0]:
        raise ValueError(f"gemm inner dimensions differ: op(a) is {op_a.shape}, "
                         f"op(b) is {op_b.shape}")
    shape = (op_a.shape[0], op_b.shape[1])
    if out is None:
        if beta != 0.0:
            raise ValueError("gemm: beta != 0 needs an out array to accumulate into")
        out = np.empty(shape, dtype=a.dtype)
    else:
        _check_out(out, "out", shape, a.dtype)
    product = op_a @ op_b
    if beta == 0.0:
        # BLAS convention: with beta == 0 the old contents (even NaN) are ignored.
        np.multiply(product, alpha, out=out)
    else:
        out *= beta
        out += alpha * product
    return out


# --------------------------------------------------------------------------
# elementwise activations (derivatives taken from the output y)
# --------------------------------------------------------------------------

def _sigmoid(x, out):
    # exp(-|x|) never overflows; the two branches are the same function:
    # 1 / (1 + e^-x) for x >= 0 and e^x / (1 + e^x) for x < 0.
    positive = x >= 0
    e = np.exp(-np.abs(x))
    numerator = np.where(positive, np.ones_like(e), e)
    np.divide(numerator, 1.0 + e, out=out)
    return out


def activation_forward(name, x, out=None):
    """Elementwise activation ``name`` (one of FUSED_ACTIVATIONS) of x."""
    _check_activation(name)
    _check_float(x, "x")
    out = _check_out(out, "out", x.shape, x.dtype)
    if name == "linear":
        np.copyto(out, x)
    elif name == "relu":
        np.maximum(x, 0, out=out)
    elif name == "sigmoid":
        _sigmoid(x, out)
    else:  # tanh
        np.tanh(x, out=out)
    return out


def activation_backward(name, y, dy, out=None):
    """dx = dy * act'(y), where y is the activation's output."""
    _check_activation(name)
    _check_float(y, "y")
    _check_float(dy, "dy", y.dtype)
    if dy.shape != y.shape:
        raise ValueError(f"dy has shape {dy.shape}, expected the shape of y {y.shape}")
    out = _check_out(out, "out", y.shape, y.dtype)
    if name == "linear":
        np.copyto(out, dy)
    elif name == "relu":
        # relu'(z) = 1 where the output is positive, 0 elsewhere (0 at the kink).
        np.multiply(dy, y > 0, out=out)
    elif name == "sigmoid":
        np.multiply(dy, y * (1 - y), out=out)
    else:  # tanh
        np.multiply(dy, 1 - y * y, out=out)
    return out


# --------------------------------------------------------------------------
# dense layer
# --------------------------------------------------------------------------

def _check_dense_args(x, w, b):
    _check_float(x, "x", ndim=2)
    _check_float(w, "w", x.dtype, ndim=2)
    if x.shape[1] != w.shape[0]:
        raise ValueError(f"x has {x.shape[1]} features but w has shape {w.shape}")
    if b is not None:
        _check_float(b, "b", x.dtype, ndim=1)
        if b.shape[0] != w.shape[1]:
            raise ValueError(f"b has shape {b.shape}, expected ({w.shape[1]},)")


def dense_forward(x, w, b, activation, out=None):
    """out = act(x @ w + b); x (N, K), w (K, M), b (M,) or None."""
    _check_activation(activation)
    _check_dense_args(x, w, b)
    out = _check_out(out, "out", (x.shape[0], w.shape[1]), x.dtype)
    z = x @ w
    if b is not None:
        z += b
    return activation_forward(activation, z, out=out)


def dense_backward(x, w, y, dy, activation, dw, db=None, dx=None):
    """Gradients of a dense layer from its output y and upstream gradient dy.

    dz = dy * act'(y); dw = x.T @ dz; db = dz.sum(0); dx = dz @ w.T.
    dw/db/dx are overwritten (never accumulated). Returns dx (None when dx is None).
    """
    _check_activation(activation)
    _check_dense_args(x, w, None)
    shape = (x.shape[0], w.shape[1])
    _check_float(y, "y", x.dtype)
    _check_float(dy, "dy", x.dtype)
    if y.shape != shape:
        raise ValueError(f"y has shape {y.shape}, expected {shape}")
    if dy.shape != shape:
        raise ValueError(f"dy has shape {dy.shape}, expected {shape}")
    if dw is None:
        raise ValueError("dw is required")
    _check_out(dw, "dw", w.shape, x.dtype)
    if db is not None:
        _check_out(db, "db", (w.shape[1],), x.dtype)
    if dx is not None:
        _check_out(dx, "dx", x.shape, x.dtype)

    dz = activation_backward(activation, y, dy)
    np.matmul(x.T, dz, out=dw)
    if db is not None:
        np.sum(dz, axis=0, out=db)
    if dx is not None:
        np.matmul(dz, w.T, out=dx)
    return dx


# --------------------------------------------------------------------------
# softmax and the fused softmax + cross-entropy
# --------------------------------------------------------------------------

def softmax(x, out=None):
    """Row-wise softmax of a 2-D array, with the row maximum subtracted first."""
    _check_float(x, "x", ndim=2)
    out = _check_out(out, "out", x.shape, x.dtype)
    shifted = x - x.max(axis=1, keepdims=True)
    e = np.exp(shifted)
    np.divide(e, e.sum(axis=1, keepdims=True), out=out)
    return out


def softmax_cross_entropy(logits, targets, grad=None):
    """Mean cross-entropy of softmax(logits) against targets, and its gradient.

    targets: integer class ids (N,) or one-hot / probability rows (N, C) of the
    logits' dtype. loss = mean_i [logsumexp(z_i) - sum_c y_ic z_ic];
    grad = (softmax(z) - y) / N, written into ``grad`` when given.
    """
    _check_float(logits, "logits", ndim=2)
    n, c = logits.shape
    if n == 0:
        raise ValueError("logits must have at least one row")
    if not isinstance(targets, np.ndarray):
        raise TypeError(f"targets must be a numpy.ndarray, got {type(targets).__name__}")
    integer_targets = targets.dtype.kind in "iu"
    if integer_targets:
        if targets.shape != (n,):
            raise ValueError(f"integer targets must have shape ({n},), got {targets.shape}")
        bad = (targets < 0) | (targets >= c)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise ValueError(f"targets[{i}] = {targets[i]} is out of range for {c} classes")
    else:
        _check_float(targets, "targets", logits.dtype)
        if targets.shape != (n, c):
            raise ValueError(f"targets must have shape ({n}, {c}) or ({n},), got {targets.shape}")
    grad = _check_out(grad, "grad", (n, c), logits.dtype)

    # The loss is accumulated in float64 whatever the input dtype: it is a
    # single number and the reference should not lose digits on it.
    z = logits.astype(np.float64)
    row_max = z.max(axis=1, keepdims=True)
    lse = row_max[:, 0] + np.log(np.exp(z - row_max).sum(axis=1))
    if integer_targets:
        target_logit = z[np.arange(n), targets]
    else:
        target_logit = (targets.astype(np.float64) * z).sum(axis=1)
    loss = float(np.mean(lse - target_logit))

    softmax(logits, out=grad)
    if integer_targets:
        grad[np.arange(n), targets] -= 1
    else:
        grad -= targets
    grad /= n
    return loss, grad


# --------------------------------------------------------------------------
# optimizer
# --------------------------------------------------------------------------

def sgd_step(param, grad, velocity, *, lr, momentum=0.0, nesterov=False, weight_decay=0.0):
    """One in-place SGD step (momentum, Nesterov, L2 weight decay).

    g = grad + weight_decay * param
    momentum == 0: param -= lr * g            (velocity may be None)
    otherwise:     v = momentum * v + g
                   param -= lr * (g + momentum * v) if nesterov else lr * v
    """
    _check_float(param, "param")
    _check_float(grad, "grad", param.dtype)
    if grad.shape != param.shape:
        raise ValueError(f"grad has shape {grad.shape}, expected the shape of param {param.shape}")
    if momentum != 0.0:
        if velocity is None:
            raise ValueError("velocity is required when momentum != 0")
        _check_float(velocity, "velocity", param.dtype)
        if velocity.shape != param.shape:
            raise ValueError(f"velocity has shape {velocity.shape}, expected {param.shape}")

    g = grad + weight_decay * param if weight_decay != 0.0 else grad
    if momentum == 0.0:
        param -= lr * g
        return None
    velocity *= momentum
    velocity += g
    if nesterov:
        param -= lr * (g + momentum * velocity)
    else:
        param -= lr * velocity
    return None
