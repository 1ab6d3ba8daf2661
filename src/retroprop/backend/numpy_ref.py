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

# Same names as backend/cpu.py (docs/BACKEND.md): derivative from the output
# (fusable into dense/conv) or from the input (elementwise only).
FUSED_ACTIVATIONS = ("linear", "relu", "sigmoid", "tanh", "step", "leaky_relu", "elu")
INPUT_DERIVATIVE_ACTIVATIONS = ("arctan", "softplus", "gelu", "swish", "mish")
ELEMENTWISE_ACTIVATIONS = FUSED_ACTIVATIONS + INPUT_DERIVATIVE_ACTIVATIONS
ACTIVATION_DEFAULT_PARAMS = {"sigmoid": 1.0, "leaky_relu": 0.01, "elu": 1.0}

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


def _check_activation(name, allowed=FUSED_ACTIVATIONS):
    if name not in allowed:
        raise ValueError(f"unknown activation {name!r}; expected one of {allowed}")


def _activation_param(name, param):
    """The activation's parameter (default when None), checked like the C backend does."""
    if param is None:
        return ACTIVATION_DEFAULT_PARAMS.get(name, 0.0)
    param = float(param)
    if not np.isfinite(param):
        raise ValueError(f"{name}: parameter must be finite, got {param}")
    if name == "sigmoid" and not param > 0:
        raise ValueError(f"sigmoid: slope must be > 0, got {param}")
    if name in ("leaky_relu", "elu") and param < 0:
        raise ValueError(f"{name}: alpha must be >= 0, got {param}")
    return param


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
# elementwise activations
# --------------------------------------------------------------------------
# Written as the textbook formulas (gelu with tanh, softplus with logaddexp),
# not the forms the C kernels use, so that the two check each other.

def _sigmoid(x, out):
    # exp(-|x|) never overflows; the two branches are the same function:
    # 1 / (1 + e^-x) for x >= 0 and e^x / (1 + e^x) for x < 0.
    positive = x >= 0
    e = np.exp(-np.abs(x))
    numerator = np.where(positive, np.ones_like(e), e)
    np.divide(numerator, 1.0 + e, out=out)
    return out


_GELU_K = np.sqrt(2.0 / np.pi)
_GELU_C = 0.044715


def activation_forward(name, x, out=None, *, param=None):
    """Elementwise activation ``name`` (one of ELEMENTWISE_ACTIVATIONS) of x.

    ``param`` is the sigmoid slope a (sigmoid(a x)) or the leaky_relu / elu
    alpha; None means the default (ACTIVATION_DEFAULT_PARAMS)."""
    _check_activation(name, ELEMENTWISE_ACTIVATIONS)
    a = _activation_param(name, param)
    _check_float(x, "x")
    out = _check_out(out, "out", x.shape, x.dtype)
    if name == "linear":
        np.copyto(out, x)
    elif name == "relu":
        np.maximum(x, 0, out=out)
    elif name == "sigmoid":
        _sigmoid(x * x.dtype.type(a), out)
    elif name == "tanh":
        np.tanh(x, out=out)
    elif name == "step":
        np.copyto(out, np.where(np.isnan(x), x, x >= 0))   # Heaviside with H(0) = 1; NaN stays NaN
    elif name == "leaky_relu":
        np.copyto(out, np.where(x > 0, x, a * x))
    elif name == "elu":
        # exponential of min(x, 0) only: the branch np.where drops cannot overflow.
        np.copyto(out, np.where(x > 0, x, a * np.expm1(np.minimum(x, 0))))
    elif name == "arctan":
        np.arctan(x, out=out)
    elif name == "softplus":
        np.logaddexp(0, x, out=out)
    elif name == "gelu":
        # tanh approximation, PyTorch's gelu(approximate="tanh").
        with np.errstate(over="ignore"):
            u = _GELU_K * (x + _GELU_C * x ** 3)
        np.copyto(out, 0.5 * x * (1 + np.tanh(u)))
    elif name == "swish":
        np.copyto(out, x * _sigmoid(x, np.empty_like(x)))
    else:  # mish: x tanh(softplus(x))
        np.copyto(out, x * np.tanh(np.logaddexp(0, x)))
    return out


def _input_derivative(name, x):
    """act'(x) for the activations whose derivative needs the input."""
    if name == "arctan":
        with np.errstate(over="ignore"):
            return 1 / (1 + x * x)
    if name == "softplus":
        return _sigmoid(x, np.empty_like(x))
    if name == "gelu":
        # Past |x| = 1e4 tanh has saturated; clipping keeps x^2 finite in u'.
        xc = np.clip(x, -1e4, 1e4)
        t = np.tanh(_GELU_K * (xc + _GELU_C * xc ** 3))
        du = _GELU_K * (1 + 3 * _GELU_C * xc * xc)
        return 0.5 * (1 + t) + 0.5 * xc * (1 - t * t) * du
    s = _sigmoid(x, np.empty_like(x))
    if name == "mish":
        # t + x s (1 - t^2); x s -> 0 where t' vanishes, so clip x as for gelu.
        t = np.tanh(np.logaddexp(0, x))
        return t + np.clip(x, -1e4, 1e4) * s * (1 - t * t)
    return s + x * s * (1 - s)  # swish


def activation_backward(name, y, dy, out=None, *, x=None, param=None):
    """dx = dy * act'(z).

    For FUSED_ACTIVATIONS the derivative is written from the output y = act(z);
    for INPUT_DERIVATIVE_ACTIVATIONS it needs the input ``x`` = z (keyword) and
    y may be None. ``param`` as in :func:`activation_forward`."""
    _check_activation(name, ELEMENTWISE_ACTIVATIONS)
    a = _activation_param(name, param)
    if name in INPUT_DERIVATIVE_ACTIVATIONS:
        if x is None:
            raise ValueError(f"activation_backward: {name}'s derivative needs the input x")
        src, src_name = x, "x"
    else:
        src, src_name = y, "y"
    _check_float(src, src_name)
    _check_float(dy, "dy", src.dtype)
    if dy.shape != src.shape:
        raise ValueError(f"dy has shape {dy.shape}, expected the shape of {src_name} {src.shape}")
    out = _check_out(out, "out", src.shape, src.dtype)
    if name == "linear":
        np.copyto(out, dy)
    elif name == "relu":
        # relu'(z) = 1 where the output is positive, 0 elsewhere (0 at the kink).
        np.multiply(dy, y > 0, out=out)
    elif name == "sigmoid":
        np.multiply(dy, a * y * (1 - y), out=out)
    elif name == "tanh":
        np.multiply(dy, 1 - y * y, out=out)
    elif name == "step":
        out[...] = 0                         # no gradient flows through a step
    elif name == "leaky_relu":
        np.multiply(dy, np.where(y > 0, 1, a), out=out)
    elif name == "elu":
        # alpha e^z = y + alpha on the negative side.
        np.multiply(dy, np.where(y > 0, 1, y + a), out=out)
    else:
        np.multiply(dy, _input_derivative(name, x), out=out)
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


def dense_forward(x, w, b, activation, out=None, *, param=None, logits=None):
    """out = act(x @ w + b); x (N, K), w (K, M), b (M,) or None; activation in
    FUSED_ACTIVATIONS, ``param`` its parameter (None: default). Activation
    "softmax" (row-wise) also writes x @ w + b into ``logits`` (allocated when None)."""
    if activation != "softmax":
        _check_activation(activation)
    _check_dense_args(x, w, b)
    out = _check_out(out, "out", (x.shape[0], w.shape[1]), x.dtype)
    z = x @ w
    if b is not None:
        z += b
    if activation == "softmax":
        logits = _check_out(logits, "logits", out.shape, x.dtype)
        logits[...] = z
        return softmax(logits, out=out)
    return activation_forward(activation, z, out=out, param=param)


def dense_backward(x, w, y, dy, activation, dw, db=None, dx=None, *, param=None):
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

    dz = activation_backward(activation, y, dy, param=param)
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

def _count_nonfinite_step(step_fn, param, grad, states, **kwargs):
    """check_only for the reference steps: run the step on copies of the
    parameter and its state, count NaN/Inf among the new values."""
    param_copy = param.copy()
    state_copies = [None if a is None else a.copy() for a in states]
    with np.errstate(over="ignore", invalid="ignore"):
        step_fn(param_copy, grad, *state_copies, **kwargs)
    return int(sum(np.count_nonzero(~np.isfinite(a)) for a in [param_copy] + state_copies
                   if a is not None))


def sgd_step(param, grad, velocity, *, lr, momentum=0.0, nesterov=False, weight_decay=0.0,
             check_only=False):
    """One in-place SGD step (momentum, Nesterov, L2 weight decay).

    g = grad + weight_decay * param
    momentum == 0: param -= lr * g            (velocity may be None)
    otherwise:     v = momentum * v + g
                   param -= lr * (g + momentum * v) if nesterov else lr * v
    check_only: change nothing, return how many new values would be NaN/Inf.
    """
    if check_only:
        return _count_nonfinite_step(sgd_step, param, grad,
                                     [velocity if momentum != 0.0 else None], lr=lr,
                                     momentum=momentum, nesterov=nesterov,
                                     weight_decay=weight_decay)
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
        return 0
    velocity *= momentum
    velocity += g
    if nesterov:
        param -= lr * (g + momentum * velocity)
    else:
        param -= lr * velocity
    return 0


# --------------------------------------------------------------------------
# convolution and pooling over NHWC images
# --------------------------------------------------------------------------
# stride, dilation and pool_size are (h, w) pairs; padding is explicit zero
# padding (top, bottom, left, right). Written with whole-array slices: one
# slice per kernel offset (ky, kx) picks that offset's input for every output
# pixel at once.

def conv2d_output_hw(h, w, kernel_hw, stride=(1, 1), dilation=(1, 1), padding=(0, 0, 0, 0)):
    """(OH, OW) of a convolution; values < 1 mean the kernel does not fit."""
    top, bottom, left, right = padding
    eff_kh = (kernel_hw[0] - 1) * dilation[0] + 1
    eff_kw = (kernel_hw[1] - 1) * dilation[1] + 1
    return ((h + top + bottom - eff_kh) // stride[0] + 1,
            (w + left + right - eff_kw) // stride[1] + 1)


def pool2d_output_hw(h, w, pool_size, stride, padding=(0, 0, 0, 0)):
    """(OH, OW) of a pooling window sweep."""
    top, bottom, left, right = padding
    return ((h + top + bottom - pool_size[0]) // stride[0] + 1,
            (w + left + right - pool_size[1]) // stride[1] + 1)


def _window_slices(ky, kx, oh, ow, stride, dilation):
    """Index of the padded input seen by kernel offset (ky, kx) from every output pixel."""
    y0, x0 = ky * dilation[0], kx * dilation[1]
    return (slice(None), slice(y0, y0 + (oh - 1) * stride[0] + 1, stride[0]),
            slice(x0, x0 + (ow - 1) * stride[1] + 1, stride[1]), slice(None))


def _pad_hw(x, padding, value=0.0):
    top, bottom, left, right = padding
    return np.pad(x, ((0, 0), (top, bottom), (left, right), (0, 0)), constant_values=value)


def _check_conv_args(x, w, stride, dilation, padding):
    _check_float(x, "x", ndim=4)
    _check_float(w, "w", x.dtype, ndim=4)
    if w.shape[2] != x.shape[3]:
        raise ValueError(f"x has {x.shape[3]} channels but w has shape {w.shape}")
    if min(stride) < 1 or min(dilation) < 1 or min(padding) < 0:
        raise ValueError(f"bad geometry: stride {stride}, dilation {dilation}, padding {padding}")
    oh, ow = conv2d_output_hw(x.shape[1], x.shape[2], w.shape[:2], stride, dilation, padding)
    if oh < 1 or ow < 1:
        raise ValueError(f"kernel {w.shape[:2]} (dilation {dilation}) is larger than the input "
                         f"{x.shape[1:3]} padded by {padding}")
    return oh, ow


def _im2col(x, kh, kw, oh, ow, stride, dilation, padding):
    """(N*OH*OW, KH*KW*C) column matrix, columns ordered (ky, kx, c) like w's rows."""
    xp = _pad_hw(x, padding)
    patches = np.stack([xp[_window_slices(ky, kx, oh, ow, stride, dilation)]
                        for ky in range(kh) for kx in range(kw)], axis=3)
    return patches.reshape(x.shape[0] * oh * ow, -1)


def conv2d_workspace_size(x_shape, w_shape, stride=(1, 1), dilation=(1, 1),
                          padding=(0, 0, 0, 0), backward=True):
    """This backend allocates its temporaries itself: it needs no workspace."""
    return 0


def conv2d_forward(x, w, b, activation, stride=(1, 1), dilation=(1, 1), padding=(0, 0, 0, 0),
                   out=None, workspace=None):
    """out = act(conv2d(x, w) + b): x (N, H, W, C), w (KH, KW, C, F), b (F,) or None.
    workspace is accepted for interface compatibility and not used."""
    _check_activation(activation)
    oh, ow = _check_conv_args(x, w, stride, dilation, padding)
    kh, kw, _, f = w.shape
    out = _check_out(out, "out", (x.shape[0], oh, ow, f), x.dtype)
    z = _im2col(x, kh, kw, oh, ow, stride, dilation, padding) @ w.reshape(-1, f)
    if b is not None:
        z += b
    activation_forward(activation, z.reshape(out.shape), out=out)
    return out


def conv2d_backward(x, w, y, dy, activation, dw, db=None, dx=None, *, stride=(1, 1),
                    dilation=(1, 1), padding=(0, 0, 0, 0), workspace=None):
    """dz = dy * act'(y); dw = col^T dz; db = sum of dz; dx = the scatter of dz w^T.

    dw/db/dx are overwritten (db and dx may be None); workspace is not used. Returns dx."""
    _check_activation(activation)
    oh, ow = _check_conv_args(x, w, stride, dilation, padding)
    kh, kw, c, f = w.shape
    dz = activation_backward(activation, y, dy).reshape(-1, f)
    col = _im2col(x, kh, kw, oh, ow, stride, dilation, padding)
    _check_out(dw, "dw", w.shape, x.dtype)
    dw[...] = (col.T @ dz).reshape(w.shape)
    if db is not None:
        _check_out(db, "db", (f,), x.dtype)
        np.sum(dz, axis=0, out=db)
    if dx is not None:
        _check_out(dx, "dx", x.shape, x.dtype)
        dcol = (dz @ w.reshape(-1, f).T).reshape(x.shape[0], oh, ow, kh, kw, c)
        dxp = _pad_hw(np.zeros_like(x), padding)
        for ky in range(kh):
            for kx in range(kw):
                dxp[_window_slices(ky, kx, oh, ow, stride, dilation)] += dcol[:, :, :, ky, kx, :]
        top, _, left, _ = padding
        dx[...] = dxp[:, top:top + x.shape[1], left:left + x.shape[2], :]
    return dx


def conv2d_backward_data(dy, w, x_shape, *, stride=(1, 1), dilation=(1, 1),
                         padding=(0, 0, 0, 0), out=None, workspace=None):
    """dx = the scatter of dy w^T back to the input positions of a conv2d of an input
    of shape ``x_shape``: conv2d's input gradient alone, the forward pass of a
    transposed convolution. workspace is not used. Returns ``out``."""
    _check_float(dy, "dy", ndim=4)
    x_shape = tuple(int(s) for s in x_shape)
    x = np.zeros(x_shape, dtype=dy.dtype)
    oh, ow = _check_conv_args(x, w, stride, dilation, padding)
    kh, kw, c, f = w.shape
    if dy.shape != (x_shape[0], oh, ow, f):
        raise ValueError(f"dy must have shape {(x_shape[0], oh, ow, f)}, got {dy.shape}")
    out = _check_out(out, "out", x_shape, dy.dtype)
    dcol = (dy.reshape(-1, f) @ w.reshape(-1, f).T).reshape(x_shape[0], oh, ow, kh, kw, c)
    dxp = _pad_hw(x, padding)
    for ky in range(kh):
        for kx in range(kw):
            dxp[_window_slices(ky, kx, oh, ow, stride, dilation)] += dcol[:, :, :, ky, kx, :]
    top, _, left, _ = padding
    out[...] = dxp[:, top:top + x_shape[1], left:left + x_shape[2], :]
    return out


def _check_pool_args(shape, pool_size, stride, padding):
    if len(shape) != 4:
        raise ValueError(f"expected an input of shape (N, H, W, C), got {shape}")
    if min(pool_size) < 1 or min(stride) < 1:
        raise ValueError(f"pool_size {pool_size} and stride {stride} must be >= 1")
    top, bottom, left, right = padding
    if max(top, bottom) >= pool_size[0] or max(left, right) >= pool_size[1] or min(padding) < 0:
        raise ValueError(f"padding {padding} must lie in [0, window {pool_size})")
    oh, ow = pool2d_output_hw(shape[1], shape[2], pool_size, stride, padding)
    if oh < 1 or ow < 1:
        raise ValueError(f"window {pool_size} is larger than the padded input")
    return oh, ow


def maxpool2d_forward(x, pool_size, stride, padding=(0, 0, 0, 0), out=None, argmax=None):
    """(out, argmax): window maxima and their int32 positions (iy * W + ix) * C + c within
    the image; ties go to the first cell in row-major window order."""
    _check_float(x, "x", ndim=4)
    oh, ow = _check_pool_args(x.shape, pool_size, stride, padding)
    n, h, w, c = x.shape
    out = _check_out(out, "out", (n, oh, ow, c), x.dtype)
    xp = _pad_hw(x, padding, value=-np.inf)
    ph, pw = pool_size
    windows = np.stack([xp[_window_slices(ky, kx, oh, ow, stride, (1, 1))]
                        for ky in range(ph) for kx in range(pw)], axis=3)
    k = np.argmax(windows, axis=3)          # first maximum: row-major window order
    out[...] = np.take_along_axis(windows, k[:, :, :, None, :], axis=3)[:, :, :, 0, :]
    top, _, left, _ = padding
    iy = np.arange(oh)[None, :, None, None] * stride[0] - top + k // pw
    ix = np.arange(ow)[None, None, :, None] * stride[1] - left + k % pw
    position = (iy * w + ix) * c + np.arange(c)
    if argmax is None:
        argmax = np.empty(out.shape, dtype=np.int32)
    argmax[...] = position
    return out, argmax


def maxpool2d_backward(argmax, dy, pool_size, stride, padding, dx):
    """dx (the forward input's shape, overwritten) = 0, then dx[argmax] += dy."""
    _check_float(dy, "dy", ndim=4)
    _check_out(dx, "dx", dx.shape, dy.dtype)
    n = dx.shape[0]
    flat = dx.reshape(n, -1)
    flat[...] = 0
    rows = np.repeat(np.arange(n), argmax[0].size)
    np.add.at(flat, (rows, argmax.reshape(-1)), dy.reshape(-1))
    return dx


def _window_counts(h, w, oh, ow, pool_size, stride, padding, dtype):
    """Number of real (unpadded) cells in each window, shape (1, OH, OW, 1)."""
    ones = _pad_hw(np.ones((1, h, w, 1), dtype=dtype), padding)
    return sum(ones[_window_slices(ky, kx, oh, ow, stride, (1, 1))]
               for ky in range(pool_size[0]) for kx in range(pool_size[1]))


def avgpool2d_forward(x, pool_size, stride, padding=(0, 0, 0, 0), out=None):
    """Window means of x (N, H, W, C); padding cells are left out of each mean."""
    _check_float(x, "x", ndim=4)
    oh, ow = _check_pool_args(x.shape, pool_size, stride, padding)
    n, h, w, c = x.shape
    out = _check_out(out, "out", (n, oh, ow, c), x.dtype)
    xp = _pad_hw(x, padding)
    total = sum(xp[_window_slices(ky, kx, oh, ow, stride, (1, 1))]
                for ky in range(pool_size[0]) for kx in range(pool_size[1]))
    np.divide(total, _window_counts(h, w, oh, ow, pool_size, stride, padding, x.dtype), out=out)
    return out


def avgpool2d_backward(dy, pool_size, stride, padding, dx):
    """dx (the forward input's shape, overwritten): each window's dy / (its real cell
    count) added to each of its real cells."""
    _check_float(dy, "dy", ndim=4)
    _check_out(dx, "dx", dx.shape, dy.dtype)
    n, h, w, c = dx.shape
    oh, ow = _check_pool_args(dx.shape, pool_size, stride, padding)
    share = dy / _window_counts(h, w, oh, ow, pool_size, stride, padding, dy.dtype)
    dxp = _pad_hw(np.zeros_like(dx), padding)
    for ky in range(pool_size[0]):
        for kx in range(pool_size[1]):
            dxp[_window_slices(ky, kx, oh, ow, stride, (1, 1))] += share
    top, _, left, _ = padding
    dx[...] = dxp[:, top:top + h, left:left + w, :]
    return dx


# ---------------------------------------------------------------- adaptive optimizers
# Reference versions of the fused C steps (csrc/include/retroprop/optim.h):
# the same formulas, written as plain NumPy expressions in the param dtype.

def _check_state(arr, argname, param):
    _check_float(arr, argname, param.dtype)
    if arr.shape != param.shape:
        raise ValueError(f"{argname} has shape {arr.shape}, expected the shape of param "
                         f"{param.shape}")


def adam_step(param, grad, m, v, *, lr, beta_1, beta_2, epsilon, step, weight_decay=0.0,
              decoupled=False, check_only=False):
    """One in-place Adam / AdamW step; ``step`` is t >= 1 (for the bias corrections).

    Adam:  g = grad + weight_decay * param.  AdamW: g = grad and
    param -= lr * weight_decay * param (decoupled decay). Then
    m = b1 m + (1 - b1) g;  v = b2 v + (1 - b2) g^2;
    param -= lr * (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + epsilon).
    check_only: change nothing, return how many new values would be NaN/Inf.
    """
    if check_only:
        return _count_nonfinite_step(adam_step, param, grad, [m, v], lr=lr, beta_1=beta_1,
                                     beta_2=beta_2, epsilon=epsilon, step=step,
                                     weight_decay=weight_decay, decoupled=decoupled)
    _check_float(param, "param")
    _check_state(grad, "grad", param)
    _check_state(m, "m", param)
    _check_state(v, "v", param)
    if int(step) < 1:
        raise ValueError(f"step must be an integer >= 1, got {step}")
    dt = param.dtype.type
    c1 = dt(1.0 / (1.0 - beta_1 ** int(step)))
    c2 = dt(1.0 / (1.0 - beta_2 ** int(step)))
    lr, b1, b2, eps, wd = dt(lr), dt(beta_1), dt(beta_2), dt(epsilon), dt(weight_decay)
    g = grad if (decoupled or weight_decay == 0.0) else grad + wd * param
    m[...] = b1 * m + (dt(1) - b1) * g
    v[...] = b2 * v + (dt(1) - b2) * g * g
    shrink = dt(1) - lr * wd if decoupled else dt(1)
    param[...] = param * shrink - lr * (m * c1) / (np.sqrt(v * c2) + eps)
    return 0


def rmsprop_step(param, grad, ms, mom, *, lr, rho, momentum=0.0, epsilon, check_only=False):
    """One in-place RMSprop step.

    ms = rho ms + (1 - rho) grad^2; u = lr grad / (sqrt(ms) + epsilon);
    momentum == 0: param -= u (``mom`` may be None); otherwise
    mom = momentum mom + u; param -= mom.
    check_only: change nothing, return how many new values would be NaN/Inf.
    """
    if check_only:
        return _count_nonfinite_step(rmsprop_step, param, grad,
                                     [ms, mom if momentum != 0.0 else None], lr=lr, rho=rho,
                                     momentum=momentum, epsilon=epsilon)
    _check_float(param, "param")
    _check_state(grad, "grad", param)
    _check_state(ms, "ms", param)
    dt = param.dtype.type
    lr, rho, eps = dt(lr), dt(rho), dt(epsilon)
    ms[...] = rho * ms + (dt(1) - rho) * grad * grad
    update = lr * grad / (np.sqrt(ms) + eps)
    if momentum == 0.0:
        param -= update
        return 0
    if mom is None:
        raise ValueError("mom is required when momentum != 0")
    _check_state(mom, "mom", param)
    mom[...] = dt(momentum) * mom + update
    param -= mom
    return 0


def adagrad_step(param, grad, acc, *, lr, epsilon, check_only=False):
    """One in-place Adagrad step: acc += grad^2; param -= lr grad / (sqrt(acc) + epsilon).

    check_only: change nothing, return how many new values would be NaN/Inf."""
    if check_only:
        return _count_nonfinite_step(adagrad_step, param, grad, [acc], lr=lr, epsilon=epsilon)
    _check_float(param, "param")
    _check_state(grad, "grad", param)
    _check_state(acc, "acc", param)
    dt = param.dtype.type
    acc += grad * grad
    param -= dt(lr) * grad / (np.sqrt(acc) + dt(epsilon))
    return 0


def find_nonfinite(x):
    """Flat (C-order) index of the first NaN or Inf in the float array x, or -1."""
    _check_float(x, "x")
    bad = np.flatnonzero(~np.isfinite(x))
    return int(bad[0]) if bad.size else -1


def gather_rows(x, index, out=None):
    """out[r] = x[index[r]] (see the cpu backend)."""
    index = np.asarray(index, dtype=np.int64)
    if index.ndim != 1:
        raise TypeError("gather_rows: index must be a 1-D int64 array")
    if index.size and (index.min() < 0 or index.max() >= x.shape[0]):
        raise IndexError(f"gather_rows: index values must lie in [0, {x.shape[0]})")
    if out is None:
        return x[index]
    if np.may_share_memory(out, x):
        raise ValueError("gather_rows: out overlaps x")
    np.take(x, index, axis=0, out=out)
    return out


def optimizer_step(rule, params, grads, state0, state1, *, lr, mode="check_apply",
                   momentum=0.0, nesterov=False, weight_decay=0.0, beta_1=0.9, beta_2=0.999,
                   epsilon=1e-7, step=1, decoupled=False, rho=0.9):
    """The single-tensor steps over a list of parameters (see the C backend's
    optimizer_step): "check" runs each in check-only mode, "check_apply"
    applies all of them only when every check passes. Returns the index of
    the first parameter whose update is not finite, or -1."""
    if mode not in ("apply", "check", "check_apply"):
        raise ValueError(f"mode must be 'apply', 'check' or 'check_apply', got {mode!r}")
    if not len(params) == len(grads) == len(state0) == len(state1):
        raise ValueError("params, grads, state0 and state1 must have the same length")

    def one(i, check_only):
        p, g, s0, s1 = params[i], grads[i], state0[i], state1[i]
        if rule == "sgd":
            return sgd_step(p, g, s0, lr=lr, momentum=momentum, nesterov=nesterov,
                            weight_decay=weight_decay, check_only=check_only)
        if rule == "adam":
            return adam_step(p, g, s0, s1, lr=lr, beta_1=beta_1, beta_2=beta_2, epsilon=epsilon,
                             step=step, weight_decay=weight_decay, decoupled=decoupled,
                             check_only=check_only)
        if rule == "rmsprop":
            return rmsprop_step(p, g, s0, s1, lr=lr, rho=rho, momentum=momentum,
                                epsilon=epsilon, check_only=check_only)
        if rule == "adagrad":
            return adagrad_step(p, g, s0, lr=lr, epsilon=epsilon, check_only=check_only)
        raise ValueError(f"rule must be 'sgd', 'adam', 'rmsprop' or 'adagrad', got {rule!r}")

    if mode != "apply":
        for i in range(len(params)):
            if one(i, True):
                return i
        if mode == "check":
            return -1
    for i in range(len(params)):
        one(i, False)
    return -1


# --------------------------------------------------------------------------
# batch normalisation: x is channels-last (..., C), statistics per channel
# --------------------------------------------------------------------------

def _as_rows(x, argname="x"):
    """x (..., C) as a 2-D (rows, C) array (a view when possible)."""
    _check_float(x, argname)
    if x.ndim < 1 or x.size == 0:
        raise ValueError(f"{argname} must be a non-empty array (..., C), got shape {x.shape}")
    return x.reshape(-1, x.shape[-1])


def _check_channel_vector(arr, argname, dtype, c, optional=True):
    if arr is None and optional:
        return None
    _check_float(arr, argname, dtype)
    if arr.shape != (c,):
        raise ValueError(f"{argname} has shape {arr.shape}, expected ({c},)")
    return arr


def batchnorm_stats(x, mean=None, var=None, *, moving_mean=None, moving_var=None, momentum=0.0):
    """(mean, var): per-channel mean and biased variance (divided by the count) of x (..., C).

    With moving_mean and moving_var: moving = momentum * moving + (1 - momentum) * batch,
    in place, unless the variance of finite inputs overflows x's dtype (ValueError)."""
    rows = _as_rows(x)
    c = rows.shape[1]
    mean = _check_out(mean, "mean", (c,), x.dtype)
    var = _check_out(var, "var", (c,), x.dtype)
    if (moving_mean is None) != (moving_var is None):
        raise ValueError("batchnorm_stats: give both moving_mean and moving_var, or neither")
    m = rows.mean(axis=0, dtype=np.float64)
    mean[...] = m
    with np.errstate(over="ignore"):
        var[...] = ((rows - m) ** 2).mean(axis=0)
    if moving_mean is not None:
        if np.isinf(var).any() and np.isfinite(mean).all():
            raise ValueError(f"batchnorm_stats: the variance of finite inputs overflows {x.dtype} "
                             f"(inputs too large in magnitude); scale the inputs or use float64")
        keep = x.dtype.type(momentum)
        for moving, batch in ((moving_mean, mean), (moving_var, var)):
            _check_channel_vector(moving, "moving statistics", x.dtype, c, optional=False)
            moving *= keep
            moving += (x.dtype.type(1) - keep) * batch
    return mean, var


def batchnorm_apply(x, mean, var, gamma, beta, *, epsilon, out=None, activation="linear"):
    """out = act((x - mean) / sqrt(var + epsilon) * gamma + beta); gamma/beta None mean 1/0;
    activation one of FUSED_ACTIVATIONS."""
    _check_activation(activation)
    rows = _as_rows(x)
    c = rows.shape[1]
    _check_channel_vector(mean, "mean", x.dtype, c, optional=False)
    _check_channel_vector(var, "var", x.dtype, c, optional=False)
    _check_channel_vector(gamma, "gamma", x.dtype, c)
    _check_channel_vector(beta, "beta", x.dtype, c)
    out = _check_out(out, "out", x.shape, x.dtype)
    y = (x - mean) / np.sqrt(var.astype(np.float64) + epsilon)
    if gamma is not None:
        y = y * gamma
    if beta is not None:
        y = y + beta
    out[...] = y
    if activation != "linear":
        activation_forward(activation, out, out)
    return out


def batchnorm_backward(x, dy, mean, var, gamma, *, epsilon, training, dgamma=None, dbeta=None,
                       dx=None, y=None, activation="linear"):
    """Gradients of batchnorm_apply; overwrites dgamma/dbeta/dx (each may be None). Returns dx.

    With an activation: of batchnorm_apply(..., activation=...), whose output is y
    (dy * act'(y) takes the place of dy).

    With xhat = (x - mean) / sqrt(var + epsilon) and n rows per channel:
    dgamma = sum(dy * xhat); dbeta = sum(dy);
    training (mean/var are x's batch statistics):
        dx = gamma / sqrt(var + eps) / n * (n dy - sum(dy) - xhat sum(dy xhat))
    otherwise (constant statistics): dx = gamma / sqrt(var + eps) * dy.
    """
    rows = _as_rows(x)
    c = rows.shape[1]
    _check_float(dy, "dy", x.dtype)
    if dy.shape != x.shape:
        raise ValueError(f"dy has shape {dy.shape}, expected {x.shape}")
    _check_channel_vector(mean, "mean", x.dtype, c, optional=False)
    _check_channel_vector(var, "var", x.dtype, c, optional=False)
    _check_channel_vector(gamma, "gamma", x.dtype, c)
    _check_activation(activation)
    if activation != "linear":
        if y is None:
            raise ValueError(f"batchnorm_backward: activation {activation!r} needs the output y")
        dy = activation_backward(activation, y, dy)
    g = dy.reshape(-1, c).astype(np.float64)
    inv_std = 1.0 / np.sqrt(var.astype(np.float64) + epsilon)
    xhat = (rows.astype(np.float64) - mean) * inv_std
    sum_dy = g.sum(axis=0)
    sum_dy_xhat = (g * xhat).sum(axis=0)
    if dgamma is not None:
        _check_channel_vector(dgamma, "dgamma", x.dtype, c)[...] = sum_dy_xhat
    if dbeta is not None:
        _check_channel_vector(dbeta, "dbeta", x.dtype, c)[...] = sum_dy
    if dx is None:
        return None
    dx = _check_out(dx, "dx", x.shape, x.dtype)
    scale = inv_std if gamma is None else gamma * inv_std
    n = g.shape[0]
    if training:
        d = scale / n * (n * g - sum_dy - xhat * sum_dy_xhat)
    else:
        d = scale * g
    dx[...] = d.reshape(x.shape)
    return dx


# --------------------------------------------------------------------------
# residual sum (+ activation), global average pooling
# --------------------------------------------------------------------------

def add_act(a, b, activation="linear", out=None, *, param=None):
    """out = act(a + b) (activation one of FUSED_ACTIVATIONS)."""
    _check_activation(activation)
    _check_float(a, "a")
    _check_float(b, "b", a.dtype)
    if b.shape != a.shape:
        raise ValueError(f"add_act: a and b must have one shape, got {a.shape} and {b.shape}")
    out = _check_out(out, "out", a.shape, a.dtype)
    total = a + b
    return activation_forward(activation, total, out, param=param)


def global_avgpool_forward(x, out=None):
    """out (N, C) = the mean of x (N, ..., C) over the axes between the first and last."""
    _check_float(x, "x")
    if x.ndim < 3 or x.size == 0:
        raise ValueError(f"global_avgpool_forward: expected x of shape (N, ..., C), got {x.shape}")
    out = _check_out(out, "out", (x.shape[0], x.shape[-1]), x.dtype)
    out[...] = x.reshape(x.shape[0], -1, x.shape[-1]).mean(axis=1, dtype=np.float64)
    return out


def global_avgpool_backward(dy, dx):
    """dx (N, ..., C) = dy (N, C) / (positions per sample), at every position."""
    _check_float(dx, "dx")
    _check_float(dy, "dy", dx.dtype)
    if dx.ndim < 3 or dy.shape != (dx.shape[0], dx.shape[-1]):
        raise ValueError(f"global_avgpool_backward: dy {dy.shape} does not match dx {dx.shape}")
    positions = dx.size // (dx.shape[0] * dx.shape[-1])
    dx[...] = (dy / positions)[(slice(None),) + (None,) * (dx.ndim - 2) + (slice(None),)]
    return dx
# The elementwise and merge operations of graph models (NumPy in both backends).
from .graph_ops import (add, add_n, batch_matmul, batch_matmul_backward,  # noqa: E402,F401
                        binary_backward, binary_forward, broadcast_to, concatenate,
                        maximum_backward, maximum_forward, product_except, reduce_sum,
                        split, unary_backward, unary_forward)
