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

cnp.import_array()

cdef extern from "retroprop/runtime.h":
    ctypedef enum rp_simd_level:
        RP_SIMD_GENERIC
        RP_SIMD_AVX2
    int rp_get_num_threads()
    void rp_set_num_threads(int n)
    rp_simd_level rp_simd_best()
    rp_simd_level rp_simd_in_use()
    rp_simd_level rp_simd_set(rp_simd_level level)
    const char *rp_simd_name(rp_simd_level level)
    int rp_have_openmp()
    const char *rp_compiler()

cdef extern from "retroprop/act.h":
    ctypedef enum rp_act:
        RP_ACT_LINEAR
        RP_ACT_RELU
        RP_ACT_SIGMOID
        RP_ACT_TANH
    void rp_act_forward_f32(rp_act act, size_t n, const float *x, float *y) nogil
    void rp_act_forward_f64(rp_act act, size_t n, const double *x, double *y) nogil
    void rp_act_backward_f32(rp_act act, size_t n, const float *y, const float *dy, float *dx) nogil
    void rp_act_backward_f64(rp_act act, size_t n, const double *y, const double *dy, double *dx) nogil

cdef extern from "retroprop/gemm.h":
    void rp_gemm_f32(int trans_a, int trans_b, int m, int n, int k, float alpha,
                     const float *a, int lda, const float *b, int ldb, float beta,
                     float *c, int ldc, const float *bias, rp_act act) nogil
    void rp_gemm_f64(int trans_a, int trans_b, int m, int n, int k, double alpha,
                     const double *a, int lda, const double *b, int ldb, double beta,
                     double *c, int ldc, const double *bias, rp_act act) nogil

cdef extern from "retroprop/dense.h":
    void rp_dense_forward_f32(int n_batch, int n_in, int n_out, const float *x, const float *w,
                              const float *b, rp_act act, float *y) nogil
    void rp_dense_forward_f64(int n_batch, int n_in, int n_out, const double *x, const double *w,
                              const double *b, rp_act act, double *y) nogil
    void rp_dense_backward_f32(int n_batch, int n_in, int n_out, const float *x, const float *w,
                               const float *y, const float *dy, rp_act act, float *dz,
                               float *dw, float *db, float *dx) nogil
    void rp_dense_backward_f64(int n_batch, int n_in, int n_out, const double *x, const double *w,
                               const double *y, const double *dy, rp_act act, double *dz,
                               double *dw, double *db, double *dx) nogil

cdef extern from "retroprop/loss.h":
    void rp_softmax_f32(int n, int c, const float *x, float *out) nogil
    void rp_softmax_f64(int n, int c, const double *x, double *out) nogil
    double rp_softmax_xent_f32(int n, int c, const float *z, const int64_t *labels,
                               const float *targets, float *grad) nogil
    double rp_softmax_xent_f64(int n, int c, const double *z, const int64_t *labels,
                               const double *targets, double *grad) nogil

cdef extern from "retroprop/optim.h":
    void rp_sgd_step_f32(size_t n, float *param, const float *grad, float *velocity, float lr,
                         float momentum, int nesterov, float weight_decay) nogil
    void rp_sgd_step_f64(size_t n, double *param, const double *grad, double *velocity, double lr,
                         double momentum, int nesterov, double weight_decay) nogil


ACTIVATIONS = {"linear": RP_ACT_LINEAR, "relu": RP_ACT_RELU,
               "sigmoid": RP_ACT_SIGMOID, "tanh": RP_ACT_TANH}
_INT_MAX = 2147483647
_F32 = np.dtype(np.float32)
_F64 = np.dtype(np.float64)


# ---------------------------------------------------------------- validation

cdef int _real_kind(object arr, str name) except -1:
    """0 for float32, 1 for float64; TypeError for anything else or non-contiguous."""
    if not isinstance(arr, np.ndarray):
        raise TypeError(f"{name}: expected a numpy.ndarray, got {type(arr).__name__}")
    if arr.dtype == _F32:
        kind = 0
    elif arr.dtype == _F64:
        kind = 1
    else:
        raise TypeError(f"{name}: expected dtype float32 or float64, got {arr.dtype}")
    if not arr.flags.c_contiguous:
        raise TypeError(f"{name}: expected a C-contiguous array (use numpy.ascontiguousarray)")
    return kind


cdef int _same_kind(object arr, str name, int kind, int writable=0) except -1:
    k = _real_kind(arr, name)
    if k != kind:
        raise TypeError(f"{name}: expected dtype {'float64' if kind else 'float32'}, got {arr.dtype}")
    if writable and not arr.flags.writeable:
        raise ValueError(f"{name}: output array is read-only")
    return k


cdef int _shape(object arr, str name, tuple expected) except -1:
    if arr.shape != expected:
        raise ValueError(f"{name}: expected shape {expected}, got {arr.shape}")
    return 0


cdef int _fits_int(str name, Py_ssize_t value) except -1:
    if value > _INT_MAX:
        raise ValueError(f"{name}: dimension {value} exceeds the kernel limit {_INT_MAX}")
    return 0


cdef rp_act _act_code(object activation) except *:
    try:
        return ACTIVATIONS[activation]
    except (KeyError, TypeError):
        raise ValueError(f"activation: expected one of {sorted(ACTIVATIONS)}, got {activation!r}") from None


cdef inline void *_ptr(object arr):
    return cnp.PyArray_DATA(<cnp.ndarray>arr)


cdef inline void *_ptr_or_null(object arr):
    return NULL if arr is None else cnp.PyArray_DATA(<cnp.ndarray>arr)


# ---------------------------------------------------------------- runtime

def get_num_threads():
    return rp_get_num_threads()


def set_num_threads(int n):
    if n < 1:
        raise ValueError(f"set_num_threads: expected n >= 1, got {n}")
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


def dense_forward(x, w, b, activation, y):
    """y = act(x @ w + b); b may be None."""
    cdef int kind = _real_kind(x, "x")
    _same_kind(w, "w", kind)
    _same_kind(y, "y", kind, 1)
    if x.ndim != 2 or w.ndim != 2:
        raise ValueError(f"dense_forward: expected 2-D x and w, got x{x.shape}, w{w.shape}")
    cdef Py_ssize_t n_batch = x.shape[0], n_in = x.shape[1], n_out = w.shape[1]
    _shape(w, "w", (n_in, n_out))
    _shape(y, "y", (n_batch, n_out))
    if b is not None:
        _same_kind(b, "b", kind)
        _shape(b, "b", (n_out,))
    for name, v in (("n_batch", n_batch), ("n_in", n_in), ("n_out", n_out)):
        _fits_int(name, v)
    cdef rp_act act = _act_code(activation)
    cdef int nb = <int>n_batch, ni = <int>n_in, no = <int>n_out
    cdef void *px = _ptr(x)
    cdef void *pw = _ptr(w)
    cdef void *pb = _ptr_or_null(b)
    cdef void *py = _ptr(y)
    with nogil:
        if kind == 0:
            rp_dense_forward_f32(nb, ni, no, <float *>px, <float *>pw, <float *>pb, act, <float *>py)
        else:
            rp_dense_forward_f64(nb, ni, no, <double *>px, <double *>pw, <double *>pb, act, <double *>py)
    return y


def dense_backward(x, w, y, dy, activation, dz, dw, db, dx):
    """dz = dy * act'(y); dw = x.T @ dz; db = dz.sum(0) (db may be None); dx = dz @ w.T (dx may be None).

    dz is a workspace of dy's shape; it may be dy itself (dy is then overwritten)."""
    cdef int kind = _real_kind(x, "x")
    _same_kind(w, "w", kind)
    _same_kind(y, "y", kind)
    _same_kind(dy, "dy", kind)
    _same_kind(dz, "dz", kind, 1)
    _same_kind(dw, "dw", kind, 1)
    if x.ndim != 2 or w.ndim != 2:
        raise ValueError(f"dense_backward: expected 2-D x and w, got x{x.shape}, w{w.shape}")
    cdef Py_ssize_t n_batch = x.shape[0], n_in = x.shape[1], n_out = w.shape[1]
    _shape(w, "w", (n_in, n_out))
    _shape(y, "y", (n_batch, n_out))
    _shape(dy, "dy", (n_batch, n_out))
    _shape(dz, "dz", (n_batch, n_out))
    _shape(dw, "dw", (n_in, n_out))
    if db is not None:
        _same_kind(db, "db", kind, 1)
        _shape(db, "db", (n_out,))
    if dx is not None:
        _same_kind(dx, "dx", kind, 1)
        _shape(dx, "dx", (n_batch, n_in))
    for name, v in (("n_batch", n_batch), ("n_in", n_in), ("n_out", n_out)):
        _fits_int(name, v)
    cdef rp_act act = _act_code(activation)
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
            rp_dense_backward_f32(nb, ni, no, <float *>px, <float *>pw, <float *>py, <float *>pdy, act,
                                  <float *>pdz, <float *>pdw, <float *>pdb, <float *>pdx)
        else:
            rp_dense_backward_f64(nb, ni, no, <double *>px, <double *>pw, <double *>py, <double *>pdy, act,
                                  <double *>pdz, <double *>pdw, <double *>pdb, <double *>pdx)
    return dx


def act_forward(activation, x, y):
    """y = act(x) elementwise; y may be x."""
    cdef int kind = _real_kind(x, "x")
    _same_kind(y, "y", kind, 1)
    _shape(y, "y", x.shape)
    cdef rp_act act = _act_code(activation)
    cdef size_t n = x.size
    cdef void *px = _ptr(x)
    cdef void *py = _ptr(y)
    with nogil:
        if kind == 0:
            rp_act_forward_f32(act, n, <float *>px, <float *>py)
        else:
            rp_act_forward_f64(act, n, <double *>px, <double *>py)
    return y


def act_backward(activation, y, dy, dx):
    """dx = dy * act'(z) from y = act(z); dx may be dy."""
    cdef int kind = _real_kind(y, "y")
    _same_kind(dy, "dy", kind)
    _same_kind(dx, "dx", kind, 1)
    _shape(dy, "dy", y.shape)
    _shape(dx, "dx", y.shape)
    cdef rp_act act = _act_code(activation)
    cdef size_t n = y.size
    cdef void *py = _ptr(y)
    cdef void *pdy = _ptr(dy)
    cdef void *pdx = _ptr(dx)
    with nogil:
        if kind == 0:
            rp_act_backward_f32(act, n, <float *>py, <float *>pdy, <float *>pdx)
        else:
            rp_act_backward_f64(act, n, <double *>py, <double *>pdy, <double *>pdx)
    return dx


def softmax(x, out):
    """Row-wise softmax of a 2-D array with at least one column."""
    cdef int kind = _real_kind(x, "x")
    _same_kind(out, "out", kind, 1)
    if x.ndim != 2 or x.shape[1] < 1:
        raise ValueError(f"softmax: expected a 2-D array with at least one column, got shape {x.shape}")
    _shape(out, "out", x.shape)
    _fits_int("rows", x.shape[0])
    _fits_int("columns", x.shape[1])
    cdef int n = <int>x.shape[0], c = <int>x.shape[1]
    cdef void *px = _ptr(x)
    cdef void *po = _ptr(out)
    with nogil:
        if kind == 0:
            rp_softmax_f32(n, c, <float *>px, <float *>po)
        else:
            rp_softmax_f64(n, c, <double *>px, <double *>po)
    return out


def softmax_cross_entropy(z, labels, targets, grad):
    """Mean softmax cross-entropy of logits z (n, c) against int64 labels (n,) or
    targets (n, c); writes (softmax(z) - t) / n into grad unless grad is None."""
    cdef int kind = _real_kind(z, "logits")
    if z.ndim != 2 or z.shape[0] < 1 or z.shape[1] < 1:
        raise ValueError(f"softmax_cross_entropy: expected logits of shape (N>=1, C>=1), got {z.shape}")
    cdef Py_ssize_t n = z.shape[0], c = z.shape[1]
    _fits_int("rows", n)
    _fits_int("classes", c)
    if (labels is None) == (targets is None):
        raise ValueError("softmax_cross_entropy: pass exactly one of labels and targets")
    cdef cnp.ndarray lab
    if labels is not None:
        if not isinstance(labels, np.ndarray) or labels.dtype != np.int64 or not labels.flags.c_contiguous:
            raise TypeError("labels: expected a C-contiguous int64 numpy array")
        _shape(labels, "labels", (n,))
        if n and (labels.min() < 0 or labels.max() >= c):
            bad = labels[(labels < 0) | (labels >= c)][0]
            raise ValueError(f"labels: class id {bad} out of range [0, {c})")
    else:
        _same_kind(targets, "targets", kind)
        _shape(targets, "targets", (n, c))
    if grad is not None:
        _same_kind(grad, "grad", kind, 1)
        _shape(grad, "grad", (n, c))
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


def sgd_step(param, grad, velocity, double lr, double momentum, bint nesterov, double weight_decay):
    """In-place SGD update of param (and velocity, which may be None when momentum == 0)."""
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
    with nogil:
        if kind == 0:
            rp_sgd_step_f32(n, <float *>pp, <float *>pg, <float *>pv, <float>lr, <float>momentum,
                            nesterov, <float>weight_decay)
        else:
            rp_sgd_step_f64(n, <double *>pp, <double *>pg, <double *>pv, lr, momentum,
                            nesterov, weight_decay)
