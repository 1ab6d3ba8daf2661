"""The C backend: NumPy arrays in and out, the kernels of ``_core`` underneath.

This module is the one place that decides about copies and allocation:
inputs that are not C-contiguous are copied (the kernels need contiguity);
outputs must already be contiguous arrays of the right dtype, or are
allocated here when not given. Workspaces the kernels need are cached per
shape and thread, so a training loop allocates nothing per step.
See docs/BACKEND.md for the contract shared with ``numpy_ref``.
"""
import os
import threading
import warnings

import numpy as np


def _load_core():
    """Import the extension with a short OpenMP spin-wait unless the user chose one.

    Threads of libgomp (GCC's OpenMP runtime) waiting at a barrier or for the
    next parallel region spin 300,000 pause instructions (about 20 ms here)
    before they sleep. On a machine busy with other processes that spin
    burns the core's share while the partner thread waits for its turn: with
    a CPU-bound process on each core, two threads trained an MLP 3-6x slower
    than one. 300 turns (about 20 us) keep back-to-back regions from paying a
    wake-up while giving the core away soon after (docs/BACKEND.md,
    "Threads on a busy machine"). libgomp reads the variable once, when the
    extension loads it; the environment is restored afterwards, so child
    processes and other libraries see the user's own. OMP_WAIT_POLICY or
    GOMP_SPINCOUNT set by the user win."""
    if "OMP_WAIT_POLICY" in os.environ or "GOMP_SPINCOUNT" in os.environ:
        from .. import _core
        return _core, "as set by the user"
    os.environ["GOMP_SPINCOUNT"] = str(OPENMP_SPIN_COUNT)
    try:
        from .. import _core
    finally:
        os.environ.pop("GOMP_SPINCOUNT", None)
    return _core, f"GOMP_SPINCOUNT={OPENMP_SPIN_COUNT}"


OPENMP_SPIN_COUNT = 300
_core, _OPENMP_WAIT = _load_core()

# Activations (docs/BACKEND.md): FUSED ones have their derivative taken from
# the output and may be applied in the GEMM write-back; the INPUT_DERIVATIVE
# ones are elementwise only and their backward reads the pre-activation x.
FUSED_ACTIVATIONS = ("linear", "relu", "sigmoid", "tanh", "step", "leaky_relu", "elu")
INPUT_DERIVATIVE_ACTIVATIONS = ("arctan", "softplus", "gelu", "swish", "mish")
ELEMENTWISE_ACTIVATIONS = FUSED_ACTIVATIONS + INPUT_DERIVATIVE_ACTIVATIONS
ACTIVATION_DEFAULT_PARAMS = {"sigmoid": 1.0, "leaky_relu": 0.01, "elu": 1.0}
_REAL = (np.dtype(np.float32), np.dtype(np.float64))
_INT64 = np.dtype(np.int64)
_local = threading.local()


def _input(arr, name, dtype=None):
    """A C-contiguous float32/float64 view or copy of ``arr``; TypeError otherwise."""
    # The common case first, in as few attribute lookups as possible: this
    # runs for every array of every kernel call.
    if type(arr) is np.ndarray and arr.flags.c_contiguous:
        arr_dtype = arr.dtype
        if arr_dtype is dtype or (dtype is None and arr_dtype in _REAL):
            return arr
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
    key = (shape, dtype)     # a shape tuple and a dtype: both hashable as they are
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

MAX_THREADS = 512   # RP_MAX_THREADS of csrc/include/retroprop/runtime.h


def set_num_threads(n):
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)):
        raise TypeError(f"set_num_threads: expected an int >= 1, got {n!r}")
    # Checked here, on the Python int: the binding's C int would turn
    # 2**31 into an OverflowError instead.
    if not 1 <= int(n) <= MAX_THREADS:
        raise ValueError(f"set_num_threads: expected 1 <= n <= {MAX_THREADS}, got {n}")
    _core.set_num_threads(int(n))
    if n > 1 and not _core.have_openmp() and not _warned["threads"]:
        _warned["threads"] = True
        warnings.warn(f"set_num_threads({n}): this retroprop was built without OpenMP, so "
                      f"its kernels run on one thread (rebuild with gcc, or clang with "
                      f"libomp, for more)", RuntimeWarning, stacklevel=3)


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
        "openmp_wait": _OPENMP_WAIT,
        "forked_single_threaded": _core.forked_single_threaded(),
        "compiler": _core.compiler(),
        "cuda": False,
        "cuda_note": "built without CUDA (RETROPROP_CUDA=OFF)",
    }


def set_simd(name):
    """Switch the kernels to 'generic' or 'avx2+fma' (for tests and benchmarks).

    The environment variable ``RETROPROP_SIMD`` (generic, avx2 or avx2+fma)
    does the same when retroprop is imported. A level the CPU lacks is
    clamped to the best it has; the level in use is returned.
    """
    return _core.set_simd(name)


def _apply_environment():
    """RETROPROP_SIMD at import, and a warning when OpenMP was asked for but missing."""
    requested = os.environ.get("RETROPROP_SIMD", "").strip().lower()
    if requested:
        if requested not in SIMD_LEVELS:
            warnings.warn(f"RETROPROP_SIMD={requested!r} is not one of "
                          f"{', '.join(SIMD_LEVELS)}; using {_core.simd_levels()[1]}",
                          RuntimeWarning, stacklevel=2)
        else:
            got = _core.set_simd(requested)
            if got != SIMD_LEVELS[requested]:
                warnings.warn(f"RETROPROP_SIMD={requested}: this CPU lacks it; using {got}",
                              RuntimeWarning, stacklevel=2)
    try:
        from .._build_config import OPENMP
    except ImportError:        # built some other way: nothing recorded
        OPENMP = None
    if OPENMP == "missing":
        warnings.warn("retroprop was built without OpenMP (the C compiler had none): the "
                      "kernels run on one thread. Rebuild with gcc, or clang with libomp; "
                      "build with -Ccmake.define.RETROPROP_OPENMP=OFF to mean it.",
                      RuntimeWarning, stacklevel=2)


# RETROPROP_SIMD values and the level each one selects.
SIMD_LEVELS = {"generic": "generic", "avx2": "avx2+fma", "avx2+fma": "avx2+fma"}
_warned = {"threads": False}
_apply_environment()


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


def dense_forward(x, w, b, activation, out=None, *, param=None, logits=None):
    x = _input(x, "x")
    w = _input(w, "w", x.dtype)
    if b is not None:
        b = _input(b, "b", x.dtype)
    if x.ndim != 2 or w.ndim != 2:
        raise ValueError(f"dense_forward: expected 2-D x and w, got shapes {x.shape} and {w.shape}")
    # Outputs given by the caller are checked by the binding (dtype,
    # contiguity, writability, shape), as on every layer's hot path.
    if out is None:
        out = np.empty((x.shape[0], w.shape[1]), dtype=x.dtype)
    if activation == "softmax":
        if logits is None:
            logits = np.empty((x.shape[0], w.shape[1]), dtype=x.dtype)
        return _core.dense_forward(x, w, b, "softmax", out, None, logits)
    return _core.dense_forward(x, w, b, _fused(activation), out, param)


def dense_backward(x, w, y, dy, activation, dw, db=None, dx=None, *, param=None):
    x = _input(x, "x")
    w = _input(w, "w", x.dtype)
    y = _input(y, "y", x.dtype)
    dy = _input(dy, "dy", x.dtype)
    if x.ndim != 2 or w.ndim != 2:
        raise ValueError(f"dense_backward: expected 2-D x and w, got shapes {x.shape} and {w.shape}")
    dz = _workspace(dy.shape, dy.dtype)
    return _core.dense_backward(x, w, y, dy, _fused(activation), dz, dw, db, dx, param)


def _elementwise(name):
    if name not in ELEMENTWISE_ACTIVATIONS:
        raise ValueError(f"activation: expected one of {ELEMENTWISE_ACTIVATIONS}, got {name!r}")
    return name


def activation_forward(name, x, out=None, *, param=None):
    """out = act(x) elementwise; param: sigmoid slope, leaky_relu/elu alpha (None: default)."""
    x = _input(x, "x")
    out = _output(out, "out", x.shape, x.dtype)
    return _core.act_forward(_elementwise(name), x, out, param)


def activation_backward(name, y, dy, out=None, *, x=None, param=None):
    """dx = dy * act'(z): from the output y for FUSED_ACTIVATIONS, from the input x
    (keyword, required) for INPUT_DERIVATIVE_ACTIVATIONS, where y may be None."""
    name = _elementwise(name)
    if name in INPUT_DERIVATIVE_ACTIVATIONS:
        if x is None:
            raise ValueError(f"activation_backward: {name}'s derivative needs the input x")
        src = x = _input(x, "x")
        y = None
    else:
        src = y = _input(y, "y")
        x = None
    dy = _input(dy, "dy", src.dtype)
    out = _output(out, "out", src.shape, src.dtype)
    return _core.act_backward(name, y, dy, out, x, param)


def softmax(x, out=None):
    x = _input(x, "x")
    out = _output(out, "out", x.shape, x.dtype)
    return _core.softmax(x, out)


def softmax_cross_entropy(logits, targets, grad=None):
    logits = _input(logits, "logits")
    if logits.ndim != 2:
        raise ValueError(f"softmax_cross_entropy: expected logits of shape (N, C), got {logits.shape}")
    if (type(targets) is np.ndarray and targets.dtype is _INT64 and targets.ndim == 1
            and targets.flags.c_contiguous):
        # Class ids as the Trainer prepares them: the binding checks their range.
        grad = _output(grad, "grad", logits.shape, logits.dtype)
        return _core.softmax_cross_entropy(logits, targets, None, grad), grad
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


def sgd_step(param, grad, velocity, *, lr, momentum=0.0, nesterov=False, weight_decay=0.0,
             check_only=False):
    # param and velocity are updated in place, so they cannot be copies.
    grad = _input(grad, "grad", param.dtype)
    return _core.sgd_step(param, grad, velocity, float(lr), float(momentum), bool(nesterov),
                          float(weight_decay), bool(check_only))


# ---------------------------------------------------------------- convolution and pooling (NHWC)
# Geometry arguments: stride, dilation and pool_size are (h, w) pairs of
# ints >= 1; padding is explicit zero padding (top, bottom, left, right).
# The layers turn "valid"/"same" into those numbers.

# Upper bound on one im2col pass, in elements (16 MiB of float32): larger
# batches are processed a chunk of images at a time, so the workspace
# stays bounded whatever the batch size.
COL_WORKSPACE_ELEMENTS = 1 << 22


def _shared_workspace(count, dtype):
    """A 1-D scratch array of ``count`` elements, shared by all convolution
    layers (one per thread and dtype): grown to the largest need, then reused,
    so steady-state training allocates nothing. Callers never hold it across calls."""
    cache = getattr(_local, "col_workspaces", None)
    if cache is None:
        cache = _local.col_workspaces = {}
    key = np.dtype(dtype).str
    buf = cache.get(key)
    if buf is None or buf.size < count:
        buf = cache[key] = np.empty(count, dtype=dtype)
    return buf[:count]


def conv2d_output_hw(h, w, kernel_hw, stride=(1, 1), dilation=(1, 1), padding=(0, 0, 0, 0)):
    """(OH, OW) of a convolution; values < 1 mean the kernel does not fit."""
    top, bottom, left, right = padding
    eff_kh = (kernel_hw[0] - 1) * dilation[0] + 1
    eff_kw = (kernel_hw[1] - 1) * dilation[1] + 1
    return ((h + top + bottom - eff_kh) // stride[0] + 1,
            (w + left + right - eff_kw) // stride[1] + 1)


def _col_elements(x_shape, w_shape, oh, ow, stride, padding):
    """Size of the im2col buffer: whole images, at most COL_WORKSPACE_ELEMENTS
    (but at least one image); 0 for a pointwise convolution, which needs none."""
    if w_shape[0] == 1 and w_shape[1] == 1 and tuple(stride) == (1, 1) \
            and tuple(padding) == (0, 0, 0, 0):
        return 0
    per_image = max(oh, 1) * max(ow, 1) * w_shape[0] * w_shape[1] * w_shape[2]
    return max(1, min(x_shape[0], COL_WORKSPACE_ELEMENTS // per_image)) * per_image


def conv2d_workspace_size(x_shape, w_shape, stride=(1, 1), dilation=(1, 1),
                          padding=(0, 0, 0, 0), backward=True):
    """Elements of the ``workspace`` array conv2d_forward (backward=False) or
    conv2d_backward (backward=True) needs: the im2col buffer, plus dz in backward."""
    oh, ow = conv2d_output_hw(x_shape[1], x_shape[2], w_shape[:2], stride, dilation, padding)
    _check_conv_sizes(x_shape, w_shape, padding, oh, ow)
    col = _col_elements(x_shape, w_shape, oh, ow, stride, padding)
    return col + (x_shape[0] * oh * ow * w_shape[3] if backward else 0)


def _scratch(workspace, count, dtype):
    """``count`` elements of the caller's workspace, or of the per-thread fallback."""
    if workspace is None:
        return _shared_workspace(count, dtype)
    if not isinstance(workspace, np.ndarray) or workspace.ndim != 1 \
            or not workspace.flags.c_contiguous or workspace.dtype != dtype:
        raise TypeError(f"workspace: expected a contiguous 1-D {dtype} array")
    if workspace.size < count:
        raise ValueError(f"workspace: expected at least {count} elements, got {workspace.size}")
    return workspace[:count]


def _int_tuple(value, length, name, minimum):
    """``value`` as a tuple of ``length`` ints >= minimum (ValueError otherwise)."""
    try:
        items = tuple(int(v) for v in value)
    except (TypeError, ValueError, OverflowError):
        items = ()
    if len(items) != length or min(items) < minimum:
        raise ValueError(f"{name}: expected {length} integers >= {minimum}, got {value!r}")
    return items


def _conv_args(x, w, stride, dilation, padding):
    if x.ndim != 4 or w.ndim != 4:
        raise ValueError(f"conv2d: expected x (N, H, W, C) and w (KH, KW, C, F), "
                         f"got shapes {x.shape} and {w.shape}")
    stride = _int_tuple(stride, 2, "stride", 1)
    dilation = _int_tuple(dilation, 2, "dilation", 1)
    padding = _int_tuple(padding, 4, "padding", 0)
    oh, ow = conv2d_output_hw(x.shape[1], x.shape[2], w.shape[:2], stride, dilation, padding)
    if oh < 1 or ow < 1:
        raise ValueError(f"conv2d: kernel {w.shape[:2]} with dilation {dilation} is larger than "
                         f"the input {x.shape[1:3]} padded by {padding}")
    _check_conv_sizes(x.shape, w.shape, padding, oh, ow)
    return stride, dilation, padding, oh, ow


def _check_conv_sizes(x_shape, w_shape, padding, oh, ow):
    _check_kernel_sizes("conv2d", (
        ("padded height", x_shape[1] + padding[0] + padding[1]),
        ("padded width", x_shape[2] + padding[2] + padding[3]),
        ("column matrix of one image", oh * ow * w_shape[0] * w_shape[1] * w_shape[2])))


# The kernels index with C ints: a geometry whose sizes exceed this is
# refused here, before any workspace is allocated for it (the binding
# checks again).
_KERNEL_INT_MAX = 2**31 - 1


def _check_kernel_sizes(op, sizes):
    for name, value in sizes:
        if value > _KERNEL_INT_MAX:
            raise ValueError(f"{op}: {name} {value} exceeds the kernel limit {_KERNEL_INT_MAX} "
                             f"(check the strides, dilation and padding)")


def conv2d_forward(x, w, b, activation, stride=(1, 1), dilation=(1, 1), padding=(0, 0, 0, 0),
                   out=None, workspace=None):
    """out = act(conv2d(x, w) + b): x (N, H, W, C), w (KH, KW, C, F), b (F,) or None.

    workspace: scratch array of at least conv2d_workspace_size(..., backward=False)
    elements (a per-thread cached one when None)."""
    x = _input(x, "x")
    w = _input(w, "w", x.dtype)
    if b is not None:
        b = _input(b, "b", x.dtype)
    stride, dilation, padding, oh, ow = _conv_args(x, w, stride, dilation, padding)
    col_size = _col_elements(x.shape, w.shape, oh, ow, stride, padding)
    col = _scratch(workspace, col_size, x.dtype) if col_size else None
    out = _output(out, "out", (x.shape[0], oh, ow, w.shape[3]), x.dtype)
    return _core.conv2d_forward(x, w, b, _fused(activation), stride, dilation, padding, col, out)


# The convolution algorithms (docs/BACKEND.md, "Convolution algorithms"):
# "auto" lets the selector's threshold table choose per layer; the others
# are forced for tests and benchmarks, wherever they apply.
CONV_ALGORITHMS = tuple(_core.CONV_ALGORITHMS)


def conv2d_force_algorithm(name):
    """Run every convolution with algorithm ``name`` where it applies ("auto":
    the selector decides). Process-wide; returns the previous setting. The
    environment variable RETROPROP_CONV_ALGORITHM sets it at import."""
    return _core.conv2d_force_algorithm(name)


def conv2d_algorithm(x, w, activation="linear", stride=(1, 1), dilation=(1, 1),
                     padding=(0, 0, 0, 0), name=None):
    """The algorithm conv2d_forward runs for x (N, H, W, C) and w (KH, KW, C, F)
    (conv2d_backward: that of activation "linear"); with ``name``, whether that
    algorithm can compute this convolution."""
    x = _input(x, "x")
    w = _input(w, "w", x.dtype)
    stride, dilation, padding, _, _ = _conv_args(x, w, stride, dilation, padding)
    return _core.conv2d_algorithm(x, w, _fused(activation), stride, dilation, padding, name)


def _force_from_environment():
    name = os.environ.get("RETROPROP_CONV_ALGORITHM")
    if name:
        try:
            conv2d_force_algorithm(name)
        except ValueError as e:
            raise ValueError(f"RETROPROP_CONV_ALGORITHM: {e}") from None


_force_from_environment()


def conv2d_backward(x, w, y, dy, activation, dw, db=None, dx=None, *, stride=(1, 1),
                    dilation=(1, 1), padding=(0, 0, 0, 0), workspace=None):
    """dz = dy * act'(y); dw = im2col(x)^T dz; db = sum of dz; dx = col2im(dz w^T).

    Overwrites dw/db/dx (db and dx may be None). The column matrix is
    recomputed here rather than kept from the forward pass. workspace: scratch
    array of at least conv2d_workspace_size(...) elements, holding the column
    matrix and dz (per-thread cached arrays when None). Returns dx."""
    x = _input(x, "x")
    w = _input(w, "w", x.dtype)
    y = _input(y, "y", x.dtype)
    dy = _input(dy, "dy", x.dtype)
    stride, dilation, padding, oh, ow = _conv_args(x, w, stride, dilation, padding)
    col_size = _col_elements(x.shape, w.shape, oh, ow, stride, padding)
    if workspace is None:
        col = _shared_workspace(col_size, x.dtype) if col_size else None
        dz = _workspace(dy.shape, dy.dtype)
    else:
        scratch = _scratch(workspace, col_size + dy.size, x.dtype)
        col = scratch[:col_size] if col_size else None
        dz = scratch[col_size:].reshape(dy.shape)
    return _core.conv2d_backward(x, w, y, dy, _fused(activation), stride, dilation, padding,
                                 col, dz, dw, db, dx)


def conv2d_backward_data(dy, w, x_shape, *, stride=(1, 1), dilation=(1, 1),
                         padding=(0, 0, 0, 0), out=None, workspace=None):
    """dx = col2im(dy w^T) for a conv2d of an input of shape ``x_shape`` (N, H, W, C):
    the input gradient alone (no dW, linear), which is also the forward pass of a
    transposed convolution (layers/conv_transpose.py). dy (N, OH, OW, F), w (KH, KW, C, F).
    workspace: at least conv2d_workspace_size(x_shape, w.shape, ..., backward=False)
    elements (a per-thread cached array when None). Returns ``out``."""
    dy = _input(dy, "dy")
    w = _input(w, "w", dy.dtype)
    try:
        x_shape = tuple(int(s) for s in x_shape)
    except (TypeError, ValueError):
        x_shape = ()
    if len(x_shape) != 4 or min(x_shape) < 1:
        raise ValueError(f"conv2d_backward_data: x_shape must be 4 positive ints (N, H, W, C), "
                         f"got {x_shape!r}")
    out = _output(out, "out", x_shape, dy.dtype)
    stride, dilation, padding, oh, ow = _conv_args(out, w, stride, dilation, padding)
    expected = (x_shape[0], oh, ow, w.shape[3])
    if dy.shape != expected:
        raise ValueError(f"conv2d_backward_data: dy must have shape {expected}, got {dy.shape}")
    col_size = _col_elements(x_shape, w.shape, oh, ow, stride, padding)
    col = _scratch(workspace, col_size, dy.dtype) if col_size else None
    return _core.conv2d_backward_data(dy, w, stride, dilation, padding, col, out)


def pool2d_output_hw(h, w, pool_size, stride, padding=(0, 0, 0, 0)):
    """(OH, OW) of a pooling window sweep."""
    top, bottom, left, right = padding
    return ((h + top + bottom - pool_size[0]) // stride[0] + 1,
            (w + left + right - pool_size[1]) // stride[1] + 1)


def _pool_out(x, out, name, pool_size, stride, padding):
    if x.ndim != 4:
        raise ValueError(f"pool2d: expected x of shape (N, H, W, C), got {x.shape}")
    pool_size = _int_tuple(pool_size, 2, "pool_size", 1)
    stride = _int_tuple(stride, 2, "stride", 1)
    padding = _int_tuple(padding, 4, "padding", 0)
    oh, ow = pool2d_output_hw(x.shape[1], x.shape[2], pool_size, stride, padding)
    if oh < 1 or ow < 1:
        raise ValueError(f"pool2d: window {tuple(pool_size)} is larger than the padded input "
                         f"of {x.shape[1:3]} with padding {tuple(padding)}")
    _check_kernel_sizes("pool2d", (
        ("padded height", x.shape[1] + padding[0] + padding[1]),
        ("padded width", x.shape[2] + padding[2] + padding[3])))
    return _output(out, name, (x.shape[0], oh, ow, x.shape[3]), x.dtype)


def maxpool2d_forward(x, pool_size, stride, padding=(0, 0, 0, 0), out=None, argmax=None):
    """(out, argmax): the window maxima of x (N, H, W, C) and, as int32, where each one
    was taken: (iy * W + ix) * C + c within its image. Ties go to the first cell in
    row-major window order; padding cells never win."""
    x = _input(x, "x")
    out = _pool_out(x, out, "out", pool_size, stride, padding)
    if argmax is None:
        argmax = np.empty(out.shape, dtype=np.int32)
    return _core.maxpool2d_forward(x, tuple(pool_size), tuple(stride), tuple(padding), out, argmax)


def maxpool2d_backward(argmax, dy, pool_size, stride, padding, dx):
    """dx (the forward input's shape, overwritten) = 0, then dx[argmax] += dy."""
    dy = _input(dy, "dy")
    return _core.maxpool2d_backward(argmax, dy, tuple(pool_size), tuple(stride), tuple(padding), dx)


def avgpool2d_forward(x, pool_size, stride, padding=(0, 0, 0, 0), out=None):
    """Window means of x (N, H, W, C); padding cells are left out of each mean."""
    x = _input(x, "x")
    out = _pool_out(x, out, "out", pool_size, stride, padding)
    return _core.avgpool2d_forward(x, tuple(pool_size), tuple(stride), tuple(padding), out)


def avgpool2d_backward(dy, pool_size, stride, padding, dx):
    """dx (the forward input's shape, overwritten): each window's dy / (its real cell
    count) added to each of its real cells."""
    dy = _input(dy, "dy")
    return _core.avgpool2d_backward(dy, tuple(pool_size), tuple(stride), tuple(padding), dx)


# ---------------------------------------------------------------- adaptive optimizers
# Same signatures as backend/numpy_ref.py; the C kernels do one fused pass.

def _bias_corrections(beta_1, beta_2, step):
    """1 / (1 - beta^t) for both moments; ``step`` is t, 1 for the first update."""
    step = int(step)
    if step < 1:
        raise ValueError(f"step must be an integer >= 1, got {step}")
    return 1.0 / (1.0 - float(beta_1) ** step), 1.0 / (1.0 - float(beta_2) ** step)


def adam_step(param, grad, m, v, *, lr, beta_1, beta_2, epsilon, step, weight_decay=0.0,
              decoupled=False, check_only=False):
    """In-place Adam (L2 ``weight_decay``) or AdamW (``decoupled=True``) step."""
    grad = _input(grad, "grad", param.dtype)
    c1, c2 = _bias_corrections(beta_1, beta_2, step)
    return _core.adam_step(param, grad, m, v, float(lr), float(beta_1), float(beta_2),
                           float(epsilon), float(weight_decay), bool(decoupled), c1, c2,
                           bool(check_only))


def rmsprop_step(param, grad, ms, mom, *, lr, rho, momentum=0.0, epsilon, check_only=False):
    """In-place RMSprop step; ``mom`` may be None when momentum == 0."""
    grad = _input(grad, "grad", param.dtype)
    return _core.rmsprop_step(param, grad, ms, mom, float(lr), float(rho), float(momentum),
                              float(epsilon), bool(check_only))


def adagrad_step(param, grad, acc, *, lr, epsilon, check_only=False):
    """In-place Adagrad step."""
    grad = _input(grad, "grad", param.dtype)
    return _core.adagrad_step(param, grad, acc, float(lr), float(epsilon), bool(check_only))


def find_nonfinite(x):
    """Flat (C-order) index of the first NaN or Inf in the float array x, or -1."""
    return _core.find_nonfinite(_input(x, "x"))


def gather_rows(x, index, out=None):
    """out[r] = x[index[r]] (a batch of rows picked by a shuffled order), into a
    caller's buffer that can be reused batch after batch. x: C-contiguous, of a
    numeric dtype (rows are copied as bytes: object arrays raise TypeError);
    index: int64 positions in [0, len(x)) (IndexError otherwise)."""
    if not isinstance(x, np.ndarray):
        raise TypeError(f"gather_rows: x must be a numpy array, got {type(x).__name__}")
    if x.ndim < 1:
        raise ValueError("gather_rows: x must have at least one dimension")
    index = np.ascontiguousarray(index, dtype=np.int64)
    if out is None:
        out = np.empty((index.shape[0],) + x.shape[1:], dtype=x.dtype)
    return _core.gather_rows(x, index, out)


_STEP_MODES = ("apply", "check", "check_apply")


def _as_list(items):
    return items if type(items) is list else list(items)


def optimizer_step(rule, params, grads, state0, state1, *, lr, mode="check_apply",
                   momentum=0.0, nesterov=False, weight_decay=0.0, beta_1=0.9, beta_2=0.999,
                   epsilon=1e-7, step=1, decoupled=False, rho=0.9, bounds=None):
    """One step of ``rule`` ("sgd", "adam", "rmsprop", "adagrad") over every
    parameter at once: one C call, one parallel region.

    ``params``, ``grads``, ``state0`` and ``state1`` are parallel lists; the
    state arrays are those of the single-tensor steps (sgd: velocity, None;
    adam: m, v; rmsprop: ms, mom; adagrad: acc, None), None where unused.
    mode "apply" writes; "check" writes nothing; "check_apply" (default)
    writes only when no new value of any parameter or state would be NaN or
    Inf. Returns the index of the first parameter whose update is not finite
    (then nothing was written), or -1.

    ``bounds``: None, or a float64 array of 3 kept from step to step (start
    it at zeros): after a "check_apply" SGD step that was applied it holds
    (1, the largest |parameter|, the largest |velocity|) it wrote. While
    bounds[0] is nonzero, the next "check_apply" step first reads only the
    gradients and, when they are finite and an update from values within the
    bounds provably stays finite, skips the check's pass over parameters,
    velocities and gradients; otherwise it checks as usual. The result is the
    same as without bounds; they are right only while nothing else writes the
    parameters or the optimizer state, so set ``bounds[0] = 0`` after any
    other change. Other modes and rules set bounds[0] to 0."""
    if mode not in _STEP_MODES:
        raise ValueError(f"mode must be one of {_STEP_MODES}, got {mode!r}")
    grads = [_input(g, "grad", p.dtype) for p, g in zip(params, grads)]
    first_bad, _ = _core.optimizer_step(
        rule, _as_list(params), grads, _as_list(state0), _as_list(state1), mode, float(lr),
        **_core_hyperparameters(rule, momentum, nesterov, weight_decay, beta_1, beta_2, epsilon,
                                step, decoupled, rho), bounds=bounds)
    return first_bad


def _core_hyperparameters(rule, momentum, nesterov, weight_decay, beta_1, beta_2, epsilon, step,
                          decoupled, rho):
    """optimizer_step's keyword arguments as the binding takes them."""
    c1, c2 = _bias_corrections(beta_1, beta_2, step) if rule == "adam" else (1.0, 1.0)
    return dict(weight_decay=float(weight_decay), momentum=float(momentum),
                nesterov=bool(nesterov), beta1=float(beta_1), beta2=float(beta_2), c1=c1, c2=c2,
                decoupled=bool(decoupled), rho=float(rho), eps=float(epsilon))


# ---------------------------------------------------------------- step programs

def program(dtype, table, records, n_outputs=1):
    """A step program (retroprop/plan.h): ``records`` run over the arrays of
    ``table``, every array and size checked once here (see _core.Program and
    step.py, which builds them from a model's plan)."""
    return _core.Program(np.dtype(dtype).name, list(table), list(records), int(n_outputs))


RECORD_KINDS = _core.RECORD_KINDS


def program_hyperparameters(rule, momentum=0.0, nesterov=False, weight_decay=0.0, beta_1=0.9,
                            beta_2=0.999, epsilon=1e-7, step=1, decoupled=False, rho=0.9):
    """An optimizer's ``step_hyperparameters()`` as the tuple ``Program.step`` takes."""
    h = _core_hyperparameters(rule, momentum, nesterov, weight_decay, beta_1, beta_2, epsilon,
                              step, decoupled, rho)
    return (h["weight_decay"], h["momentum"], h["nesterov"], h["beta1"], h["beta2"], h["c1"],
            h["c2"], h["decoupled"], h["rho"], h["eps"])


def program_step(program, inputs, rule, params, grads, state0, state1, *, lr, mode, hyper,
                 next_batch=None, bounds=None):
    """A whole step of a one-stretch program in one call: the per-call arrays
    ``inputs``, the optimizer's lists and ``hyper`` (program_hyperparameters),
    the gather ``next_batch`` (x, index, out), a list of them (one per input),
    or None. Returns (status, loss,
    refused index or -1, whether the gather was done)."""
    if next_batch is not None:
        jobs = [next_batch] if isinstance(next_batch, tuple) else next_batch
        next_batch = [(data, np.ascontiguousarray(index, dtype=np.int64), out)
                      for data, index, out in jobs]
    return program.step(inputs, rule, params, grads, state0, state1, mode, float(lr), hyper,
                        next_batch, bounds)


def program_set_optimizer(program, rule, params, grads, state0, state1, *, lr,
                          mode="check_apply", momentum=0.0, nesterov=False, weight_decay=0.0,
                          beta_1=0.9, beta_2=0.999, epsilon=1e-7, step=1, decoupled=False,
                          rho=0.9, bounds=None):
    """The optimizer step of a program's optimizer record: the arguments of
    ``optimizer_step`` (the optimizer's ``step_hyperparameters()``)."""
    if mode not in _STEP_MODES:
        raise ValueError(f"mode must be one of {_STEP_MODES}, got {mode!r}")
    return program.set_optimizer(
        rule, _as_list(params), _as_list(grads), _as_list(state0), _as_list(state1), mode,
        float(lr), **_core_hyperparameters(rule, momentum, nesterov, weight_decay, beta_1,
                                           beta_2, epsilon, step, decoupled, rho),
        bounds=bounds)


# ---------------------------------------------------------------- batch normalisation
# x is channels-last (..., C); statistics are per channel over all other axes.

def _channel_vector(arr, name, dtype, c, optional=True):
    if arr is None and optional:
        return None
    arr = _input(arr, name, dtype)
    if arr.shape != (c,):
        raise ValueError(f"{name}: expected shape ({c},), got {arr.shape}")
    return arr


def batchnorm_stats(x, mean=None, var=None, *, moving_mean=None, moving_var=None, momentum=0.0):
    """(mean, var): per-channel mean and biased variance (divided by the count) of x (..., C).

    With moving_mean and moving_var (C,), also updates them in place:
    moving = momentum * moving + (1 - momentum) * batch (not when the variance
    overflowed: that raises before anything moves)."""
    x = _input(x, "x")
    c = x.shape[-1] if x.ndim else 0
    mean = _output(mean, "mean", (c,), x.dtype)
    var = _output(var, "var", (c,), x.dtype)
    return _core.batchnorm_stats(x, mean, var, moving_mean, moving_var, float(momentum))


def batchnorm_apply(x, mean, var, gamma, beta, *, epsilon, out=None, activation="linear"):
    """out = act((x - mean) / sqrt(var + epsilon) * gamma + beta); gamma/beta None mean 1/0.

    activation: one of FUSED_ACTIVATIONS, applied in the same pass (a BN + ReLU pair)."""
    x = _input(x, "x")
    c = x.shape[-1] if x.ndim else 0
    mean = _channel_vector(mean, "mean", x.dtype, c, optional=False)
    var = _channel_vector(var, "var", x.dtype, c, optional=False)
    gamma = _channel_vector(gamma, "gamma", x.dtype, c)
    beta = _channel_vector(beta, "beta", x.dtype, c)
    out = _output(out, "out", x.shape, x.dtype)
    return _core.batchnorm_apply(x, mean, var, gamma, beta, float(epsilon), out,
                                 _fused(activation))


def batchnorm_backward(x, dy, mean, var, gamma, *, epsilon, training, dgamma=None, dbeta=None,
                       dx=None, y=None, activation="linear"):
    """Gradients of batchnorm_apply; overwrites dgamma/dbeta/dx (each may be None). Returns dx.

    training=True: mean/var are x's batch statistics and are differentiated too;
    training=False: they are constants (moving statistics). With an activation,
    the gradients of batchnorm_apply(..., activation=...), whose output is y:
    dy * act'(y) replaces dy, in the same passes."""
    x = _input(x, "x")
    dy = _input(dy, "dy", x.dtype)
    c = x.shape[-1] if x.ndim else 0
    mean = _channel_vector(mean, "mean", x.dtype, c, optional=False)
    var = _channel_vector(var, "var", x.dtype, c, optional=False)
    gamma = _channel_vector(gamma, "gamma", x.dtype, c)
    activation = _fused(activation)
    if activation != "linear":
        if y is None:
            raise ValueError(f"batchnorm_backward: activation {activation!r} needs the output y")
        y = _input(y, "y", x.dtype)
    return _core.batchnorm_backward(x, dy, mean, var, gamma, float(epsilon), bool(training),
                                    dgamma, dbeta, dx, y, activation)


# ---------------------------------------------------------------- residual sum, global pooling

def add_act(a, b, activation="linear", out=None, *, param=None):
    """out = act(a + b) in one pass: a residual block's sum and the activation after
    it (one of FUSED_ACTIVATIONS), or, linear, the sum of its two paths' gradients.
    out may be a or b."""
    a = _input(a, "a")
    b = _input(b, "b", a.dtype)
    if b.shape != a.shape:
        raise ValueError(f"add_act: a and b must have one shape, got {a.shape} and {b.shape}")
    out = _output(out, "out", a.shape, a.dtype)
    return _core.add_act(a, b, _fused(activation), out, param)


def global_avgpool_forward(x, out=None):
    """out (N, C) = the mean of x (N, ..., C) over every axis between the first and last."""
    x = _input(x, "x")
    if x.ndim < 3:
        raise ValueError(f"global_avgpool_forward: expected x of shape (N, ..., C), got {x.shape}")
    out = _output(out, "out", (x.shape[0], x.shape[-1]), x.dtype)
    return _core.global_avgpool_forward(x, out)


def global_avgpool_backward(dy, dx):
    """dx (N, ..., C; overwritten) = dy (N, C) divided by the number of positions, at each."""
    if not isinstance(dx, np.ndarray) or not dx.flags.c_contiguous:
        raise TypeError("dx: expected a C-contiguous numpy.ndarray")
    dy = _input(dy, "dy", dx.dtype)
    return _core.global_avgpool_backward(dy, dx)


# The elementwise and merge operations of graph models (NumPy in both backends).
from .graph_ops import (add, add_n, batch_matmul, batch_matmul_backward,  # noqa: E402,F401
                        binary_backward, binary_forward, broadcast_to, concatenate,
                        maximum_backward, maximum_forward, product_except, reduce_sum,
                        split, unary_backward, unary_forward)
