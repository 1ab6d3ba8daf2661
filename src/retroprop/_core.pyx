# cython: language_level=3, boundscheck=False, wraparound=False
"""Thin bindings to the C kernels in csrc/.

Each function checks what the C code relies on (dtype, C-contiguity, shapes,
sizes that fit a C int), then releases the GIL and calls C. It never copies:
the backend module (backend/cpu.py) decides about copies and allocation.
Arguments are refused with TypeError (dtype, contiguity) or ValueError (shape).
"""
import numpy as np
cimport numpy as cnp
from libc.stdint cimport int64_t
from libc.stdlib cimport free, malloc, realloc
from libc.string cimport memset

cnp.import_array()

cdef extern from "retroprop/runtime.h":
    ctypedef enum rp_simd_level:
        RP_SIMD_GENERIC
        RP_SIMD_AVX2
    int rp_get_num_threads()
    int rp_threads_setting()
    void rp_set_num_threads(int n)
    enum: RP_MAX_THREADS
    rp_simd_level rp_simd_best()
    rp_simd_level rp_simd_in_use()
    rp_simd_level rp_simd_set(rp_simd_level level)
    const char *rp_simd_name(rp_simd_level level)
    int rp_have_openmp()
    const char *rp_compiler()
    int rp_forked_single_threaded()

cdef extern from "retroprop/act.h":
    ctypedef enum rp_act:
        RP_ACT_LINEAR
        RP_ACT_RELU
        RP_ACT_SIGMOID
        RP_ACT_TANH
        RP_ACT_STEP
        RP_ACT_LEAKY_RELU
        RP_ACT_ELU
        RP_ACT_ARCTAN
        RP_ACT_SOFTPLUS
        RP_ACT_GELU
        RP_ACT_SWISH
        RP_ACT_MISH
    int rp_act_derivative_needs_input(rp_act act)
    double rp_act_default_param(rp_act act)
    void rp_act_forward_f32(rp_act act, double param, size_t n, const float *x, float *y) nogil
    void rp_act_forward_f64(rp_act act, double param, size_t n, const double *x, double *y) nogil
    void rp_act_backward_f32(rp_act act, double param, size_t n, const float *x, const float *y,
                             const float *dy, float *dx) nogil
    void rp_act_backward_f64(rp_act act, double param, size_t n, const double *x, const double *y,
                             const double *dy, double *dx) nogil

cdef extern from "retroprop/gemm.h":
    void rp_gemm_f32(int trans_a, int trans_b, int m, int n, int k, float alpha,
                     const float *a, int lda, const float *b, int ldb, float beta,
                     float *c, int ldc, const float *bias, rp_act act) nogil
    void rp_gemm_f64(int trans_a, int trans_b, int m, int n, int k, double alpha,
                     const double *a, int lda, const double *b, int ldb, double beta,
                     double *c, int ldc, const double *bias, rp_act act) nogil

cdef extern from "retroprop/dense.h":
    void rp_dense_forward_f32(int n_batch, int n_in, int n_out, const float *x, const float *w,
                              const float *b, rp_act act, double act_param, float *y) nogil
    void rp_dense_forward_f64(int n_batch, int n_in, int n_out, const double *x, const double *w,
                              const double *b, rp_act act, double act_param, double *y) nogil
    void rp_dense_forward_softmax_f32(int n_batch, int n_in, int n_out, const float *x,
                                      const float *w, const float *b, float *logits, float *y) nogil
    void rp_dense_forward_softmax_f64(int n_batch, int n_in, int n_out, const double *x,
                                      const double *w, const double *b, double *logits,
                                      double *y) nogil
    void rp_dense_backward_f32(int n_batch, int n_in, int n_out, const float *x, const float *w,
                               const float *y, const float *dy, rp_act act, double act_param, float *dz,
                               float *dw, float *db, float *dx) nogil
    void rp_dense_backward_f64(int n_batch, int n_in, int n_out, const double *x, const double *w,
                               const double *y, const double *dy, rp_act act, double act_param, double *dz,
                               double *dw, double *db, double *dx) nogil

cdef extern from "retroprop/loss.h":
    void rp_softmax_f32(int n, int c, const float *x, float *out) nogil
    void rp_softmax_f64(int n, int c, const double *x, double *out) nogil
    double rp_softmax_xent_f32(int n, int c, const float *z, const int64_t *labels,
                               const float *targets, float *grad) nogil
    double rp_softmax_xent_f64(int n, int c, const double *z, const int64_t *labels,
                               const double *targets, double *grad) nogil

cdef extern from "retroprop/optim.h":
    size_t rp_sgd_step_f32(size_t n, float *param, const float *grad, float *velocity, float lr,
                           float momentum, int nesterov, float weight_decay, int check_only) nogil
    size_t rp_sgd_step_f64(size_t n, double *param, const double *grad, double *velocity,
                           double lr, double momentum, int nesterov, double weight_decay,
                           int check_only) nogil


# Activations whose derivative comes from the output: the GEMM write-back
# (gemm, dense, conv2d) can fuse them.
ACTIVATIONS = {"linear": RP_ACT_LINEAR, "relu": RP_ACT_RELU,
               "sigmoid": RP_ACT_SIGMOID, "tanh": RP_ACT_TANH, "step": RP_ACT_STEP,
               "leaky_relu": RP_ACT_LEAKY_RELU, "elu": RP_ACT_ELU}
# Every elementwise activation (act_forward / act_backward); the last five
# need the input for their derivative.
ELEMENTWISE_ACTIVATIONS = dict(ACTIVATIONS, arctan=RP_ACT_ARCTAN, softplus=RP_ACT_SOFTPLUS,
                               gelu=RP_ACT_GELU, swish=RP_ACT_SWISH, mish=RP_ACT_MISH)
_INT_MAX = 2147483647
_F32 = np.dtype(np.float32)
_F64 = np.dtype(np.float64)


# ---------------------------------------------------------------- validation

cdef int _real_kind(object arr, str name) except -1:
    """0 for float32, 1 for float64; TypeError for anything else or non-contiguous.

    Read through NumPy's C API (type number, byte order, flags): these checks
    run on every kernel call, and Python-level ``arr.dtype``/``arr.flags``
    lookups cost about a microsecond each time."""
    if not isinstance(arr, np.ndarray):
        raise TypeError(f"{name}: expected a numpy.ndarray, got {type(arr).__name__}")
    cdef cnp.ndarray a = <cnp.ndarray>arr
    cdef int type_num = cnp.PyArray_TYPE(a)
    cdef int kind
    if type_num == cnp.NPY_FLOAT32 and cnp.PyArray_ISNOTSWAPPED(a):
        kind = 0
    elif type_num == cnp.NPY_FLOAT64 and cnp.PyArray_ISNOTSWAPPED(a):
        kind = 1
    else:
        raise TypeError(f"{name}: expected dtype float32 or float64 (native byte order), "
                        f"got {arr.dtype}")
    if not cnp.PyArray_IS_C_CONTIGUOUS(a):
        raise TypeError(f"{name}: expected a C-contiguous array (use numpy.ascontiguousarray)")
    return kind


cdef int _same_kind(object arr, str name, int kind, int writable=0) except -1:
    cdef int k = _real_kind(arr, name)
    if k != kind:
        raise TypeError(f"{name}: expected dtype {'float64' if kind else 'float32'}, got {arr.dtype}")
    if writable and not cnp.PyArray_ISWRITEABLE(<cnp.ndarray>arr):
        raise ValueError(f"{name}: output array is read-only")
    return k


cdef int _shape(object arr, str name, tuple expected) except -1:
    if arr.shape != expected:
        raise ValueError(f"{name}: expected shape {expected}, got {arr.shape}")
    return 0


# Shape checks through the C API: these run several times per kernel call,
# where building shape tuples would cost more than a small kernel. Call them
# after _real_kind/_same_kind (which make sure arr is an ndarray).
cdef int _shape1(object arr, str name, Py_ssize_t d0) except -1:
    cdef cnp.ndarray a = <cnp.ndarray>arr
    if cnp.PyArray_NDIM(a) != 1 or cnp.PyArray_DIM(a, 0) != d0:
        raise ValueError(f"{name}: expected shape {(d0,)}, got {arr.shape}")
    return 0


cdef int _shape2(object arr, str name, Py_ssize_t d0, Py_ssize_t d1) except -1:
    cdef cnp.ndarray a = <cnp.ndarray>arr
    if cnp.PyArray_NDIM(a) != 2 or cnp.PyArray_DIM(a, 0) != d0 or cnp.PyArray_DIM(a, 1) != d1:
        raise ValueError(f"{name}: expected shape {(d0, d1)}, got {arr.shape}")
    return 0


cdef int _same_shape(object arr, str name, object ref) except -1:
    """arr has the shape of the ndarray ref."""
    cdef cnp.ndarray a = <cnp.ndarray>arr
    cdef cnp.ndarray r = <cnp.ndarray>ref
    cdef int nd = cnp.PyArray_NDIM(a)
    cdef int i
    cdef bint same = nd == cnp.PyArray_NDIM(r)
    if same:
        for i in range(nd):
            if cnp.PyArray_DIM(a, i) != cnp.PyArray_DIM(r, i):
                same = False
                break
    if not same:
        raise ValueError(f"{name}: expected shape {ref.shape}, got {arr.shape}")
    return 0


cdef inline int _ndim(object arr):
    return cnp.PyArray_NDIM(<cnp.ndarray>arr)


cdef inline Py_ssize_t _dim(object arr, int axis):
    return cnp.PyArray_DIM(<cnp.ndarray>arr, axis)


cdef int _fits_int(str name, Py_ssize_t value) except -1:
    if value > 2147483647:
        raise ValueError(f"{name}: dimension {value} exceeds the kernel limit {_INT_MAX}")
    return 0


cdef int _fits_int_big(str name, object value) except -1:
    """_fits_int for a size formed as a Python int (products and sums of user-given
    sizes: no overflow while forming it, and no OverflowError when it is huge)."""
    if value > _INT_MAX:
        raise ValueError(f"{name}: {value} exceeds the kernel limit {_INT_MAX}")
    return 0


cdef rp_act _act_code(object activation) except *:
    try:
        return ACTIVATIONS[activation]
    except (KeyError, TypeError):
        raise ValueError(f"activation: expected one of {sorted(ACTIVATIONS)}, got {activation!r}") from None


cdef rp_act _elementwise_code(object activation) except *:
    try:
        return ELEMENTWISE_ACTIVATIONS[activation]
    except (KeyError, TypeError):
        raise ValueError(f"activation: expected one of {sorted(ELEMENTWISE_ACTIVATIONS)}, "
                         f"got {activation!r}") from None


cdef double _act_param(rp_act act, object param, object name, int kind=1) except? -1.0:
    """The activation's parameter: the default when None; checked where it has a meaning.

    leaky_relu and elu need alpha >= 0 and sigmoid a slope > 0, because their
    derivative is read from the sign of the output. The kernels of float32
    data (kind 0) compute with it as a float32: it must be finite (and a
    slope nonzero) there too."""
    if param is None:
        return rp_act_default_param(act)
    cdef double p
    try:
        p = float(param)
    except (TypeError, ValueError):
        raise TypeError(f"{name}: parameter must be a number, got {param!r}") from None
    if not np.isfinite(p):
        raise ValueError(f"{name}: parameter must be finite, got {param!r}")
    if act == RP_ACT_SIGMOID and not p > 0.0:
        raise ValueError(f"sigmoid: slope must be > 0, got {param!r}")
    if (act == RP_ACT_LEAKY_RELU or act == RP_ACT_ELU) and p < 0.0:
        raise ValueError(f"{name}: alpha must be >= 0, got {param!r}")
    cdef float p32 = <float>p
    if kind == 0 and (p32 - p32 != 0.0 or (act == RP_ACT_SIGMOID and p32 == 0.0)):
        raise ValueError(f"{name}: parameter {param!r} does not fit float32 (the kernels of "
                         f"float32 data compute with it as a float32); use float64")
    return p


cdef inline void *_ptr(object arr):
    return cnp.PyArray_DATA(<cnp.ndarray>arr)


cdef inline void *_ptr_or_null(object arr):
    return NULL if arr is None else cnp.PyArray_DATA(<cnp.ndarray>arr)


# ---------------------------------------------------------------- runtime

def get_num_threads():
    return rp_threads_setting()


def set_num_threads(int n):
    if n < 1 or n > RP_MAX_THREADS:
        raise ValueError(f"set_num_threads: expected 1 <= n <= {RP_MAX_THREADS}, got {n}")
    rp_set_num_threads(n)


def simd_levels():
    """(name of the best level this CPU supports, name of the level in use)."""
    return rp_simd_name(rp_simd_best()).decode(), rp_simd_name(rp_simd_in_use()).decode()


def set_simd(str name):
    """Use 'generic' or 'avx2+fma' kernels (clamped to what the CPU has); returns the level in use."""
    levels = {"generic": RP_SIMD_GENERIC, "avx2+fma": RP_SIMD_AVX2, "avx2": RP_SIMD_AVX2}
    if name not in levels:
        raise ValueError(f"set_simd: expected one of {sorted(levels)}, got {name!r}")
    return rp_simd_name(rp_simd_set(levels[name])).decode()


def have_openmp():
    return bool(rp_have_openmp())


def forked_single_threaded():
    """Whether this process was forked after multi-threaded kernels: the kernels
    then run on one thread (runtime.h)."""
    return bool(rp_forked_single_threaded())


def compiler():
    return rp_compiler().decode()


# ---------------------------------------------------------------- kernels

def gemm(a, b, c, bint trans_a=False, bint trans_b=False, double alpha=1.0, double beta=0.0,
         bias=None, activation="linear"):
    """c = act(alpha * op(a) @ op(b) + beta * c + bias), all 2-D C-contiguous, one dtype."""
    cdef int kind = _real_kind(a, "a")
    _same_kind(b, "b", kind)
    _same_kind(c, "c", kind, 1)
    if a.ndim != 2 or b.ndim != 2 or c.ndim != 2:
        raise ValueError(f"gemm: expected 2-D arrays, got a{a.shape}, b{b.shape}, c{c.shape}")
    cdef Py_ssize_t m = a.shape[1] if trans_a else a.shape[0]
    cdef Py_ssize_t k = a.shape[0] if trans_a else a.shape[1]
    cdef Py_ssize_t kb = b.shape[1] if trans_b else b.shape[0]
    cdef Py_ssize_t n = b.shape[0] if trans_b else b.shape[1]
    if kb != k:
        raise ValueError(f"gemm: inner dimensions differ: op(a) is ({m}, {k}), op(b) is ({kb}, {n})")
    _shape(c, "c", (m, n))
    if bias is not None:
        _same_kind(bias, "bias", kind)
        _shape(bias, "bias", (n,))
    for name, v in (("m", m), ("n", n), ("k", k)):
        _fits_int(name, v)
    cdef rp_act act = _act_code(activation)
    cdef int lda = <int>a.shape[1], ldb = <int>b.shape[1], ldc = <int>n
    cdef int im = <int>m, in_ = <int>n, ik = <int>k
    cdef void *pa = _ptr(a)
    cdef void *pb = _ptr(b)
    cdef void *pc = _ptr(c)
    cdef void *pbias = _ptr_or_null(bias)
    with nogil:
        if kind == 0:
            rp_gemm_f32(trans_a, trans_b, im, in_, ik, <float>alpha, <float *>pa, lda, <float *>pb, ldb,
                        <float>beta, <float *>pc, ldc, <float *>pbias, act)
        else:
            rp_gemm_f64(trans_a, trans_b, im, in_, ik, alpha, <double *>pa, lda, <double *>pb, ldb,
                        beta, <double *>pc, ldc, <double *>pbias, act)
    return c


def dense_forward(x, w, b, activation, y, param=None, logits=None):
    """y = act(x @ w + b); b may be None; param is the activation's parameter (None: default).

    activation "softmax" (row-wise) needs ``logits``, an array of y's shape
    that receives x @ w + b."""
    cdef int kind = _real_kind(x, "x")
    _same_kind(w, "w", kind)
    _same_kind(y, "y", kind, 1)
    if _ndim(x) != 2 or _ndim(w) != 2:
        raise ValueError(f"dense_forward: expected 2-D x and w, got x{x.shape}, w{w.shape}")
    cdef Py_ssize_t n_batch = _dim(x, 0), n_in = _dim(x, 1), n_out = _dim(w, 1)
    _shape2(w, "w", n_in, n_out)
    _shape2(y, "y", n_batch, n_out)
    if b is not None:
        _same_kind(b, "b", kind)
        _shape1(b, "b", n_out)
    _fits_int("n_batch", n_batch)
    _fits_int("n_in", n_in)
    _fits_int("n_out", n_out)
    cdef int nb = <int>n_batch, ni = <int>n_in, no = <int>n_out
    cdef void *px = _ptr(x)
    cdef void *pw = _ptr(w)
    cdef void *pb = _ptr_or_null(b)
    cdef void *py = _ptr(y)
    cdef void *pz
    if activation == "softmax":
        if n_out < 1:
            raise ValueError(f"dense_forward: a softmax needs at least one output unit, "
                             f"got w of shape {w.shape}")
        if logits is None:
            raise ValueError("dense_forward: activation 'softmax' needs a logits array")
        _same_kind(logits, "logits", kind, 1)
        _shape2(logits, "logits", n_batch, n_out)
        pz = _ptr(logits)
        with nogil:
            if kind == 0:
                rp_dense_forward_softmax_f32(nb, ni, no, <float *>px, <float *>pw, <float *>pb,
                                             <float *>pz, <float *>py)
            else:
                rp_dense_forward_softmax_f64(nb, ni, no, <double *>px, <double *>pw,
                                             <double *>pb, <double *>pz, <double *>py)
        return y
    cdef rp_act act = _act_code(activation)
    cdef double p = _act_param(act, param, activation, kind)
    with nogil:
        if kind == 0:
            rp_dense_forward_f32(nb, ni, no, <float *>px, <float *>pw, <float *>pb, act, p, <float *>py)
        else:
            rp_dense_forward_f64(nb, ni, no, <double *>px, <double *>pw, <double *>pb, act, p,
                                 <double *>py)
    return y


def dense_backward(x, w, y, dy, activation, dz, dw, db, dx, param=None):
    """dz = dy * act'(y); dw = x.T @ dz; db = dz.sum(0) (db may be None); dx = dz @ w.T (dx may be None).

    dz is a workspace of dy's shape; it may be dy itself (dy is then overwritten)."""
    cdef int kind = _real_kind(x, "x")
    _same_kind(w, "w", kind)
    _same_kind(y, "y", kind)
    _same_kind(dy, "dy", kind)
    _same_kind(dz, "dz", kind, 1)
    _same_kind(dw, "dw", kind, 1)
    if _ndim(x) != 2 or _ndim(w) != 2:
        raise ValueError(f"dense_backward: expected 2-D x and w, got x{x.shape}, w{w.shape}")
    cdef Py_ssize_t n_batch = _dim(x, 0), n_in = _dim(x, 1), n_out = _dim(w, 1)
    _shape2(w, "w", n_in, n_out)
    _shape2(y, "y", n_batch, n_out)
    _shape2(dy, "dy", n_batch, n_out)
    _shape2(dz, "dz", n_batch, n_out)
    _shape2(dw, "dw", n_in, n_out)
    if db is not None:
        _same_kind(db, "db", kind, 1)
        _shape1(db, "db", n_out)
    if dx is not None:
        _same_kind(dx, "dx", kind, 1)
        _shape2(dx, "dx", n_batch, n_in)
    _fits_int("n_batch", n_batch)
    _fits_int("n_in", n_in)
    _fits_int("n_out", n_out)
    cdef rp_act act = _act_code(activation)
    cdef double p = _act_param(act, param, activation, kind)
    cdef int nb = <int>n_batch, ni = <int>n_in, no = <int>n_out
    cdef void *px = _ptr(x)
    cdef void *pw = _ptr(w)
    cdef void *py = _ptr(y)
    cdef void *pdy = _ptr(dy)
    cdef void *pdz = _ptr(dz)
    cdef void *pdw = _ptr(dw)
    cdef void *pdb = _ptr_or_null(db)
    cdef void *pdx = _ptr_or_null(dx)
    with nogil:
        if kind == 0:
            rp_dense_backward_f32(nb, ni, no, <float *>px, <float *>pw, <float *>py, <float *>pdy, act, p,
                                  <float *>pdz, <float *>pdw, <float *>pdb, <float *>pdx)
        else:
            rp_dense_backward_f64(nb, ni, no, <double *>px, <double *>pw, <double *>py, <double *>pdy, act, p,
                                  <double *>pdz, <double *>pdw, <double *>pdb, <double *>pdx)
    return dx


def act_forward(activation, x, y, param=None):
    """y = act(x) elementwise (any name of ELEMENTWISE_ACTIVATIONS); y may be x."""
    cdef int kind = _real_kind(x, "x")
    _same_kind(y, "y", kind, 1)
    _same_shape(y, "y", x)
    cdef rp_act act = _elementwise_code(activation)
    cdef double p = _act_param(act, param, activation, kind)
    cdef size_t n = <size_t>cnp.PyArray_SIZE(<cnp.ndarray>x)
    cdef void *px = _ptr(x)
    cdef void *py = _ptr(y)
    with nogil:
        if kind == 0:
            rp_act_forward_f32(act, p, n, <float *>px, <float *>py)
        else:
            rp_act_forward_f64(act, p, n, <double *>px, <double *>py)
    return y


def act_backward(activation, y, dy, dx, x=None, param=None):
    """dx = dy * act'(z); dx may be dy.

    The derivative is read from the output y = act(z) for the activations of
    ACTIVATIONS (x may be None), from the input x = z for the others (y may be
    None)."""
    cdef rp_act act = _elementwise_code(activation)
    cdef bint from_input = rp_act_derivative_needs_input(act)
    src = x if from_input else y
    cdef str src_name = "x" if from_input else "y"
    if src is None:
        raise ValueError(f"{activation}: the derivative needs {src_name} "
                         f"({'the input' if from_input else 'the output'}), got None")
    cdef int kind = _real_kind(src, src_name)
    cdef double p = _act_param(act, param, activation, kind)
    _same_kind(dy, "dy", kind)
    _same_kind(dx, "dx", kind, 1)
    _same_shape(dy, "dy", src)
    _same_shape(dx, "dx", src)
    cdef size_t n = <size_t>cnp.PyArray_SIZE(<cnp.ndarray>src)
    cdef void *px = _ptr(src) if from_input else NULL
    cdef void *py = NULL if from_input else _ptr(src)
    cdef void *pdy = _ptr(dy)
    cdef void *pdx = _ptr(dx)
    with nogil:
        if kind == 0:
            rp_act_backward_f32(act, p, n, <float *>px, <float *>py, <float *>pdy, <float *>pdx)
        else:
            rp_act_backward_f64(act, p, n, <double *>px, <double *>py, <double *>pdy,
                                <double *>pdx)
    return dx


def softmax(x, out):
    """Row-wise softmax of a 2-D array with at least one column."""
    cdef int kind = _real_kind(x, "x")
    _same_kind(out, "out", kind, 1)
    if _ndim(x) != 2 or _dim(x, 1) < 1:
        raise ValueError(f"softmax: expected a 2-D array with at least one column, got shape {x.shape}")
    _same_shape(out, "out", x)
    _fits_int("rows", _dim(x, 0))
    _fits_int("columns", _dim(x, 1))
    cdef int n = <int>_dim(x, 0), c = <int>_dim(x, 1)
    cdef void *px = _ptr(x)
    cdef void *po = _ptr(out)
    with nogil:
        if kind == 0:
            rp_softmax_f32(n, c, <float *>px, <float *>po)
        else:
            rp_softmax_f64(n, c, <double *>px, <double *>po)
    return out


cdef int _check_labels(object labels, Py_ssize_t n, Py_ssize_t c) except -1:
    """labels: a C-contiguous int64 array of n class ids, each in [0, c) (the
    kernels index rows with them)."""
    if (not isinstance(labels, np.ndarray)
            or cnp.PyArray_TYPE(<cnp.ndarray>labels) != cnp.NPY_INT64
            or not cnp.PyArray_ISNOTSWAPPED(<cnp.ndarray>labels)
            or not cnp.PyArray_IS_C_CONTIGUOUS(<cnp.ndarray>labels)):
        raise TypeError("labels: expected a C-contiguous int64 numpy array")
    _shape1(labels, "labels", n)
    cdef const int64_t *label_ptr = <const int64_t *>_ptr(labels)
    cdef Py_ssize_t i
    for i in range(n):
        if label_ptr[i] < 0 or label_ptr[i] >= c:
            raise ValueError(f"labels: class id {label_ptr[i]} out of range [0, {c})")
    return 0


def softmax_cross_entropy(z, labels, targets, grad):
    """Mean softmax cross-entropy of logits z (n, c) against int64 labels (n,) or
    targets (n, c); writes (softmax(z) - t) / n into grad unless grad is None."""
    cdef int kind = _real_kind(z, "logits")
    if _ndim(z) != 2 or _dim(z, 0) < 1 or _dim(z, 1) < 1:
        raise ValueError(f"softmax_cross_entropy: expected logits of shape (N>=1, C>=1), got {z.shape}")
    cdef Py_ssize_t n = _dim(z, 0), c = _dim(z, 1)
    _fits_int("rows", n)
    _fits_int("classes", c)
    if (labels is None) == (targets is None):
        raise ValueError("softmax_cross_entropy: pass exactly one of labels and targets")
    if labels is not None:
        _check_labels(labels, n, c)
    else:
        _same_kind(targets, "targets", kind)
        _shape2(targets, "targets", n, c)
    if grad is not None:
        _same_kind(grad, "grad", kind, 1)
        _shape2(grad, "grad", n, c)
    cdef void *pz = _ptr(z)
    cdef void *pl = _ptr_or_null(labels)
    cdef void *pt = _ptr_or_null(targets)
    cdef void *pg = _ptr_or_null(grad)
    cdef int ni = <int>n, ci = <int>c
    cdef double loss
    with nogil:
        if kind == 0:
            loss = rp_softmax_xent_f32(ni, ci, <float *>pz, <int64_t *>pl, <float *>pt, <float *>pg)
        else:
            loss = rp_softmax_xent_f64(ni, ci, <double *>pz, <int64_t *>pl, <double *>pt, <double *>pg)
    return loss


def sgd_step(param, grad, velocity, double lr, double momentum, bint nesterov, double weight_decay,
             bint check_only=False):
    """In-place SGD update of param (and velocity, which may be None when momentum == 0).

    With check_only nothing is written; returns the number of elements the
    step would make NaN/Inf (0 after a real update)."""
    cdef int kind = _real_kind(param, "param")
    _same_kind(grad, "grad", kind)
    if not param.flags.writeable:
        raise ValueError("param: array is read-only")
    _shape(grad, "grad", param.shape)
    if momentum != 0.0:
        if velocity is None:
            raise ValueError("velocity: required when momentum != 0")
        _same_kind(velocity, "velocity", kind, 1)
        _shape(velocity, "velocity", param.shape)
    elif velocity is not None:
        _same_kind(velocity, "velocity", kind, 1)
        _shape(velocity, "velocity", param.shape)
    cdef size_t n = param.size
    cdef void *pp = _ptr(param)
    cdef void *pg = _ptr(grad)
    cdef void *pv = _ptr_or_null(velocity)
    cdef size_t bad
    with nogil:
        if kind == 0:
            bad = rp_sgd_step_f32(n, <float *>pp, <float *>pg, <float *>pv, <float>lr,
                                  <float>momentum, nesterov, <float>weight_decay, check_only)
        else:
            bad = rp_sgd_step_f64(n, <double *>pp, <double *>pg, <double *>pv, lr, momentum,
                                  nesterov, weight_decay, check_only)
    return bad


# ================================================================ convolution and pooling
# NHWC images; geometry (strides, dilations, explicit zero padding) is
# validated here so that the C kernels can index without checks.

from libc.stdint cimport int32_t

cdef extern from "retroprop/conv.h":
    ctypedef struct rp_conv2d_geom:
        int n, h, w, c
        int kh, kw, filters
        int stride_h, stride_w
        int dilation_h, dilation_w
        int pad_top, pad_left
        int oh, ow
    int rp_conv2d_is_pointwise(const rp_conv2d_geom *g) nogil
    void rp_conv2d_forward_f32(const rp_conv2d_geom *g, const float *x, const float *w,
                               const float *b, rp_act act, int chunk, float *col, float *y) nogil
    void rp_conv2d_forward_f64(const rp_conv2d_geom *g, const double *x, const double *w,
                               const double *b, rp_act act, int chunk, double *col, double *y) nogil
    void rp_conv2d_backward_f32(const rp_conv2d_geom *g, const float *x, const float *w,
                                const float *y, const float *dy, rp_act act, int chunk,
                                float *col, float *dz, float *dw, float *db, float *dx) nogil
    void rp_conv2d_backward_f64(const rp_conv2d_geom *g, const double *x, const double *w,
                                const double *y, const double *dy, rp_act act, int chunk,
                                double *col, double *dz, double *dw, double *db, double *dx) nogil
    void rp_col2im_nhwc_add_f32(const rp_conv2d_geom *g, int first, int count, const float *col,
                                float *dx) nogil
    void rp_col2im_nhwc_add_f64(const rp_conv2d_geom *g, int first, int count, const double *col,
                                double *dx) nogil
    int rp_conv2d_algorithm_applies(const rp_conv2d_geom *g, int elem_size, rp_act act, int algo) nogil
    int rp_conv2d_select(const rp_conv2d_geom *g, int elem_size, rp_act act) nogil
    int rp_conv2d_force_algorithm(int algo) nogil
    const char *rp_conv2d_algorithm_name(int algo) nogil

cdef extern from "retroprop/pool.h":
    ctypedef struct rp_pool2d_geom:
        int n, h, w, c
        int ph, pw
        int stride_h, stride_w
        int pad_top, pad_left
        int oh, ow
    void rp_maxpool2d_forward_f32(const rp_pool2d_geom *g, const float *x, float *y, int32_t *argmax) nogil
    void rp_maxpool2d_forward_f64(const rp_pool2d_geom *g, const double *x, double *y, int32_t *argmax) nogil
    int rp_maxpool2d_backward_f32(const rp_pool2d_geom *g, const int32_t *argmax, const float *dy, float *dx) nogil
    int rp_maxpool2d_backward_f64(const rp_pool2d_geom *g, const int32_t *argmax, const double *dy, double *dx) nogil
    void rp_avgpool2d_forward_f32(const rp_pool2d_geom *g, const float *x, float *y) nogil
    void rp_avgpool2d_forward_f64(const rp_pool2d_geom *g, const double *x, double *y) nogil
    void rp_avgpool2d_backward_f32(const rp_pool2d_geom *g, const float *dy, float *dx) nogil
    void rp_avgpool2d_backward_f64(const rp_pool2d_geom *g, const double *dy, double *dx) nogil

_I32 = np.dtype(np.int32)


cdef tuple _int_pair(object value, str name, int minimum):
    """(a, b) from a 2-sequence of ints >= minimum; ValueError otherwise."""
    try:
        a, b = value
        a, b = int(a), int(b)
    except (TypeError, ValueError, OverflowError):
        raise ValueError(f"{name}: expected a pair of integers, got {value!r}") from None
    if a < minimum or b < minimum:
        raise ValueError(f"{name}: expected integers >= {minimum}, got {value!r}")
    _fits_int_big(name, max(a, b))
    return a, b


cdef tuple _padding4(object padding):
    """(top, bottom, left, right), each >= 0."""
    try:
        top, bottom, left, right = (int(p) for p in padding)
    except (TypeError, ValueError, OverflowError):
        raise ValueError(f"padding: expected (top, bottom, left, right) integers, got {padding!r}") from None
    if min(top, bottom, left, right) < 0:
        raise ValueError(f"padding: expected integers >= 0, got {padding!r}")
    _fits_int_big("padding", max(top, bottom, left, right))
    return top, bottom, left, right


cdef int _conv_geom(object x, object w, object stride, object dilation, object padding,
                    rp_conv2d_geom *g) except -1:
    if x.ndim != 4:
        raise ValueError(f"conv2d: expected x of shape (N, H, W, C), got {x.shape}")
    if w.ndim != 4:
        raise ValueError(f"conv2d: expected w of shape (KH, KW, C, filters), got {w.shape}")
    if w.shape[2] != x.shape[3]:
        raise ValueError(f"conv2d: x has {x.shape[3]} channels but w expects {w.shape[2]} "
                         f"(w shape {w.shape})")
    if min(x.shape) < 1 or min(w.shape) < 1:
        raise ValueError(f"conv2d: empty x{x.shape} or w{w.shape}")
    sh, sw = _int_pair(stride, "stride", 1)
    dh, dw = _int_pair(dilation, "dilation", 1)
    top, bottom, left, right = _padding4(padding)
    cdef Py_ssize_t n = x.shape[0], h = x.shape[1], wd = x.shape[2], c = x.shape[3]
    cdef Py_ssize_t kh = w.shape[0], kw = w.shape[1], f = w.shape[3]
    eff_kh = (kh - 1) * dh + 1
    eff_kw = (kw - 1) * dw + 1
    if h + top + bottom < eff_kh or wd + left + right < eff_kw:
        raise ValueError(f"conv2d: kernel ({eff_kh}, {eff_kw}) (dilated) is larger than the padded "
                         f"input ({h + top + bottom}, {wd + left + right})")
    oh = (h + top + bottom - eff_kh) // sh + 1
    ow = (wd + left + right - eff_kw) // sw + 1
    # Every position the kernels form (oy * stride - pad + ky * dilation)
    # lies within the padded extent: bounding that bounds them all.
    for name, v in (("n", n), ("h", h), ("w", wd), ("c", c), ("filters", f),
                    ("padded height", h + top + bottom), ("padded width", wd + left + right),
                    ("rows", n * oh * ow), ("patch", kh * kw * c), ("x.size", x.size),
                    ("column matrix of one image", oh * ow * kh * kw * c)):
        _fits_int_big(name, v)
    g.n, g.h, g.w, g.c = <int>n, <int>h, <int>wd, <int>c
    g.kh, g.kw, g.filters = <int>kh, <int>kw, <int>f
    g.stride_h, g.stride_w = sh, sw
    g.dilation_h, g.dilation_w = dh, dw
    g.pad_top, g.pad_left = top, left
    g.oh, g.ow = oh, ow
    return 0


cdef int _conv_chunk(object col, str name, int kind, rp_conv2d_geom *g) except -1:
    """Images per im2col pass that fit in the workspace col (0 when pointwise: col unused)."""
    if rp_conv2d_is_pointwise(g):
        return 0
    if col is None:
        raise ValueError(f"{name}: a workspace is required unless the convolution is 1x1, stride 1, unpadded")
    _same_kind(col, name, kind, 1)
    cdef Py_ssize_t per_image = <Py_ssize_t>g.oh * g.ow * g.kh * g.kw * g.c
    if col.size < per_image:
        raise ValueError(f"{name}: workspace of {col.size} elements is smaller than one image's "
                         f"column matrix ({per_image})")
    return <int>min(col.size // per_image, g.n)


def conv2d_forward(x, w, b, activation, stride, dilation, padding, col, y):
    """y = act(conv2d(x, w) + b) over NHWC x (N, H, W, C) and w (KH, KW, C, F); b may be None.

    padding is (top, bottom, left, right); col is a 1-D workspace of x's dtype holding
    at least one image's column matrix (OH*OW*KH*KW*C), or None for a pointwise conv."""
    cdef int kind = _real_kind(x, "x")
    _same_kind(w, "w", kind)
    _same_kind(y, "y", kind, 1)
    cdef rp_conv2d_geom g
    _conv_geom(x, w, stride, dilation, padding, &g)
    _shape(y, "y", (g.n, g.oh, g.ow, g.filters))
    if b is not None:
        _same_kind(b, "b", kind)
        _shape(b, "b", (g.filters,))
    cdef int chunk = _conv_chunk(col, "col", kind, &g)
    cdef rp_act act = _act_code(activation)
    cdef void *px = _ptr(x)
    cdef void *pw = _ptr(w)
    cdef void *pb = _ptr_or_null(b)
    cdef void *pcol = NULL if chunk == 0 else _ptr(col)
    cdef void *py = _ptr(y)
    with nogil:
        if kind == 0:
            rp_conv2d_forward_f32(&g, <float *>px, <float *>pw, <float *>pb, act, chunk,
                                  <float *>pcol, <float *>py)
        else:
            rp_conv2d_forward_f64(&g, <double *>px, <double *>pw, <double *>pb, act, chunk,
                                  <double *>pcol, <double *>py)
    return y


# The convolution algorithms (conv.h, rp_conv_algo), by name.
CONV_ALGORITHMS = ("auto", "im2col", "direct", "implicit", "winograd")


cdef int _algo_code(object name) except -1:
    try:
        return CONV_ALGORITHMS.index(name)
    except ValueError:
        raise ValueError(f"conv2d algorithm: expected one of {CONV_ALGORITHMS}, got {name!r}") from None


def conv2d_force_algorithm(name):
    """Use algorithm ``name`` for every convolution it applies to ("auto": the
    selector's table decides); returns the previous setting. Process-wide: for
    tests and benchmarks."""
    cdef int code = _algo_code(name)
    return CONV_ALGORITHMS[rp_conv2d_force_algorithm(code)]


def conv2d_algorithm(x, w, activation, stride, dilation, padding, name=None):
    """With name None: the algorithm conv2d_forward would run for x and w (and
    conv2d_backward, whose choice is that of a linear activation). With a
    name: whether that algorithm can compute this convolution."""
    cdef int kind = _real_kind(x, "x")
    _same_kind(w, "w", kind)
    cdef rp_conv2d_geom g
    _conv_geom(x, w, stride, dilation, padding, &g)
    cdef rp_act act = _act_code(activation)
    cdef int size = 4 if kind == 0 else 8
    if name is None:
        return CONV_ALGORITHMS[rp_conv2d_select(&g, size, act)]
    return bool(rp_conv2d_algorithm_applies(&g, size, act, _algo_code(name)))


def conv2d_backward(x, w, y, dy, activation, stride, dilation, padding, col, dz, dw, db, dx):
    """dz = dy * act'(y); dw = col(x)^T dz; db = dz summed over N, OH, OW (db may be None);
    dx = col2im(dz w^T) (dx may be None). dz is a workspace of dy's shape (it may be dy).
    col as for conv2d_forward (im2col is recomputed into it)."""
    cdef int kind = _real_kind(x, "x")
    _same_kind(w, "w", kind)
    _same_kind(y, "y", kind)
    _same_kind(dy, "dy", kind)
    _same_kind(dz, "dz", kind, 1)
    _same_kind(dw, "dw", kind, 1)
    cdef rp_conv2d_geom g
    _conv_geom(x, w, stride, dilation, padding, &g)
    out_shape = (g.n, g.oh, g.ow, g.filters)
    _shape(y, "y", out_shape)
    _shape(dy, "dy", out_shape)
    _shape(dz, "dz", out_shape)
    _shape(dw, "dw", w.shape)
    if db is not None:
        _same_kind(db, "db", kind, 1)
        _shape(db, "db", (g.filters,))
    if dx is not None:
        _same_kind(dx, "dx", kind, 1)
        _shape(dx, "dx", x.shape)
    cdef int chunk = _conv_chunk(col, "col", kind, &g)
    cdef rp_act act = _act_code(activation)
    cdef void *px = _ptr(x)
    cdef void *pw = _ptr(w)
    cdef void *py = _ptr(y)
    cdef void *pdy = _ptr(dy)
    cdef void *pcol = NULL if chunk == 0 else _ptr(col)
    cdef void *pdz = _ptr(dz)
    cdef void *pdw = _ptr(dw)
    cdef void *pdb = _ptr_or_null(db)
    cdef void *pdx = _ptr_or_null(dx)
    with nogil:
        if kind == 0:
            rp_conv2d_backward_f32(&g, <float *>px, <float *>pw, <float *>py, <float *>pdy, act, chunk,
                                   <float *>pcol, <float *>pdz, <float *>pdw, <float *>pdb, <float *>pdx)
        else:
            rp_conv2d_backward_f64(&g, <double *>px, <double *>pw, <double *>py, <double *>pdy, act, chunk,
                                   <double *>pcol, <double *>pdz, <double *>pdw, <double *>pdb,
                                   <double *>pdx)
    return dx


def conv2d_backward_data(dy, w, stride, dilation, padding, col, dx):
    """dx = col2im(dy w^T): conv2d's input gradient alone (no dW, no activation), which
    is also the forward pass of a transposed convolution. dx (N, H, W, C) gives the
    geometry and is overwritten; dy is (N, OH, OW, F), w (KH, KW, C, F). col as for
    conv2d_forward: None for a pointwise conv, else at least one image's column matrix.
    The existing kernels do the work: one GEMM per chunk of images into col, then
    the col2im scatter-add."""
    cdef int kind = _real_kind(dy, "dy")
    _same_kind(w, "w", kind)
    _same_kind(dx, "dx", kind, 1)
    cdef rp_conv2d_geom g
    _conv_geom(dx, w, stride, dilation, padding, &g)
    _shape(dy, "dy", (g.n, g.oh, g.ow, g.filters))
    cdef int chunk = _conv_chunk(col, "col", kind, &g)
    cdef int patch = g.kh * g.kw * g.c
    cdef int pixels = g.oh * g.ow
    cdef int first, count
    cdef void *pdy = _ptr(dy)
    cdef void *pw = _ptr(w)
    cdef void *pcol = NULL if chunk == 0 else _ptr(col)
    cdef void *pdx = _ptr(dx)
    with nogil:
        if chunk == 0:   # pointwise: the column matrix is dx itself
            if kind == 0:
                rp_gemm_f32(0, 1, g.n * pixels, g.c, g.filters, 1.0, <float *>pdy, g.filters,
                            <float *>pw, g.filters, 0.0, <float *>pdx, g.c, NULL, RP_ACT_LINEAR)
            else:
                rp_gemm_f64(0, 1, g.n * pixels, g.c, g.filters, 1.0, <double *>pdy, g.filters,
                            <double *>pw, g.filters, 0.0, <double *>pdx, g.c, NULL, RP_ACT_LINEAR)
        else:
            memset(pdx, 0, <size_t>g.n * g.h * g.w * g.c * (4 if kind == 0 else 8))
            first = 0
            while first < g.n:
                count = chunk if first + chunk <= g.n else g.n - first
                if kind == 0:
                    rp_gemm_f32(0, 1, count * pixels, patch, g.filters, 1.0,
                                <float *>pdy + <size_t>first * pixels * g.filters, g.filters,
                                <float *>pw, g.filters, 0.0, <float *>pcol, patch, NULL,
                                RP_ACT_LINEAR)
                    rp_col2im_nhwc_add_f32(&g, first, count, <float *>pcol, <float *>pdx)
                else:
                    rp_gemm_f64(0, 1, count * pixels, patch, g.filters, 1.0,
                                <double *>pdy + <size_t>first * pixels * g.filters, g.filters,
                                <double *>pw, g.filters, 0.0, <double *>pcol, patch, NULL,
                                RP_ACT_LINEAR)
                    rp_col2im_nhwc_add_f64(&g, first, count, <double *>pcol, <double *>pdx)
                first += count
    return dx


cdef int _pool_geom(tuple x_shape, object pool, object stride, object padding,
                    rp_pool2d_geom *g) except -1:
    if len(x_shape) != 4 or min(x_shape) < 1:
        raise ValueError(f"pool2d: expected a non-empty input of shape (N, H, W, C), got {x_shape}")
    ph, pw = _int_pair(pool, "pool_size", 1)
    sh, sw = _int_pair(stride, "stride", 1)
    top, bottom, left, right = _padding4(padding)
    # Padding smaller than the window keeps at least one real cell in every window.
    if max(top, bottom) >= ph or max(left, right) >= pw:
        raise ValueError(f"pool2d: padding {padding!r} must be smaller than the window ({ph}, {pw})")
    n, h, wd, c = x_shape
    if h + top + bottom < ph or wd + left + right < pw:
        raise ValueError(f"pool2d: window ({ph}, {pw}) is larger than the padded input "
                         f"({h + top + bottom}, {wd + left + right})")
    oh = (h + top + bottom - ph) // sh + 1
    ow = (wd + left + right - pw) // sw + 1
    for name, v in (("n", n), ("image size", h * wd * c), ("size", n * h * wd * c),
                    ("padded height", h + top + bottom), ("padded width", wd + left + right)):
        _fits_int_big(name, v)
    g.n, g.h, g.w, g.c = n, h, wd, c
    g.ph, g.pw = ph, pw
    g.stride_h, g.stride_w = sh, sw
    g.pad_top, g.pad_left = top, left
    g.oh, g.ow = oh, ow
    return 0


cdef int _argmax_array(object argmax, tuple shape, int writable) except -1:
    if not isinstance(argmax, np.ndarray) or argmax.dtype != _I32 or not argmax.flags.c_contiguous:
        raise TypeError("argmax: expected a C-contiguous int32 numpy array")
    if writable and not argmax.flags.writeable:
        raise ValueError("argmax: output array is read-only")
    _shape(argmax, "argmax", shape)
    return 0


def maxpool2d_forward(x, pool, stride, padding, y, argmax):
    """y = max over each window of NHWC x; argmax (int32, y's shape) = position within the image."""
    cdef int kind = _real_kind(x, "x")
    _same_kind(y, "y", kind, 1)
    cdef rp_pool2d_geom g
    _pool_geom(x.shape, pool, stride, padding, &g)
    _shape(y, "y", (g.n, g.oh, g.ow, g.c))
    _argmax_array(argmax, y.shape, 1)
    cdef void *px = _ptr(x)
    cdef void *py = _ptr(y)
    cdef void *pa = _ptr(argmax)
    with nogil:
        if kind == 0:
            rp_maxpool2d_forward_f32(&g, <float *>px, <float *>py, <int32_t *>pa)
        else:
            rp_maxpool2d_forward_f64(&g, <double *>px, <double *>py, <int32_t *>pa)
    return y, argmax


def maxpool2d_backward(argmax, dy, pool, stride, padding, dx):
    """dx = 0; dx[argmax] += dy, image by image. dx has the forward input's shape."""
    cdef int kind = _real_kind(dy, "dy")
    _same_kind(dx, "dx", kind, 1)
    cdef rp_pool2d_geom g
    _pool_geom(dx.shape, pool, stride, padding, &g)
    _shape(dy, "dy", (g.n, g.oh, g.ow, g.c))
    _argmax_array(argmax, dy.shape, 0)
    cdef void *pa = _ptr(argmax)
    cdef void *pdy = _ptr(dy)
    cdef void *pdx = _ptr(dx)
    cdef int status
    with nogil:
        # The kernel checks every position first: one outside the image would
        # write out of bounds.
        if kind == 0:
            status = rp_maxpool2d_backward_f32(&g, <int32_t *>pa, <float *>pdy, <float *>pdx)
        else:
            status = rp_maxpool2d_backward_f64(&g, <int32_t *>pa, <double *>pdy, <double *>pdx)
    if status != 0:
        raise ValueError(f"argmax: positions must lie in [0, {g.h * g.w * g.c})")
    return dx


def avgpool2d_forward(x, pool, stride, padding, y):
    """y = mean over the real (unpadded) cells of each window of NHWC x."""
    cdef int kind = _real_kind(x, "x")
    _same_kind(y, "y", kind, 1)
    cdef rp_pool2d_geom g
    _pool_geom(x.shape, pool, stride, padding, &g)
    _shape(y, "y", (g.n, g.oh, g.ow, g.c))
    cdef void *px = _ptr(x)
    cdef void *py = _ptr(y)
    with nogil:
        if kind == 0:
            rp_avgpool2d_forward_f32(&g, <float *>px, <float *>py)
        else:
            rp_avgpool2d_forward_f64(&g, <double *>px, <double *>py)
    return y


def avgpool2d_backward(dy, pool, stride, padding, dx):
    """dx = each window's dy spread evenly over its real cells. dx has the forward input's shape."""
    cdef int kind = _real_kind(dy, "dy")
    _same_kind(dx, "dx", kind, 1)
    cdef rp_pool2d_geom g
    _pool_geom(dx.shape, pool, stride, padding, &g)
    _shape(dy, "dy", (g.n, g.oh, g.ow, g.c))
    cdef void *pdy = _ptr(dy)
    cdef void *pdx = _ptr(dx)
    with nogil:
        if kind == 0:
            rp_avgpool2d_backward_f32(&g, <float *>pdy, <float *>pdx)
        else:
            rp_avgpool2d_backward_f64(&g, <double *>pdy, <double *>pdx)
    return dx


# ================================================================ adaptive optimizers
# Adam/AdamW, RMSprop and Adagrad: one fused C pass per parameter
# (csrc/include/retroprop/optim.h has the formulas).

cdef extern from "retroprop/optim.h":
    size_t rp_adam_step_f32(size_t n, float *param, const float *grad, float *m, float *v,
                          float lr, float beta1, float beta2, float eps, float weight_decay,
                          int decoupled, float c1, float c2, int check_only) nogil
    size_t rp_adam_step_f64(size_t n, double *param, const double *grad, double *m, double *v,
                          double lr, double beta1, double beta2, double eps, double weight_decay,
                          int decoupled, double c1, double c2, int check_only) nogil
    size_t rp_rmsprop_step_f32(size_t n, float *param, const float *grad, float *ms, float *mom,
                             float lr, float rho, float momentum, float eps, int check_only) nogil
    size_t rp_rmsprop_step_f64(size_t n, double *param, const double *grad, double *ms,
                             double *mom, double lr, double rho, double momentum,
                             double eps, int check_only) nogil
    size_t rp_adagrad_step_f32(size_t n, float *param, const float *grad, float *acc,
                             float lr, float eps, int check_only) nogil
    size_t rp_adagrad_step_f64(size_t n, double *param, const double *grad, double *acc,
                             double lr, double eps, int check_only) nogil
    ctypedef enum rp_optimizer:
        RP_OPT_SGD
        RP_OPT_ADAM
        RP_OPT_RMSPROP
        RP_OPT_ADAGRAD
    ctypedef enum rp_opt_mode:
        RP_OPT_APPLY
        RP_OPT_CHECK
        RP_OPT_CHECK_APPLY
    ctypedef struct rp_opt_config:
        rp_optimizer rule
        double lr
        double weight_decay
        double momentum
        int nesterov
        double beta1, beta2
        double c1, c2
        int decoupled
        double rho
        double eps
    ctypedef struct rp_opt_tensor:
        size_t n
        void *param
        const void *grad
        void *state0
        void *state1
    long rp_optimizer_step_f32(const rp_opt_config *cfg, const rp_opt_tensor *tensors, int count,
                               rp_opt_mode mode, size_t *bad_elements) nogil
    long rp_optimizer_step_f64(const rp_opt_config *cfg, const rp_opt_tensor *tensors, int count,
                               rp_opt_mode mode, size_t *bad_elements) nogil
    ctypedef struct rp_opt_bounds:
        double valid
        double param_max
        double state_max
    long rp_optimizer_step_tracked_f32(const rp_opt_config *cfg, const rp_opt_tensor *tensors,
                                       int count, rp_opt_bounds *bounds,
                                       size_t *bad_elements) nogil
    long rp_optimizer_step_tracked_f64(const rp_opt_config *cfg, const rp_opt_tensor *tensors,
                                       int count, rp_opt_bounds *bounds,
                                       size_t *bad_elements) nogil


cdef rp_opt_bounds *_opt_bounds(object bounds, str where) except? NULL:
    """The rp_opt_bounds held by ``bounds`` (NULL for None)."""
    if bounds is None:
        return NULL
    if not (type(bounds) is np.ndarray and bounds.dtype == np.float64 and bounds.shape == (3,)
            and bounds.flags.c_contiguous and bounds.flags.writeable):
        raise TypeError(f"{where}: bounds must be a writable C-contiguous float64 array of "
                        f"shape (3,)")
    return <rp_opt_bounds *>_ptr(bounds)


cdef int _check_step_arrays(object param, object grad, tuple states) except -1:
    """param writable; grad and every state array of param's dtype and shape (states writable)."""
    cdef int kind = _real_kind(param, "param")
    if not param.flags.writeable:
        raise ValueError("param: array is read-only")
    _same_kind(grad, "grad", kind)
    _shape(grad, "grad", param.shape)
    for name, arr in states:
        _same_kind(arr, name, kind, 1)
        _shape(arr, name, param.shape)
    return kind


def adam_step(param, grad, m, v, double lr, double beta1, double beta2, double eps,
              double weight_decay, bint decoupled, double c1, double c2, bint check_only=False):
    """In-place Adam (decoupled=False) or AdamW (decoupled=True) update of param, m and v."""
    cdef int kind = _check_step_arrays(param, grad, (("m", m), ("v", v)))
    cdef size_t n = param.size
    cdef void *pp = _ptr(param)
    cdef void *pg = _ptr(grad)
    cdef void *pm = _ptr(m)
    cdef void *pv = _ptr(v)
    cdef size_t bad
    with nogil:
        if kind == 0:
            bad = rp_adam_step_f32(n, <float *>pp, <float *>pg, <float *>pm, <float *>pv,
                                   <float>lr, <float>beta1, <float>beta2, <float>eps,
                                   <float>weight_decay, decoupled, <float>c1, <float>c2,
                                   check_only)
        else:
            bad = rp_adam_step_f64(n, <double *>pp, <double *>pg, <double *>pm, <double *>pv, lr,
                                   beta1, beta2, eps, weight_decay, decoupled, c1, c2, check_only)
    return bad


def rmsprop_step(param, grad, ms, mom, double lr, double rho, double momentum, double eps,
                 bint check_only=False):
    """In-place RMSprop update; ``mom`` may be None when momentum == 0."""
    states = (("ms", ms),) if mom is None else (("ms", ms), ("mom", mom))
    if momentum != 0.0 and mom is None:
        raise ValueError("mom: required when momentum != 0")
    cdef int kind = _check_step_arrays(param, grad, states)
    cdef size_t n = param.size
    cdef void *pp = _ptr(param)
    cdef void *pg = _ptr(grad)
    cdef void *ps = _ptr(ms)
    cdef void *pb = _ptr_or_null(mom)
    cdef size_t bad
    with nogil:
        if kind == 0:
            bad = rp_rmsprop_step_f32(n, <float *>pp, <float *>pg, <float *>ps, <float *>pb,
                                      <float>lr, <float>rho, <float>momentum, <float>eps,
                                      check_only)
        else:
            bad = rp_rmsprop_step_f64(n, <double *>pp, <double *>pg, <double *>ps, <double *>pb,
                                      lr, rho, momentum, eps, check_only)
    return bad


def adagrad_step(param, grad, acc, double lr, double eps, bint check_only=False):
    """In-place Adagrad update of param and its accumulator acc."""
    cdef int kind = _check_step_arrays(param, grad, (("acc", acc),))
    cdef size_t n = param.size
    cdef void *pp = _ptr(param)
    cdef void *pg = _ptr(grad)
    cdef void *pa = _ptr(acc)
    cdef size_t bad
    with nogil:
        if kind == 0:
            bad = rp_adagrad_step_f32(n, <float *>pp, <float *>pg, <float *>pa, <float>lr,
                                      <float>eps, check_only)
        else:
            bad = rp_adagrad_step_f64(n, <double *>pp, <double *>pg, <double *>pa, lr, eps,
                                      check_only)
    return bad


_OPT_RULES = {"sgd": RP_OPT_SGD, "adam": RP_OPT_ADAM, "rmsprop": RP_OPT_RMSPROP,
              "adagrad": RP_OPT_ADAGRAD}
_OPT_MODES = {"apply": RP_OPT_APPLY, "check": RP_OPT_CHECK, "check_apply": RP_OPT_CHECK_APPLY}
# Which state arrays a rule needs: (state0 required, state1 required); the
# momentum buffers (SGD's state0, RMSprop's state1) only when momentum != 0.
_OPT_STATE_NAMES = {"sgd": ("velocity", None), "adam": ("m", "v"), "rmsprop": ("ms", "mom"),
                    "adagrad": ("acc", None)}


cdef inline bint _is_kind(object arr, int kind):
    """arr is a native, C-contiguous ndarray of the element type kind (0: float32, 1: float64)."""
    if not isinstance(arr, np.ndarray):
        return False
    cdef cnp.ndarray a = <cnp.ndarray>arr
    cdef int type_num = cnp.PyArray_TYPE(a)
    return (type_num == (cnp.NPY_FLOAT32 if kind == 0 else cnp.NPY_FLOAT64)
            and cnp.PyArray_ISNOTSWAPPED(a) and cnp.PyArray_IS_C_CONTIGUOUS(a))


cdef inline bint _same_dims(object arr, object ref):
    cdef cnp.ndarray a = <cnp.ndarray>arr
    cdef cnp.ndarray r = <cnp.ndarray>ref
    cdef int nd = cnp.PyArray_NDIM(a)
    if nd != cnp.PyArray_NDIM(r):
        return False
    for axis in range(nd):
        if cnp.PyArray_DIM(a, axis) != cnp.PyArray_DIM(r, axis):
            return False
    return True


cdef inline bint _state_ok(object arr, bint needed, object name, int kind, object param):
    if arr is None:
        return not needed
    return (name is not None and _is_kind(arr, kind)
            and cnp.PyArray_ISWRITEABLE(<cnp.ndarray>arr) and _same_dims(arr, param))


cdef int _explain_step_arrays(Py_ssize_t i, str rule, int kind, object param, object grad,
                              tuple states) except -1:
    """Raise the error that describes what is wrong with parameter i's arrays."""
    where = f" (parameter {i})"
    k = _real_kind(param, "param" + where)
    if k != kind:
        raise TypeError(f"param{where}: every parameter must have the same dtype")
    if not cnp.PyArray_ISWRITEABLE(<cnp.ndarray>param):
        raise ValueError(f"param{where}: array is read-only")
    _same_kind(grad, "grad" + where, kind)
    _shape(grad, "grad" + where, param.shape)
    for arr, name, needed in states:
        if arr is None:
            if needed:
                raise ValueError(f"{name}{where}: required by {rule}")
            continue
        if name is None:
            raise ValueError(f"{rule} has no such state array{where}")
        _same_kind(arr, name + where, kind, 1)
        _shape(arr, name + where, param.shape)
    raise AssertionError(f"optimizer_step: parameter {i} failed a check that found no error")


cdef int _fill_opt_tensors(str rule, list params, list grads, list state0, list state1,
                           double momentum, rp_opt_tensor *tensors) except -2:
    """Check one step's arrays and fill tensors[0:len(params)]; returns the
    element kind (0: float32, 1: float64), or -1 when there are no parameters."""
    cdef Py_ssize_t count = len(params)
    if len(grads) != count or len(state0) != count or len(state1) != count:
        raise ValueError(f"params, grads, state0 and state1 must have the same length, got "
                         f"{count}, {len(grads)}, {len(state0)}, {len(state1)}")
    name0, name1 = _OPT_STATE_NAMES[rule]
    need0 = name0 is not None and (rule != "sgd" or momentum != 0.0)
    need1 = name1 is not None and (rule != "rmsprop" or momentum != 0.0)
    cdef int kind = -1
    cdef Py_ssize_t i
    for i in range(count):
        param, grad, s0, s1 = params[i], grads[i], state0[i], state1[i]
        if kind == -1:
            kind = _real_kind(param, "param (parameter 0)")
        # The checks of every step in C-API calls; the named messages below
        # are built only when one of them fails.
        if not (_is_kind(param, kind) and cnp.PyArray_ISWRITEABLE(<cnp.ndarray>param)
                and _is_kind(grad, kind) and _same_dims(grad, param)
                and _state_ok(s0, need0, name0, kind, param)
                and _state_ok(s1, need1, name1, kind, param)):
            _explain_step_arrays(i, rule, kind, param, grad, ((s0, name0, need0), (s1, name1, need1)))
        tensors[i].n = <size_t>cnp.PyArray_SIZE(<cnp.ndarray>param)
        tensors[i].param = _ptr(param)
        tensors[i].grad = _ptr(grad)
        tensors[i].state0 = _ptr_or_null(s0) if need0 else NULL
        tensors[i].state1 = _ptr_or_null(s1) if need1 else NULL
    return kind


cdef rp_opt_config _opt_config(str rule, double lr, double weight_decay, double momentum,
                               bint nesterov, double beta1, double beta2, double c1, double c2,
                               bint decoupled, double rho, double eps) except *:
    if rule not in _OPT_RULES:
        raise ValueError(f"rule: expected one of {sorted(_OPT_RULES)}, got {rule!r}")
    cdef rp_opt_config cfg
    cfg.rule = _OPT_RULES[rule]
    cfg.lr = lr
    cfg.weight_decay = weight_decay
    cfg.momentum = momentum
    cfg.nesterov = nesterov
    cfg.beta1 = beta1
    cfg.beta2 = beta2
    cfg.c1 = c1
    cfg.c2 = c2
    cfg.decoupled = decoupled
    cfg.rho = rho
    cfg.eps = eps
    return cfg


cdef rp_opt_mode _opt_mode(str mode) except *:
    if mode not in _OPT_MODES:
        raise ValueError(f"mode: expected one of {sorted(_OPT_MODES)}, got {mode!r}")
    return _OPT_MODES[mode]


def optimizer_step(str rule, list params, list grads, list state0, list state1, str mode,
                   double lr, double weight_decay=0.0, double momentum=0.0, bint nesterov=False,
                   double beta1=0.0, double beta2=0.0, double c1=1.0, double c2=1.0,
                   bint decoupled=False, double rho=0.0, double eps=0.0, object bounds=None):
    """One optimizer step over many parameters in one C call (retroprop/optim.h).

    params[i] is updated with grads[i] and its state arrays state0[i],
    state1[i] (None where the rule has no such state). mode "apply" writes,
    "check" writes nothing, "check_apply" writes only when no new value would
    be NaN/Inf. Returns (index of the first parameter that fails the check or
    -1, number of non-finite new values). bounds (a float64 array of 3, or
    None): with "check_apply", the step is rp_optimizer_step_tracked_*;
    other modes mark them invalid."""
    cdef rp_opt_config cfg = _opt_config(rule, lr, weight_decay, momentum, nesterov, beta1, beta2,
                                         c1, c2, decoupled, rho, eps)
    cdef rp_opt_mode cmode = _opt_mode(mode)
    cdef Py_ssize_t count = len(params)
    _fits_int("number of parameters", count)
    cdef cnp.ndarray tensor_buffer = np.empty(max(count, 1) * sizeof(rp_opt_tensor), dtype=np.uint8)
    cdef rp_opt_tensor *tensors = <rp_opt_tensor *>cnp.PyArray_DATA(tensor_buffer)
    cdef int kind = _fill_opt_tensors(rule, params, grads, state0, state1, momentum, tensors)
    cdef int n_tensors = <int>count
    cdef long first_bad = -1
    cdef size_t bad = 0
    cdef rp_opt_bounds *bounds_ptr = _opt_bounds(bounds, "optimizer_step")
    if bounds_ptr != NULL and cmode != RP_OPT_CHECK_APPLY:
        bounds_ptr.valid = 0
        bounds_ptr = NULL
    if count == 0:
        return -1, 0
    with nogil:
        if bounds_ptr != NULL:
            if kind == 0:
                first_bad = rp_optimizer_step_tracked_f32(&cfg, tensors, n_tensors, bounds_ptr,
                                                          &bad)
            else:
                first_bad = rp_optimizer_step_tracked_f64(&cfg, tensors, n_tensors, bounds_ptr,
                                                          &bad)
        elif kind == 0:
            first_bad = rp_optimizer_step_f32(&cfg, tensors, n_tensors, cmode, &bad)
        else:
            first_bad = rp_optimizer_step_f64(&cfg, tensors, n_tensors, cmode, &bad)
    return first_bad, bad


# ================================================================ batch assembly

cdef extern from "retroprop/rows.h":
    ctypedef struct rp_rows_gather:
        size_t row_bytes
        const void *x
        long n_rows
        long count
        const int64_t *index
        void *out
    int rp_gather_rows(size_t row_bytes, long n_rows, const void *x, long count,
                       const int64_t *index, void *out) nogil
    int rp_rows_in_range(long n_rows, long count, const int64_t *index) nogil


cdef int _gather_job(str name, object x, object index, object out,
                     rp_rows_gather *job) except -1:
    """Checks the arguments of a gather out[r] = x[index[r]] (index values
    included) and describes it in *job."""
    if not isinstance(x, np.ndarray) or not isinstance(out, np.ndarray) \
            or not isinstance(index, np.ndarray):
        raise TypeError(f"{name}: x, index and out must be numpy arrays")
    if not x.flags.c_contiguous or not out.flags.c_contiguous or not out.flags.writeable:
        raise TypeError(f"{name}: x and out must be C-contiguous (out writable)")
    if out.dtype != x.dtype:
        raise TypeError(f"{name}: out has dtype {out.dtype}, x has {x.dtype}")
    # Rows are copied as bytes: object arrays would get pointers without
    # their references (a use-after-free), so only plain numbers are taken.
    if x.dtype.kind not in "biufc" or x.dtype.hasobject:
        raise TypeError(f"{name}: x must have a numeric dtype (bool, integer, float or "
                        f"complex), got {x.dtype}")
    if index.dtype != np.int64 or index.ndim != 1 or not index.flags.c_contiguous:
        raise TypeError(f"{name}: index must be a C-contiguous 1-D int64 array")
    if x.ndim < 1:
        raise ValueError(f"{name}: x must have at least one dimension")
    _shape(out, "out", (index.shape[0],) + tuple(x.shape[1:]))
    job.row_bytes = <size_t>(x.itemsize * (x.size // x.shape[0] if x.shape[0] else 0))
    job.x = _ptr(x)
    job.n_rows = <long>x.shape[0]
    job.count = <long>index.shape[0]
    job.index = <const int64_t *>_ptr(index)
    job.out = _ptr(out)
    if not rp_rows_in_range(job.n_rows, job.count, job.index):
        raise IndexError(f"{name}: index values must lie in [0, {job.n_rows})")
    if _overlap(out, x):
        raise ValueError(f"{name}: out overlaps x")
    return 0


cdef inline bint _overlap_bytes(char *a, char *a_end, char *b, size_t b_bytes):
    """Whether [a, a_end) and the b_bytes bytes from b overlap."""
    return a < a_end and b_bytes > 0 and a < b + b_bytes and b < a_end


cdef bint _overlap(object a, object b):
    """Whether the bytes of two contiguous arrays overlap."""
    cdef char *pa = <char *>_ptr(a)
    return _overlap_bytes(pa, pa + cnp.PyArray_NBYTES(<cnp.ndarray>a), <char *>_ptr(b),
                          cnp.PyArray_NBYTES(<cnp.ndarray>b))


def gather_rows(x, index, out):
    """out[r] = x[index[r]]: x and out C-contiguous arrays of one dtype, out of
    shape (len(index),) + x.shape[1:]; index a 1-D int64 array."""
    cdef rp_rows_gather job
    _gather_job("gather_rows", x, index, out, &job)
    with nogil:
        rp_gather_rows(job.row_bytes, job.n_rows, job.x, job.count, job.index, job.out)
    return out


# ================================================================ step programs
# A planned step as an array of records (retroprop/plan.h), checked once here
# and then run in one call per stretch of records, the GIL released.

from cpython.pycapsule cimport PyCapsule_GetPointer, PyCapsule_IsValid

cdef extern from "retroprop/plan.h":
    enum: RP_RECORD_ARRAYS
    enum: RP_PROGRAM_MAX_GATHERS
    ctypedef struct rp_record:
        int kind
        int act
        double p0, p1
        long n, m, k, s
        int chunk
        int a[RP_RECORD_ARRAYS]
        rp_conv2d_geom conv
        rp_pool2d_geom pool
    ctypedef struct rp_program_state:
        double loss
        double *losses
        long *correct
        int status
        long first_bad
        rp_opt_config opt
        const rp_opt_tensor *tensors
        int n_tensors
        rp_opt_mode mode
        rp_opt_bounds *bounds
        const rp_rows_gather *gather
        int n_gather
        int gathered
    void rp_pcg64_uniform(void *pcg64_state, long n, double *out) nogil
    int rp_program_run_f32(const rp_record *records, int begin, int end, void **ptrs,
                           rp_program_state *state, int finish) nogil
    int rp_program_run_f64(const rp_record *records, int begin, int end, void **ptrs,
                           rp_program_state *state, int finish) nogil

# Record kinds, by name (the order of rp_record_kind).
RECORD_KINDS = ("dense_fwd", "dense_softmax_fwd", "dense_bwd", "softmax_xent", "act_fwd",
                "act_bwd", "dropout_fwd", "mul", "add", "copy", "cols_in", "cols_out",
                "conv_fwd", "conv_bwd", "maxpool_fwd", "maxpool_bwd", "avgpool_fwd",
                "avgpool_bwd", "penalty", "check_loss", "optimizer", "accuracy",
                "overlap_gather")
_RECORD_KIND = {name: i for i, name in enumerate(RECORD_KINDS)}
_I64 = np.dtype(np.int64)
_PCG64_LAYOUT = []      # [True/False] once checked


def _pcg64_layout_ok():
    """Whether NumPy's PCG64 state has the layout plan.c reads inline: our
    draws from a scratch generator must equal NumPy's own."""
    if not _PCG64_LAYOUT:
        ok = False
        try:
            bits = np.random.PCG64(20240613)
            expected = np.random.Generator(np.random.PCG64(20240613)).random(17)
            got = np.empty(17)
            rp_pcg64_uniform(<void *><size_t>bits.ctypes.state_address, 17,
                             <double *>cnp.PyArray_DATA(<cnp.ndarray>got))
            ok = bool(np.array_equal(got, expected))
            # and the state moved on as NumPy's would
            after = np.random.Generator(np.random.PCG64(20240613))
            after.random(17)
            ok = ok and bits.state == after.bit_generator.state
        except Exception:
            ok = False
        _PCG64_LAYOUT.append(ok)
    return _PCG64_LAYOUT[0]


class _ShapeOnly:
    """What _conv_geom / _pool_geom read of an array (ndim, shape, size), for
    an array given only at run time."""

    def __init__(self, shape):
        self.shape = tuple(shape)
        self.ndim = len(self.shape)
        self.size = int(np.prod(self.shape, dtype=np.int64))


cdef class Program:
    """The records of a planned step and their arrays, checked once.

    ``table``: the program's arrays; an entry is an ndarray (kept alive and
    read or written by the records), a numpy Generator (a dropout layer's:
    its bit generator is drawn from in C), ``("input", shape)`` /
    ``("labels", n, classes)`` / ``("targets", shape)``: an array given to
    each run (``set_inputs``), checked then, or ``("view", index, shape)``:
    the memory of another entry seen with another shape of the same size. ``records``: dicts with "kind"
    (RECORD_KINDS), "a" (table indices, None for an absent optional array)
    and the kind's fields ("n", "m", "k", "s", "act", "p0", "p1", "conv",
    "pool", "chunk"). Every array is checked against the sizes its record
    gives, so the C code can trust them."""
    cdef rp_record *records
    cdef readonly int n_records, kind
    cdef void **ptrs
    cdef readonly int n_table
    cdef object table           # the kept objects, by index
    cdef object per_call        # [(index, spec)] of the arrays given to each run
    cdef object per_call_bytes  # their sizes in bytes
    cdef object current         # the per-call arrays of the current run (kept alive)
    cdef object opt_lists       # the optimizer's lists the tensors were filled from
    cdef object pcg64           # table indices of PCG64 generators read inline
    cdef object views           # [(index, base index)]: entries that alias another
    cdef bint optimizer_set
    cdef object kept            # every fixed ndarray (their bounds: overlap checks)
    cdef rp_program_state state
    cdef rp_opt_tensor *tensors
    cdef Py_ssize_t tensor_capacity
    cdef rp_rows_gather gathers[RP_PROGRAM_MAX_GATHERS]
    cdef int n_gathers
    cdef readonly object losses, correct
    cdef readonly int n_outputs

    def __dealloc__(self):
        free(self.records)
        free(self.ptrs)
        free(self.tensors)

    def __init__(self, str dtype, list table, list records, int n_outputs=1):
        if dtype not in ("float32", "float64"):
            raise ValueError(f"Program: dtype must be float32 or float64, got {dtype!r}")
        self.kind = 0 if dtype == "float32" else 1
        self.n_table = len(table)
        _fits_int("table", self.n_table)
        self.ptrs = <void **>malloc(max(self.n_table, 1) * sizeof(void *))
        self.records = <rp_record *>malloc(max(len(records), 1) * sizeof(rp_record))
        if self.ptrs == NULL or self.records == NULL:
            raise MemoryError("Program: no memory for the records")
        self.table = list(table)
        self.per_call = []
        self.views = []
        self.kept = []
        self.pcg64 = set()
        self.n_outputs = n_outputs
        self.losses = np.zeros(max(n_outputs, 1))
        self.correct = np.zeros(max(n_outputs, 1), dtype=np.dtype("l"))
        cdef Py_ssize_t i
        cdef object capsule
        for i, entry in enumerate(table):
            self.ptrs[i] = NULL
            if isinstance(entry, np.ndarray):
                if entry.dtype == _I64 or entry.dtype == _I32:
                    if not entry.flags.c_contiguous:
                        raise TypeError(f"table[{i}]: expected a C-contiguous array")
                else:
                    _same_kind(entry, f"table[{i}]", self.kind)
                self.ptrs[i] = _ptr(entry)
                self.kept.append(entry)
            elif isinstance(entry, np.random.Generator):
                if type(entry.bit_generator) is np.random.PCG64 and _pcg64_layout_ok():
                    self.ptrs[i] = <void *><size_t>entry.bit_generator.ctypes.state_address
                    self.pcg64.add(i)
                else:
                    capsule = entry.bit_generator.capsule
                    if not PyCapsule_IsValid(capsule, b"BitGenerator"):
                        raise TypeError(f"table[{i}]: the generator has no BitGenerator capsule")
                    self.ptrs[i] = PyCapsule_GetPointer(capsule, b"BitGenerator")
            elif isinstance(entry, tuple) and entry and entry[0] in ("input", "labels", "targets"):
                self.per_call.append((i, entry))
            elif isinstance(entry, tuple) and len(entry) == 3 and entry[0] == "view":
                self.views.append((i, entry[1]))
            else:
                raise TypeError(f"table[{i}]: expected an array, a Generator or a per-call "
                                f"spec, got {entry!r}")
        itemsize = 4 if self.kind == 0 else 8
        self.per_call_bytes = [spec[1] * 8 if spec[0] == "labels"
                               else int(np.prod(spec[1], dtype=np.int64)) * itemsize
                               for _, spec in self.per_call]
        for i, base in self.views:
            entry = self.table[i]
            if not (isinstance(base, int) and 0 <= base < i) or \
                    isinstance(self.table[base], np.random.Generator) or \
                    (isinstance(self.table[base], tuple) and self.table[base][0] == "labels"):
                raise ValueError(f"table[{i}]: a view must alias an earlier float array entry")
            if int(np.prod(entry[2], dtype=np.int64)) != \
                    int(np.prod(self._shape_of(base), dtype=np.int64)):
                raise ValueError(f"table[{i}]: a view of shape {tuple(entry[2])} does not have "
                                 f"the size of entry {base} {self._shape_of(base)}")
            self.ptrs[i] = self.ptrs[base]
        self.n_records = len(records)
        _fits_int("records", self.n_records)
        for i, spec in enumerate(records):
            self._fill(&self.records[i], spec, i)
        for i in range(self.n_records):
            if self.records[i].kind == _RECORD_KIND["overlap_gather"]:
                count = self.records[i].n
                if i + 1 + count > self.n_records or any(
                        self.records[j].kind in (_RECORD_KIND["overlap_gather"],
                                                 _RECORD_KIND["optimizer"])
                        for j in range(i + 1, i + 1 + count)):
                    raise ValueError(f"record {i}: an overlap_gather must cover the next "
                                     f"{count} records, none an overlap or the optimizer")
        self.state.losses = <double *>_ptr(self.losses)
        self.state.correct = <long *>_ptr(self.correct)
        self.tensors = NULL
        self.tensor_capacity = 0
        self.reset()

    # -- checking records ---------------------------------------------------------

    cdef object _shape_of(self, int index):
        """The shape of table entry index (a per-call entry's declared shape)."""
        entry = self.table[index]
        if isinstance(entry, np.ndarray):
            return entry.shape
        if isinstance(entry, tuple):
            if entry[0] == "labels":
                return (entry[1],)
            if entry[0] == "view":
                return tuple(entry[2])
            return tuple(entry[1])
        raise TypeError(f"table[{index}] is not an array")

    cdef object _base(self, int index):
        """The entry a view aliases (the entry itself otherwise)."""
        entry = self.table[index]
        while isinstance(entry, tuple) and entry[0] == "view":
            entry = self.table[entry[1]]
        return entry

    cdef int _index(self, object spec, int pos, str what, bint optional=False) except -2:
        a = spec["a"]
        value = a[pos] if pos < len(a) else None
        if value is None:
            if not optional:
                raise ValueError(f"record {spec['kind']}: {what} is required")
            return -1
        if not 0 <= value < self.n_table:
            raise ValueError(f"record {spec['kind']}: {what} index {value} outside the table")
        entry = self._base(value)
        if isinstance(entry, np.random.Generator):
            raise TypeError(f"record {spec['kind']}: {what} is a generator, not an array")
        if isinstance(entry, tuple) and entry[0] == "labels" and what != "labels":
            raise TypeError(f"record {spec['kind']}: {what} cannot be labels")
        if isinstance(entry, np.ndarray) and (entry.dtype == _I64 or entry.dtype == _I32) \
                and what not in ("labels", "argmax"):
            raise TypeError(f"record {spec['kind']}: {what} must be a float array")
        return value

    cdef int _real(self, object spec, int pos, str what, object shape, bint optional=False,
                   bint writable=False) except -2:
        """Index of a float array of the given shape (None: any shape of
        the size given as an int)."""
        cdef int index = self._index(spec, pos, what, optional)
        if index < 0:
            return index
        actual = self._shape_of(index)
        if isinstance(shape, int):
            if int(np.prod(actual, dtype=np.int64)) != shape:
                raise ValueError(f"record {spec['kind']}: {what} must have {shape} elements, "
                                 f"got shape {actual}")
        elif tuple(actual) != tuple(shape):
            raise ValueError(f"record {spec['kind']}: {what} must have shape {tuple(shape)}, "
                             f"got {tuple(actual)}")
        entry = self._base(index)
        if isinstance(entry, tuple) and entry[0] == "labels":
            raise TypeError(f"record {spec['kind']}: {what} must be a float array")
        if writable and isinstance(entry, np.ndarray) and not entry.flags.writeable:
            raise ValueError(f"record {spec['kind']}: {what} is read-only")
        if writable and isinstance(entry, tuple):
            raise ValueError(f"record {spec['kind']}: {what} is written, so it cannot be a "
                             f"per-call array")
        return index

    cdef int _fill(self, rp_record *r, object spec, Py_ssize_t where) except -1:
        kind_name = spec.get("kind")
        if kind_name not in _RECORD_KIND:
            raise ValueError(f"record {where}: unknown kind {kind_name!r}")
        r.kind = _RECORD_KIND[kind_name]
        cdef long n = spec.get("n", 0), m = spec.get("m", 0), k = spec.get("k", 0)
        cdef long s = spec.get("s", 0)
        if n < 0 or m < 0 or k < 0 or s < 0:
            raise ValueError(f"record {kind_name}: sizes must be >= 0")
        for name, v in (("n", n), ("m", m), ("k", k)):
            if kind_name in ("dense_fwd", "dense_softmax_fwd", "dense_bwd", "softmax_xent",
                             "accuracy"):
                _fits_int(name, v)
        r.n, r.m, r.k, r.s = n, m, k, s
        r.act = 0
        r.p0 = float(spec.get("p0") or 0.0)
        r.p1 = float(spec.get("p1") or 0.0)
        if kind_name == "softmax_xent" and spec.get("p0") is None:
            r.p0 = 1.0          # the loss's weight
        r.chunk = 0
        cdef int j
        for j in range(RP_RECORD_ARRAYS):
            r.a[j] = -1
        a = list(spec.get("a", []))
        if len(a) > RP_RECORD_ARRAYS:
            raise ValueError(f"record {kind_name}: at most {RP_RECORD_ARRAYS} arrays")
        if kind_name in ("dense_fwd", "dense_bwd", "act_fwd", "act_bwd", "conv_fwd", "conv_bwd"):
            act_name = spec.get("act", "linear")
            r.act = _elementwise_code(act_name) if kind_name.startswith("act") \
                else _act_code(act_name)
            r.p0 = _act_param(<rp_act>r.act, spec.get("p0"), act_name)
        if kind_name == "dense_fwd":
            r.a[0] = self._real(spec, 0, "x", (n, m))
            r.a[1] = self._real(spec, 1, "w", (m, k))
            r.a[2] = self._real(spec, 2, "b", (k,), True)
            r.a[3] = self._real(spec, 3, "y", (n, k), False, True)
        elif kind_name == "dense_softmax_fwd":
            r.a[0] = self._real(spec, 0, "x", (n, m))
            r.a[1] = self._real(spec, 1, "w", (m, k))
            r.a[2] = self._real(spec, 2, "b", (k,), True)
            r.a[3] = self._real(spec, 3, "logits", (n, k), False, True)
            r.a[4] = self._real(spec, 4, "y", (n, k), False, True)
        elif kind_name == "dense_bwd":
            r.a[0] = self._real(spec, 0, "x", (n, m))
            r.a[1] = self._real(spec, 1, "w", (m, k))
            r.a[2] = self._real(spec, 2, "y", (n, k))
            r.a[3] = self._real(spec, 3, "dy", (n, k))
            r.a[4] = self._real(spec, 4, "dz", (n, k), False, True)
            r.a[5] = self._real(spec, 5, "dw", (m, k), False, True)
            r.a[6] = self._real(spec, 6, "db", (k,), True, True)
            r.a[7] = self._real(spec, 7, "dx", (n, m), True, True)
        elif kind_name == "softmax_xent" or kind_name == "accuracy":
            if n < 1 or k < 1:
                raise ValueError(f"record {kind_name}: needs n >= 1 rows and k >= 1 classes")
            if not 0 <= m < self.losses.shape[0]:
                raise ValueError(f"record {kind_name}: output index {m} out of range")
            r.a[0] = self._real(spec, 0, "z" if kind_name == "softmax_xent" else "y", (n, k))
            labels = a[1] if len(a) > 1 else None
            targets = a[2] if len(a) > 2 else None
            if (labels is None) == (targets is None):
                raise ValueError(f"record {kind_name}: exactly one of labels and targets")
            if labels is not None:
                r.a[1] = self._index(spec, 1, "labels")
                entry = self.table[r.a[1]]
                if not (isinstance(entry, tuple) and entry[0] == "labels"
                        and entry[1] == n and entry[2] == k):
                    raise ValueError(f"record {kind_name}: labels must be a per-call "
                                     f"('labels', {n}, {k}) entry")
            else:
                r.a[2] = self._real(spec, 2, "targets", (n, k))
            if kind_name == "softmax_xent":
                r.a[3] = self._real(spec, 3, "grad", (n, k), False, True)
        elif kind_name == "act_fwd":
            r.a[0] = self._real(spec, 0, "x", n)
            r.a[1] = self._real(spec, 1, "y", n, False, True)
        elif kind_name == "act_bwd":
            r.a[0] = self._real(spec, 0, "x", n, True)
            r.a[1] = self._real(spec, 1, "y", n, True)
            needs_x = rp_act_derivative_needs_input(<rp_act>r.act)
            if (needs_x and r.a[0] < 0) or (not needs_x and r.a[1] < 0):
                raise ValueError(f"record act_bwd: {spec.get('act')} needs "
                                 f"{'x' if needs_x else 'y'}")
            r.a[2] = self._real(spec, 2, "dy", n)
            r.a[3] = self._real(spec, 3, "dx", n, False, True)
        elif kind_name == "dropout_fwd":
            r.a[0] = self._real(spec, 0, "x", n)
            r.a[1] = self._real(spec, 1, "y", n, False, True)
            r.a[2] = self._real(spec, 2, "mask", n, False, True)
            if len(a) < 4 or not isinstance(self.table[a[3]], np.random.Generator):
                raise TypeError("record dropout_fwd: the fourth array must be a Generator")
            r.a[3] = a[3]
            r.k = 1 if a[3] in self.pcg64 else 0
            if not 0.0 <= r.p0 < 1.0:
                raise ValueError(f"record dropout_fwd: rate must be in [0, 1), got {r.p0}")
        elif kind_name in ("mul", "add"):
            r.a[0] = self._real(spec, 0, "x0", n)
            r.a[1] = self._real(spec, 1, "x1", n)
            r.a[2] = self._real(spec, 2, "y", n, False, True)
        elif kind_name == "copy":
            r.a[0] = self._real(spec, 0, "x", n)
            r.a[1] = self._real(spec, 1, "y", n, False, True)
        elif kind_name in ("cols_in", "cols_out"):
            if k + m > s:
                raise ValueError(f"record {kind_name}: columns [{k}, {k + m}) exceed rows of {s}")
            narrow, wide = n * m, n * s
            r.a[0] = self._real(spec, 0, "x", narrow if kind_name == "cols_in" else wide)
            r.a[1] = self._real(spec, 1, "y", wide if kind_name == "cols_in" else narrow,
                                False, True)
        elif kind_name in ("conv_fwd", "conv_bwd"):
            x_shape, w_shape, stride, dilation, padding = spec["conv"]
            _conv_geom(_ShapeOnly(x_shape), _ShapeOnly(w_shape), stride, dilation, padding,
                       &r.conv)
            out_shape = (r.conv.n, r.conv.oh, r.conv.ow, r.conv.filters)
            r.chunk = int(spec.get("chunk", 0))
            pointwise = rp_conv2d_is_pointwise(&r.conv)
            per_image = <Py_ssize_t>r.conv.oh * r.conv.ow * r.conv.kh * r.conv.kw * r.conv.c
            if pointwise:
                r.chunk = 0
            elif not 1 <= r.chunk <= r.conv.n:
                raise ValueError(f"record {kind_name}: chunk must be in [1, {r.conv.n}]")
            col_size = 0 if pointwise else r.chunk * per_image
            if kind_name == "conv_fwd":
                r.a[0] = self._real(spec, 0, "x", tuple(x_shape))
                r.a[1] = self._real(spec, 1, "w", tuple(w_shape))
                r.a[2] = self._real(spec, 2, "b", (r.conv.filters,), True)
                r.a[3] = self._col(spec, 3, col_size)
                r.a[4] = self._real(spec, 4, "y", out_shape, False, True)
            else:
                r.a[0] = self._real(spec, 0, "x", tuple(x_shape))
                r.a[1] = self._real(spec, 1, "w", tuple(w_shape))
                r.a[2] = self._real(spec, 2, "y", out_shape)
                r.a[3] = self._real(spec, 3, "dy", out_shape)
                r.a[4] = self._col(spec, 4, col_size)
                r.a[5] = self._real(spec, 5, "dz", out_shape, False, True)
                r.a[6] = self._real(spec, 6, "dw", tuple(w_shape), False, True)
                r.a[7] = self._real(spec, 7, "db", (r.conv.filters,), True, True)
                r.a[8] = self._real(spec, 8, "dx", tuple(x_shape), True, True)
        elif kind_name in ("maxpool_fwd", "maxpool_bwd", "avgpool_fwd", "avgpool_bwd"):
            x_shape, pool, stride, padding = spec["pool"]
            _pool_geom(tuple(int(v) for v in x_shape), pool, stride, padding, &r.pool)
            out_shape = (r.pool.n, r.pool.oh, r.pool.ow, r.pool.c)
            x_shape = tuple(int(v) for v in x_shape)
            if kind_name == "maxpool_fwd":
                r.a[0] = self._real(spec, 0, "x", x_shape)
                r.a[1] = self._real(spec, 1, "y", out_shape, False, True)
                r.a[2] = self._argmax(spec, 2, out_shape)
            elif kind_name == "maxpool_bwd":
                r.a[0] = self._argmax(spec, 0, out_shape)
                r.a[1] = self._real(spec, 1, "dy", out_shape)
                r.a[2] = self._real(spec, 2, "dx", x_shape, False, True)
            elif kind_name == "avgpool_fwd":
                r.a[0] = self._real(spec, 0, "x", x_shape)
                r.a[1] = self._real(spec, 1, "y", out_shape, False, True)
            else:
                r.a[0] = self._real(spec, 0, "dy", out_shape)
                r.a[1] = self._real(spec, 1, "dx", x_shape, False, True)
        elif kind_name == "penalty":
            r.a[0] = self._real(spec, 0, "w", n)
            r.a[1] = self._real(spec, 1, "g", n, True, True)
            if not (np.isfinite(r.p0) and np.isfinite(r.p1) and r.p0 >= 0 and r.p1 >= 0):
                raise ValueError("record penalty: l1 and l2 must be finite and >= 0")
        elif kind_name == "overlap_gather":
            _fits_int("n", n)
        return 0

    cdef int _col(self, object spec, int pos, Py_ssize_t size) except -2:
        """The im2col workspace: a 1-D float array of at least size elements (or none)."""
        if size == 0:
            return -1
        cdef int index = self._index(spec, pos, "col")
        entry = self._base(index)
        if not isinstance(entry, np.ndarray) or entry.ndim != 1 or entry.size < size \
                or not entry.flags.writeable:
            raise ValueError(f"record {spec['kind']}: col must be a writable 1-D array of at "
                             f"least {size} elements")
        return index

    cdef int _argmax(self, object spec, int pos, tuple shape) except -2:
        cdef int index = self._index(spec, pos, "argmax")
        entry = self.table[index]
        if not isinstance(entry, np.ndarray) or entry.dtype != _I32 or entry.shape != shape:
            raise ValueError(f"record {spec['kind']}: argmax must be an int32 array of shape "
                             f"{shape}")
        return index

    # -- running ------------------------------------------------------------------

    def reset(self):
        """Start a step: no loss, no status, no optimizer, no gather."""
        self.state.loss = 0.0
        self.state.status = 0
        self.state.first_bad = -1
        self.state.tensors = NULL
        self.state.n_tensors = 0
        self.state.bounds = NULL
        self.state.gather = NULL
        self.state.n_gather = 0
        self.state.gathered = 0
        self.state.mode = RP_OPT_CHECK_APPLY
        self.optimizer_set = False

    def add_loss(self, double value):
        """Add a loss computed outside the program (checked by check_loss)."""
        self.state.loss += value

    def set_inputs(self, list arrays):
        """The per-call arrays, in table order: each checked (dtype, shape,
        contiguity; labels in range) and put in the pointer table."""
        if len(arrays) != len(self.per_call):
            raise ValueError(f"Program: {len(self.per_call)} per-call arrays expected, got "
                             f"{len(arrays)}")
        cdef int index
        self.current = None
        for (index, spec), arr in zip(self.per_call, arrays):
            if spec[0] == "labels":
                _check_labels(arr, spec[1], spec[2])
            else:
                _same_kind(arr, spec[0], self.kind)
                if arr.shape != tuple(spec[1]):
                    raise ValueError(f"Program: {spec[0]} must have shape {tuple(spec[1])}, "
                                     f"got {arr.shape}")
            self.ptrs[index] = _ptr(arr)
        for index, base in self.views:
            self.ptrs[index] = self.ptrs[base]
        self.current = list(arrays)     # the pointers stay valid while the program holds them
        return 0

    def set_optimizer(self, str rule, list params, list grads, list state0, list state1,
                      str mode, double lr, double weight_decay=0.0, double momentum=0.0,
                      bint nesterov=False, double beta1=0.0, double beta2=0.0, double c1=1.0,
                      double c2=1.0, bint decoupled=False, double rho=0.0, double eps=0.0,
                      object bounds=None):
        """The optimizer step of the optimizer record (as optimizer_step)."""
        self.state.opt = _opt_config(rule, lr, weight_decay, momentum, nesterov, beta1, beta2,
                                     c1, c2, decoupled, rho, eps)
        self.state.mode = _opt_mode(mode)
        self.state.bounds = _opt_bounds(bounds, "Program")
        # A training loop passes the optimizer's same lists step after step
        # (Optimizer._step_lists): their arrays were checked then.
        last = self.opt_lists
        if last is not None and last[0] is params and last[1] is grads and last[2] is state0 \
                and last[3] is state1 and last[4] == rule and last[5] == (momentum != 0.0) \
                and last[6] == len(params):
            self.state.tensors = self.tensors
            self.state.n_tensors = <int>last[6]
            self.optimizer_set = True
            return 0
        self.opt_lists = None
        cdef Py_ssize_t count = len(params)
        _fits_int("number of parameters", count)
        cdef rp_opt_tensor *grown
        if count > self.tensor_capacity:
            grown = <rp_opt_tensor *>realloc(self.tensors, count * sizeof(rp_opt_tensor))
            if grown == NULL:
                raise MemoryError("Program: no memory for the optimizer's tensor list")
            self.tensors = grown
            self.tensor_capacity = count
        cdef int kind = _fill_opt_tensors(rule, params, grads, state0, state1, momentum,
                                          self.tensors)
        if kind != -1 and kind != self.kind:
            raise TypeError("params: the optimizer's parameters must have the program's dtype")
        self.state.tensors = self.tensors
        self.state.n_tensors = <int>count
        self.opt_lists = (params, grads, state0, state1, rule, momentum != 0.0, count)
        self.optimizer_set = True
        return 0

    def set_gather(self, object next_batch):
        """Rows to copy during the run: (x, index, out) as gather_rows, or a list
        of them (one per model input); no out may overlap any array of the
        program, its inputs, the optimizer's arrays, or another job's x or out."""
        self.state.gather = NULL
        self.state.n_gather = 0
        if next_batch is None:
            return 0
        jobs = [next_batch] if isinstance(next_batch, tuple) else list(next_batch)
        if not 1 <= len(jobs) <= RP_PROGRAM_MAX_GATHERS:
            raise ValueError(f"Program: 1 to {RP_PROGRAM_MAX_GATHERS} gathers, got {len(jobs)}")
        cdef int j, other
        cdef char *out0
        cdef char *out1
        for j, job in enumerate(jobs):
            if not isinstance(job, tuple) or len(job) != 3:
                raise TypeError("Program: next_batch must be (x, index, out), or a list of them")
            _gather_job("Program: next_batch", job[0], job[1], job[2], &self.gathers[j])
        self.n_gathers = len(jobs)
        for j in range(self.n_gathers):
            self._check_not_overlapping(&self.gathers[j])
            out0 = <char *>self.gathers[j].out
            out1 = out0 + self.gathers[j].count * self.gathers[j].row_bytes
            for other in range(self.n_gathers):
                if other != j and (
                        _overlap_bytes(out0, out1, <char *>self.gathers[other].out,
                                       self.gathers[other].count * self.gathers[other].row_bytes)
                        or _overlap_bytes(out0, out1, <char *>self.gathers[other].x,
                                          self.gathers[other].n_rows
                                          * self.gathers[other].row_bytes)):
                    raise ValueError("Program: next_batch's outs overlap each other or another "
                                     "job's x")
        self.state.gather = self.gathers
        self.state.n_gather = self.n_gathers
        self.state.gathered = 0
        return 0

    cdef int _check_not_overlapping(self, rp_rows_gather *gather) except -1:
        """A next-batch buffer written during a run must not be read or written
        by it."""
        cdef char *out0 = <char *>gather.out
        cdef char *out1 = out0 + gather.count * gather.row_bytes
        cdef size_t itemsize = 4 if self.kind == 0 else 8
        cdef int j, t
        cdef char *starts[4]
        if out1 == out0:
            return 0
        for arr in self.kept:
            if _overlap_bytes(out0, out1, <char *>_ptr(arr), cnp.PyArray_NBYTES(<cnp.ndarray>arr)):
                raise ValueError("Program: next_batch's out overlaps an array of the program")
        cdef size_t nbytes
        for (index, spec), nbytes in zip(self.per_call, self.per_call_bytes):
            p = <char *>self.ptrs[index]
            if p != NULL and _overlap_bytes(out0, out1, p, nbytes):
                raise ValueError("Program: next_batch's out overlaps an input of the step")
        for j in range(self.state.n_tensors):
            starts[0] = <char *>self.tensors[j].param
            starts[1] = <char *>self.tensors[j].grad
            starts[2] = <char *>self.tensors[j].state0
            starts[3] = <char *>self.tensors[j].state1
            for t in range(4):
                if starts[t] != NULL and _overlap_bytes(out0, out1, starts[t],
                                                        self.tensors[j].n * itemsize):
                    raise ValueError("Program: next_batch's out overlaps a parameter, "
                                     "gradient or optimizer state")
        return 0

    def step(self, list inputs, str rule, list params, list grads, list state0, list state1,
             str mode, double lr, tuple hyper, object next_batch=None, object bounds=None):
        """A whole step of a program of one stretch: reset, set_inputs,
        set_optimizer (``hyper``: weight_decay, momentum, nesterov, beta1, beta2,
        c1, c2, decoupled, rho, eps), set_gather and run every record; returns
        (status, loss, first_bad, gathered)."""
        self.reset()
        self.set_inputs(inputs)
        self.set_optimizer(rule, params, grads, state0, state1, mode, lr, *hyper, bounds=bounds)
        if next_batch is not None:
            self.set_gather(next_batch)
        status, loss, first_bad = self.run(0, self.n_records, True)
        return status, loss, first_bad, bool(self.state.gathered)

    def forward(self, list inputs):
        """reset, set_inputs and run every record (an inference program of one
        stretch); returns the status."""
        self.reset()
        self.set_inputs(inputs)
        status, _, _ = self.run(0, self.n_records, False)
        return status

    def run(self, int begin, int end, bint finish=False):
        """Run records [begin, end) with the GIL released; returns (status,
        loss so far, the optimizer's refused index or -1)."""
        if not 0 <= begin <= end <= self.n_records:
            raise ValueError(f"Program.run: [{begin}, {end}) is not a range of the "
                             f"{self.n_records} records")
        if self.per_call and self.current is None:
            raise ValueError("Program.run: the per-call arrays are not set (set_inputs)")
        if not self.optimizer_set:
            for i in range(begin, end):
                if self.records[i].kind == _RECORD_KIND["optimizer"]:
                    raise ValueError("Program.run: the optimizer is not set (set_optimizer)")
        with nogil:
            if self.kind == 0:
                rp_program_run_f32(self.records, begin, end, self.ptrs, &self.state, finish)
            else:
                rp_program_run_f64(self.records, begin, end, self.ptrs, &self.state, finish)
        return self.state.status, self.state.loss, self.state.first_bad

    @property
    def gathered(self):
        return bool(self.state.gathered)


# ================================================================ finiteness scan

cdef extern from "retroprop/check.h":
    long rp_find_nonfinite_f32(size_t n, const float *x) nogil
    long rp_find_nonfinite_f64(size_t n, const double *x) nogil


def find_nonfinite(x):
    """Flat index of the first NaN/Inf of the C-contiguous array x, or -1."""
    cdef int kind = _real_kind(x, "x")
    cdef size_t n = <size_t>cnp.PyArray_SIZE(<cnp.ndarray>x)
    cdef void *px = _ptr(x)
    cdef long first
    with nogil:
        if kind == 0:
            first = rp_find_nonfinite_f32(n, <float *>px)
        else:
            first = rp_find_nonfinite_f64(n, <double *>px)
    return first



# ================================================================ batch normalisation
# Per-channel statistics, normalisation and the fused backward over (rows, C)
# data (csrc/include/retroprop/norm.h has the formulas).

cdef extern from "retroprop/norm.h":
    enum: RP_BN_VARIANCE_OVERFLOW
    int rp_batchnorm_stats_f32(long rows, int c, const float *x, float *mean, float *var) nogil
    int rp_batchnorm_stats_f64(long rows, int c, const double *x, double *mean, double *var) nogil
    int rp_batchnorm_apply_f32(long rows, int c, const float *x, const float *mean,
                               const float *var, const float *gamma, const float *beta,
                               float eps, float *y) nogil
    int rp_batchnorm_apply_f64(long rows, int c, const double *x, const double *mean,
                               const double *var, const double *gamma, const double *beta,
                               double eps, double *y) nogil
    int rp_batchnorm_backward_f32(long rows, int c, const float *x, const float *dy,
                                  const float *mean, const float *var, const float *gamma,
                                  float eps, int batch_stats, float *dgamma, float *dbeta,
                                  float *dx) nogil
    int rp_batchnorm_backward_f64(long rows, int c, const double *x, const double *dy,
                                  const double *mean, const double *var, const double *gamma,
                                  double eps, int batch_stats, double *dgamma, double *dbeta,
                                  double *dx) nogil
    void rp_batchnorm_update_moving_f32(int c, const float *mean, const float *var,
                                        float momentum, float *moving_mean,
                                        float *moving_var) nogil
    void rp_batchnorm_update_moving_f64(int c, const double *mean, const double *var,
                                        double momentum, double *moving_mean,
                                        double *moving_var) nogil
    int rp_batchnorm_apply_act_f32(long rows, int c, const float *x, const float *mean,
                                   const float *var, const float *gamma, const float *beta,
                                   float eps, rp_act act, float *y) nogil
    int rp_batchnorm_apply_act_f64(long rows, int c, const double *x, const double *mean,
                                   const double *var, const double *gamma, const double *beta,
                                   double eps, rp_act act, double *y) nogil
    int rp_batchnorm_backward_act_f32(long rows, int c, const float *x, const float *y,
                                      const float *dy, const float *mean, const float *var,
                                      const float *gamma, float eps, int batch_stats, rp_act act,
                                      float *dgamma, float *dbeta, float *dx) nogil
    int rp_batchnorm_backward_act_f64(long rows, int c, const double *x, const double *y,
                                      const double *dy, const double *mean, const double *var,
                                      const double *gamma, double eps, int batch_stats,
                                      rp_act act, double *dgamma, double *dbeta,
                                      double *dx) nogil


cdef int _bn_rows_channels(object x, Py_ssize_t *rows, Py_ssize_t *c) except -1:
    """(rows, C) view of a channels-last array: C = last axis, rows = all the others."""
    if x.ndim < 1 or x.size == 0:
        raise ValueError(f"batchnorm: expected a non-empty array (..., C), got shape {x.shape}")
    c[0] = x.shape[x.ndim - 1]
    rows[0] = x.size // c[0]
    _fits_int("x", c[0])
    return 0


cdef int _bn_vector(object arr, str name, int kind, Py_ssize_t c, int writable,
                    int optional=1) except -1:
    if arr is None:
        if not optional:
            raise TypeError(f"{name}: expected a numpy.ndarray, got None")
        return 0
    _same_kind(arr, name, kind, writable)
    _shape(arr, name, (c,))
    return 0


def batchnorm_stats(x, mean, var, moving_mean=None, moving_var=None, double momentum=0.0):
    """mean, var (C,) <- per-channel mean and biased variance of x (..., C). With
    moving_mean and moving_var (C,): then moving = momentum * moving + (1 - momentum)
    * batch, unless the variance overflowed (nothing moves then)."""
    cdef int kind = _real_kind(x, "x")
    cdef Py_ssize_t rows, c
    _bn_rows_channels(x, &rows, &c)
    _bn_vector(mean, "mean", kind, c, 1, 0)
    _bn_vector(var, "var", kind, c, 1, 0)
    if (moving_mean is None) != (moving_var is None):
        raise ValueError("batchnorm_stats: give both moving_mean and moving_var, or neither")
    cdef bint moving = moving_mean is not None
    if moving:
        _bn_vector(moving_mean, "moving_mean", kind, c, 1, 0)
        _bn_vector(moving_var, "moving_var", kind, c, 1, 0)
        if not 0.0 <= momentum <= 1.0:
            raise ValueError(f"batchnorm_stats: momentum must be in [0, 1], got {momentum}")
    cdef void *px = _ptr(x)
    cdef void *pm = _ptr(mean)
    cdef void *pv = _ptr(var)
    cdef void *pmm = _ptr_or_null(moving_mean)
    cdef void *pmv = _ptr_or_null(moving_var)
    cdef int rc
    with nogil:
        if kind == 0:
            rc = rp_batchnorm_stats_f32(rows, <int>c, <float *>px, <float *>pm, <float *>pv)
            if rc == 0 and moving:
                rp_batchnorm_update_moving_f32(<int>c, <float *>pm, <float *>pv, <float>momentum,
                                               <float *>pmm, <float *>pmv)
        else:
            rc = rp_batchnorm_stats_f64(rows, <int>c, <double *>px, <double *>pm, <double *>pv)
            if rc == 0 and moving:
                rp_batchnorm_update_moving_f64(<int>c, <double *>pm, <double *>pv, momentum,
                                               <double *>pmm, <double *>pmv)
    if rc == RP_BN_VARIANCE_OVERFLOW:
        raise ValueError(f"batchnorm_stats: the variance of finite inputs overflows {x.dtype} "
                         f"(inputs too large in magnitude); scale the inputs or use float64")
    if rc != 0:
        raise MemoryError("batchnorm_stats: out of memory")
    return mean, var


def batchnorm_apply(x, mean, var, gamma, beta, double eps, y, activation="linear"):
    """y = act((x - mean) / sqrt(var + eps) * gamma + beta); gamma/beta may be None.
    activation: one whose derivative comes from the output (ACTIVATIONS), with
    its default parameter."""
    cdef int kind = _real_kind(x, "x")
    cdef Py_ssize_t rows, c
    _bn_rows_channels(x, &rows, &c)
    _bn_vector(mean, "mean", kind, c, 0, 0)
    _bn_vector(var, "var", kind, c, 0, 0)
    _bn_vector(gamma, "gamma", kind, c, 0)
    _bn_vector(beta, "beta", kind, c, 0)
    _same_kind(y, "y", kind, 1)
    _shape(y, "y", x.shape)
    cdef rp_act act = _act_code(activation)
    cdef void *px = _ptr(x)
    cdef void *pm = _ptr(mean)
    cdef void *pv = _ptr(var)
    cdef void *pg = _ptr_or_null(gamma)
    cdef void *pb = _ptr_or_null(beta)
    cdef void *py = _ptr(y)
    cdef int rc
    with nogil:
        if kind == 0:
            rc = rp_batchnorm_apply_act_f32(rows, <int>c, <float *>px, <float *>pm, <float *>pv,
                                            <float *>pg, <float *>pb, <float>eps, act, <float *>py)
        else:
            rc = rp_batchnorm_apply_act_f64(rows, <int>c, <double *>px, <double *>pm,
                                            <double *>pv, <double *>pg, <double *>pb, eps, act,
                                            <double *>py)
    if rc != 0:
        raise MemoryError("batchnorm_apply: out of memory")
    return y


def batchnorm_backward(x, dy, mean, var, gamma, double eps, bint batch_stats, dgamma, dbeta, dx,
                       y=None, activation="linear"):
    """dgamma, dbeta, dx (each may be None) of batchnorm_apply; batch_stats: training mode.
    With an activation, of batchnorm_apply(..., activation): y is its output."""
    cdef int kind = _real_kind(x, "x")
    cdef Py_ssize_t rows, c
    _bn_rows_channels(x, &rows, &c)
    _same_kind(dy, "dy", kind)
    _shape(dy, "dy", x.shape)
    cdef rp_act act = _act_code(activation)
    if act != RP_ACT_LINEAR:
        if y is None:
            raise ValueError(f"batchnorm_backward: activation {activation!r} needs its output y")
        _same_kind(y, "y", kind)
        _shape(y, "y", x.shape)
    cdef void *py = NULL if act == RP_ACT_LINEAR else _ptr(y)
    _bn_vector(mean, "mean", kind, c, 0, 0)
    _bn_vector(var, "var", kind, c, 0, 0)
    _bn_vector(gamma, "gamma", kind, c, 0)
    _bn_vector(dgamma, "dgamma", kind, c, 1)
    _bn_vector(dbeta, "dbeta", kind, c, 1)
    if dx is not None:
        _same_kind(dx, "dx", kind, 1)
        _shape(dx, "dx", x.shape)
    cdef void *px = _ptr(x)
    cdef void *pdy = _ptr(dy)
    cdef void *pm = _ptr(mean)
    cdef void *pv = _ptr(var)
    cdef void *pg = _ptr_or_null(gamma)
    cdef void *pdg = _ptr_or_null(dgamma)
    cdef void *pdb = _ptr_or_null(dbeta)
    cdef void *pdx = _ptr_or_null(dx)
    cdef int rc
    with nogil:
        if kind == 0:
            rc = rp_batchnorm_backward_act_f32(rows, <int>c, <float *>px, <float *>py,
                                               <float *>pdy, <float *>pm, <float *>pv,
                                               <float *>pg, <float>eps, batch_stats, act,
                                               <float *>pdg, <float *>pdb, <float *>pdx)
        else:
            rc = rp_batchnorm_backward_act_f64(rows, <int>c, <double *>px, <double *>py,
                                               <double *>pdy, <double *>pm, <double *>pv,
                                               <double *>pg, eps, batch_stats, act,
                                               <double *>pdg, <double *>pdb, <double *>pdx)
    if rc != 0:
        raise MemoryError("batchnorm_backward: out of memory")
    return dx


# ================================================================ residual sum, global pooling

cdef extern from "retroprop/residual.h":
    void rp_add_act_f32(size_t n, const float *a, const float *b, rp_act act, double param,
                        float *y) nogil
    void rp_add_act_f64(size_t n, const double *a, const double *b, rp_act act, double param,
                        double *y) nogil

cdef extern from "retroprop/pool.h":
    void rp_global_avgpool_forward_f32(long n, long pixels, int c, const float *x, float *y) nogil
    void rp_global_avgpool_forward_f64(long n, long pixels, int c, const double *x, double *y) nogil
    void rp_global_avgpool_backward_f32(long n, long pixels, int c, const float *dy,
                                        float *dx) nogil
    void rp_global_avgpool_backward_f64(long n, long pixels, int c, const double *dy,
                                        double *dx) nogil


def add_act(a, b, activation, y, param=None):
    """y = act(a + b) elementwise in one pass (a residual block's sum and its
    activation); a, b and y of one shape and dtype; y may be a or b."""
    cdef int kind = _real_kind(a, "a")
    _same_kind(b, "b", kind)
    _same_shape(b, "b", a)
    _same_kind(y, "y", kind, 1)
    _same_shape(y, "y", a)
    cdef rp_act act = _act_code(activation)
    cdef double p = _act_param(act, param, activation, kind)
    cdef size_t n = <size_t>a.size
    cdef void *pa = _ptr(a)
    cdef void *pb = _ptr(b)
    cdef void *py = _ptr(y)
    with nogil:
        if kind == 0:
            rp_add_act_f32(n, <float *>pa, <float *>pb, act, p, <float *>py)
        else:
            rp_add_act_f64(n, <double *>pa, <double *>pb, act, p, <double *>py)
    return y


cdef int _gap_dims(object x, str name, Py_ssize_t *n, Py_ssize_t *pixels, Py_ssize_t *c) except -1:
    if x.ndim < 3 or x.size == 0:
        raise ValueError(f"global_avgpool: expected a non-empty {name} of shape (N, ..., C), "
                         f"got {x.shape}")
    n[0] = x.shape[0]
    c[0] = x.shape[x.ndim - 1]
    pixels[0] = x.size // (n[0] * c[0])
    _fits_int(name, c[0])
    return 0


def global_avgpool_forward(x, y):
    """y (N, C) = the mean of x (N, ..., C) over all its middle axes."""
    cdef int kind = _real_kind(x, "x")
    cdef Py_ssize_t n, pixels, c
    _gap_dims(x, "x", &n, &pixels, &c)
    _same_kind(y, "y", kind, 1)
    _shape2(y, "y", n, c)
    cdef void *px = _ptr(x)
    cdef void *py = _ptr(y)
    with nogil:
        if kind == 0:
            rp_global_avgpool_forward_f32(n, pixels, <int>c, <float *>px, <float *>py)
        else:
            rp_global_avgpool_forward_f64(n, pixels, <int>c, <double *>px, <double *>py)
    return y


def global_avgpool_backward(dy, dx):
    """dx (N, ..., C) = dy (N, C) / (the number of positions) at every position."""
    cdef int kind = _real_kind(dx, "dx")
    cdef Py_ssize_t n, pixels, c
    _gap_dims(dx, "dx", &n, &pixels, &c)
    if not cnp.PyArray_ISWRITEABLE(<cnp.ndarray>dx):
        raise ValueError("dx: output array is read-only")
    _same_kind(dy, "dy", kind)
    _shape2(dy, "dy", n, c)
    cdef void *pdy = _ptr(dy)
    cdef void *pdx = _ptr(dx)
    with nogil:
        if kind == 0:
            rp_global_avgpool_backward_f32(n, pixels, <int>c, <float *>pdy, <float *>pdx)
        else:
            rp_global_avgpool_backward_f64(n, pixels, <int>c, <double *>pdy, <double *>pdx)
    return dx
