# cython: language_level=3, boundscheck=False, wraparound=False
"""Thin bindings of the device API (csrc/cuda/api.h).

This one source is compiled twice: into ``retroprop._cuda``, linked with the
GPU implementation (csrc/cuda/runtime.cu, built only with RETROPROP_CUDA),
and into ``retroprop._cuda_emu``, linked with the host emulator
(csrc/cuda/emulate.c, always built), so both expose exactly the same
functions. Pointers are Python ints (0 for NULL); backend/device.py checks
shapes and dtypes and owns the memory. Each call releases the GIL and
raises DeviceError when the C side reports a failure.
"""
from libc.stdint cimport int32_t, int64_t, uint64_t, uintptr_t


cdef extern from "retroprop/conv.h":
    ctypedef struct rp_conv2d_geom:
        int n, h, w, c
        int kh, kw, filters
        int stride_h, stride_w
        int dilation_h, dilation_w
        int pad_top, pad_left
        int oh, ow

cdef extern from "retroprop/pool.h":
    ctypedef struct rp_pool2d_geom:
        int n, h, w, c
        int ph, pw
        int stride_h, stride_w
        int pad_top, pad_left
        int oh, ow

cdef extern from "retroprop/optim.h":
    ctypedef enum rp_optimizer:
        RP_OPT_SGD, RP_OPT_ADAM, RP_OPT_RMSPROP, RP_OPT_ADAGRAD
    ctypedef struct rp_opt_config:
        rp_optimizer rule
        double lr, weight_decay, momentum
        int nesterov
        double beta1, beta2, c1, c2
        int decoupled
        double rho, eps

cdef extern from "api.h" nogil:
    ctypedef struct rp_dev_properties:
        char name[256]
        int major, minor, multiprocessors
        int64_t total_memory
        int runtime_version, driver_version, blas_version, emulated
    const char *rp_dev_error()
    int rp_dev_init()
    int rp_dev_properties_get(rp_dev_properties *out)
    void rp_dev_set_max_blocks(int64_t max_blocks)
    int rp_dev_malloc(int64_t bytes, void **ptr)
    int rp_dev_free(void *ptr)
    int rp_dev_host_malloc(int64_t bytes, void **ptr)
    int rp_dev_host_free(void *ptr)
    int rp_dev_upload(void *dst, const void *src, int64_t bytes)
    int rp_dev_download(void *dst, const void *src, int64_t bytes)
    int rp_dev_copy(void *dst, const void *src, int64_t bytes)
    int rp_dev_memset(void *dst, int value, int64_t bytes)
    int rp_dev_synchronize()
    int rp_dev_event_create(void **event)
    int rp_dev_event_destroy(void *event)
    int rp_dev_event_record(void *event)
    int rp_dev_event_wait(void *event)
    int rp_dev_upload_async(void *dst, const void *src, int64_t bytes, void *ready)
    int rp_dev_gemm(int dtype, int ta, int tb, int64_t m, int64_t n, int64_t k, double alpha,
                    const void *a, const void *b, double beta, void *c)
    int rp_dev_dense_forward(int dtype, int64_t n, int64_t k, int64_t m, const void *x,
                             const void *w, const void *b, int act, double param, void *y,
                             int *fused)
    int rp_dev_dense_backward(int dtype, int64_t n, int64_t k, int64_t m, const void *x,
                              const void *w, const void *y, const void *dy, int act,
                              double param, void *dz, void *dw, void *db, void *dx)
    int64_t rp_dev_relu_mask_bytes(int64_t n, int64_t width)
    int rp_dev_dense_forward_relu_mask(int dtype, int64_t n, int64_t k, int64_t m, const void *x,
                                       const void *w, const void *b, void *y, void *mask)
    int rp_dev_dense_dx_drelu_bgrad(int dtype, int64_t n, int64_t k, int64_t m, const void *dz,
                                    const void *w, const void *mask, void *dz_prev,
                                    void *db_prev)
    int rp_dev_act_forward(int dtype, int act, double param, int64_t n, const void *x, void *y)
    int rp_dev_act_backward(int dtype, int act, double param, int64_t n, const void *x,
                            const void *y, const void *dy, void *dx)
    int rp_dev_mul(int dtype, int64_t n, const void *a, const void *b, void *out)
    int rp_dev_axpby(int dtype, int64_t n, double alpha, const void *x, double beta,
                     const void *y, void *out)
    int rp_dev_penalty_grad(int dtype, int64_t n, double l1, double l2, const void *w,
                            void *grad)
    int rp_dev_softmax(int dtype, int64_t rows, int64_t cols, const void *x, void *y)
    int rp_dev_loss(int dtype, int kind, int64_t rows, int64_t cols, const void *pred,
                    const int64_t *labels, const void *targets, void *grad, double grad_scale,
                    double divisor, double eps, double margin, double *loss)
    int rp_dev_col_sums(int dtype, int64_t rows, int64_t cols, const void *x, void *out)
    int rp_dev_bn_stats(int dtype, int64_t rows, int64_t c, const void *x, void *mean, void *var)
    int rp_dev_bn_apply(int dtype, int64_t rows, int64_t c, const void *x, const void *mean,
                        const void *var, const void *gamma, const void *beta, double eps,
                        void *y)
    int rp_dev_bn_backward(int dtype, int64_t rows, int64_t c, const void *x, const void *dy,
                           const void *mean, const void *var, const void *gamma, double eps,
                           int training, void *dgamma, void *dbeta, void *dx)
    int rp_dev_conv2d_forward(int dtype, const rp_conv2d_geom *g, int64_t chunk, const void *x,
                              const void *w, const void *b, int act, double param, void *col,
                              void *y)
    int rp_dev_conv2d_backward(int dtype, const rp_conv2d_geom *g, int64_t chunk,
                               const void *x, const void *w, const void *y, const void *dy,
                               int act, double param, void *col, void *dz, void *dw,
                               void *db, void *dx)
    int rp_dev_im2col(int dtype, const rp_conv2d_geom *g, int64_t first, int64_t count,
                      const void *x, void *col)
    int rp_dev_col2im(int dtype, const rp_conv2d_geom *g, int64_t first, int64_t count,
                      const void *dcol, void *dx)
    int rp_dev_maxpool_forward(int dtype, const rp_pool2d_geom *g, const void *x, void *y,
                               int32_t *argmax)
    int rp_dev_maxpool_backward(int dtype, const rp_pool2d_geom *g, const int32_t *argmax,
                                const void *dy, void *dx)
    int rp_dev_avgpool_forward(int dtype, const rp_pool2d_geom *g, const void *x, void *y)
    int rp_dev_avgpool_backward(int dtype, const rp_pool2d_geom *g, const void *dy, void *dx)
    int rp_dev_optimizer_step(int dtype, const rp_opt_config *cfg, int mode,
                              const void *segments, int64_t count, int64_t total,
                              int64_t *result)
    int rp_dev_find_nonfinite(int dtype, int64_t n, const void *x, int64_t *result)
    int rp_dev_gather_rows(int64_t row_bytes, int64_t rows, const int64_t *index,
                           const void *src, void *out)
    int rp_dev_dropout(int dtype, int64_t n, uint64_t seed, uint64_t counter, double rate,
                       const void *x, void *mask, void *y)


class DeviceError(RuntimeError):
    """A failure reported by the device API (the message says what and why)."""


# rp_dev_* status codes (api.h)
UNAVAILABLE = 2
UNSUPPORTED = 3


cdef int check(int rc) except -1:
    if rc != 0:
        raise DeviceError(rp_dev_error().decode("utf-8", "replace"))
    return 0


cdef inline void *P(uintptr_t p) noexcept nogil:
    return <void *>p


# ---------------------------------------------------------------- runtime

def init():
    """(status, message): 0 and "" when the device is usable, else the reason."""
    cdef int rc
    with nogil:
        rc = rp_dev_init()
    return rc, ("" if rc == 0 else rp_dev_error().decode("utf-8", "replace"))


def error():
    """The message of the last failure or fallback reported by the C side."""
    return rp_dev_error().decode("utf-8", "replace")


def properties():
    cdef rp_dev_properties p
    check(rp_dev_properties_get(&p))
    return {"name": p.name.decode("utf-8", "replace"),
            "compute_capability": (p.major, p.minor),
            "multiprocessors": p.multiprocessors, "total_memory": p.total_memory,
            "runtime_version": p.runtime_version, "driver_version": p.driver_version,
            "cublas_version": p.blas_version, "emulated": bool(p.emulated)}


def set_max_blocks(int64_t max_blocks):
    rp_dev_set_max_blocks(max_blocks)


def malloc(int64_t nbytes):
    cdef void *ptr = NULL
    cdef int rc
    with nogil:
        rc = rp_dev_malloc(nbytes, &ptr)
    check(rc)
    return <uintptr_t>ptr


def free(uintptr_t ptr):
    check(rp_dev_free(P(ptr)))


def host_malloc(int64_t nbytes):
    cdef void *ptr = NULL
    check(rp_dev_host_malloc(nbytes, &ptr))
    return <uintptr_t>ptr


def host_free(uintptr_t ptr):
    check(rp_dev_host_free(P(ptr)))


def upload(uintptr_t dst, uintptr_t host_src, int64_t nbytes):
    cdef int rc
    with nogil:
        rc = rp_dev_upload(P(dst), P(host_src), nbytes)
    check(rc)


def download(uintptr_t host_dst, uintptr_t src, int64_t nbytes):
    cdef int rc
    with nogil:
        rc = rp_dev_download(P(host_dst), P(src), nbytes)
    check(rc)


def copy(uintptr_t dst, uintptr_t src, int64_t nbytes):
    check(rp_dev_copy(P(dst), P(src), nbytes))


def memset(uintptr_t dst, int value, int64_t nbytes):
    check(rp_dev_memset(P(dst), value, nbytes))


def synchronize():
    cdef int rc
    with nogil:
        rc = rp_dev_synchronize()
    check(rc)


def event_create():
    cdef void *event = NULL
    check(rp_dev_event_create(&event))
    return <uintptr_t>event


def event_destroy(uintptr_t event):
    check(rp_dev_event_destroy(P(event)))


def event_record(uintptr_t event):
    check(rp_dev_event_record(P(event)))


def event_wait(uintptr_t event):
    cdef int rc
    with nogil:
        rc = rp_dev_event_wait(P(event))
    check(rc)


def upload_async(uintptr_t dst, uintptr_t host_pinned_src, int64_t nbytes, uintptr_t ready):
    check(rp_dev_upload_async(P(dst), P(host_pinned_src), nbytes, P(ready)))


# ---------------------------------------------------------------- operations

def gemm(int dtype, bint ta, bint tb, int64_t m, int64_t n, int64_t k, double alpha,
         uintptr_t a, uintptr_t b, double beta, uintptr_t c):
    cdef int rc
    with nogil:
        rc = rp_dev_gemm(dtype, ta, tb, m, n, k, alpha, P(a), P(b), beta, P(c))
    check(rc)


def dense_forward(int dtype, int64_t n, int64_t k, int64_t m, uintptr_t x, uintptr_t w,
                  uintptr_t b, int act, double param, uintptr_t y):
    """Returns True when a cuBLASLt epilogue applied bias + activation."""
    cdef int rc, fused = 0
    with nogil:
        rc = rp_dev_dense_forward(dtype, n, k, m, P(x), P(w), P(b), act, param, P(y), &fused)
    check(rc)
    return bool(fused)


def dense_backward(int dtype, int64_t n, int64_t k, int64_t m, uintptr_t x, uintptr_t w,
                   uintptr_t y, uintptr_t dy, int act, double param, uintptr_t dz,
                   uintptr_t dw, uintptr_t db, uintptr_t dx):
    cdef int rc
    with nogil:
        rc = rp_dev_dense_backward(dtype, n, k, m, P(x), P(w), P(y), P(dy), act, param, P(dz),
                                   P(dw), P(db), P(dx))
    check(rc)


def relu_mask_bytes(int64_t n, int64_t width):
    return rp_dev_relu_mask_bytes(n, width)


def dense_forward_relu_mask(int dtype, int64_t n, int64_t k, int64_t m, uintptr_t x, uintptr_t w,
                            uintptr_t b, uintptr_t y, uintptr_t mask):
    """True when cuBLASLt's RELU_AUX_BIAS epilogue wrote y and the mask;
    False when it is not available (nothing written)."""
    cdef int rc
    with nogil:
        rc = rp_dev_dense_forward_relu_mask(dtype, n, k, m, P(x), P(w), P(b), P(y), P(mask))
    if rc == UNSUPPORTED:
        return False
    check(rc)
    return True


def dense_dx_drelu_bgrad(int dtype, int64_t n, int64_t k, int64_t m, uintptr_t dz, uintptr_t w,
                         uintptr_t mask, uintptr_t dz_prev, uintptr_t db_prev):
    """True when cuBLASLt's DRELU_BGRAD epilogue did it; False when not available."""
    cdef int rc
    with nogil:
        rc = rp_dev_dense_dx_drelu_bgrad(dtype, n, k, m, P(dz), P(w), P(mask), P(dz_prev),
                                         P(db_prev))
    if rc == UNSUPPORTED:
        return False
    check(rc)
    return True


def act_forward(int dtype, int act, double param, int64_t n, uintptr_t x, uintptr_t y):
    check(rp_dev_act_forward(dtype, act, param, n, P(x), P(y)))


def act_backward(int dtype, int act, double param, int64_t n, uintptr_t x, uintptr_t y,
                 uintptr_t dy, uintptr_t dx):
    check(rp_dev_act_backward(dtype, act, param, n, P(x), P(y), P(dy), P(dx)))


def mul(int dtype, int64_t n, uintptr_t a, uintptr_t b, uintptr_t out):
    check(rp_dev_mul(dtype, n, P(a), P(b), P(out)))


def axpby(int dtype, int64_t n, double alpha, uintptr_t x, double beta, uintptr_t y,
          uintptr_t out):
    check(rp_dev_axpby(dtype, n, alpha, P(x), beta, P(y), P(out)))


def penalty_grad(int dtype, int64_t n, double l1, double l2, uintptr_t w, uintptr_t grad):
    check(rp_dev_penalty_grad(dtype, n, l1, l2, P(w), P(grad)))


def softmax(int dtype, int64_t rows, int64_t cols, uintptr_t x, uintptr_t y):
    check(rp_dev_softmax(dtype, rows, cols, P(x), P(y)))


def loss(int dtype, int kind, int64_t rows, int64_t cols, uintptr_t pred, uintptr_t labels,
         uintptr_t targets, uintptr_t grad, double grad_scale, double divisor, double eps,
         double margin, uintptr_t result):
    cdef int rc
    with nogil:
        rc = rp_dev_loss(dtype, kind, rows, cols, P(pred), <const int64_t *>P(labels),
                         P(targets), P(grad), grad_scale, divisor, eps, margin,
                         <double *>P(result))
    check(rc)


def col_sums(int dtype, int64_t rows, int64_t cols, uintptr_t x, uintptr_t out):
    check(rp_dev_col_sums(dtype, rows, cols, P(x), P(out)))


def bn_stats(int dtype, int64_t rows, int64_t c, uintptr_t x, uintptr_t mean, uintptr_t var):
    cdef int rc
    with nogil:
        rc = rp_dev_bn_stats(dtype, rows, c, P(x), P(mean), P(var))
    check(rc)


def bn_apply(int dtype, int64_t rows, int64_t c, uintptr_t x, uintptr_t mean, uintptr_t var,
             uintptr_t gamma, uintptr_t beta, double eps, uintptr_t y):
    cdef int rc
    with nogil:
        rc = rp_dev_bn_apply(dtype, rows, c, P(x), P(mean), P(var), P(gamma), P(beta), eps, P(y))
    check(rc)


def bn_backward(int dtype, int64_t rows, int64_t c, uintptr_t x, uintptr_t dy, uintptr_t mean,
                uintptr_t var, uintptr_t gamma, double eps, bint training, uintptr_t dgamma,
                uintptr_t dbeta, uintptr_t dx):
    cdef int rc
    with nogil:
        rc = rp_dev_bn_backward(dtype, rows, c, P(x), P(dy), P(mean), P(var), P(gamma), eps,
                                training, P(dgamma), P(dbeta), P(dx))
    check(rc)


cdef rp_conv2d_geom conv_geom(tuple g) except *:
    cdef rp_conv2d_geom out
    (out.n, out.h, out.w, out.c, out.kh, out.kw, out.filters, out.stride_h, out.stride_w,
     out.dilation_h, out.dilation_w, out.pad_top, out.pad_left, out.oh, out.ow) = g
    return out


cdef rp_pool2d_geom pool_geom(tuple g) except *:
    cdef rp_pool2d_geom out
    (out.n, out.h, out.w, out.c, out.ph, out.pw, out.stride_h, out.stride_w, out.pad_top,
     out.pad_left, out.oh, out.ow) = g
    return out


def conv2d_forward(int dtype, tuple geom, int64_t chunk, uintptr_t x, uintptr_t w, uintptr_t b,
                   int act, double param, uintptr_t col, uintptr_t y):
    """geom: (n, h, w, c, kh, kw, filters, stride_h, stride_w, dilation_h, dilation_w,
    pad_top, pad_left, oh, ow)."""
    cdef rp_conv2d_geom g = conv_geom(geom)
    cdef int rc
    with nogil:
        rc = rp_dev_conv2d_forward(dtype, &g, chunk, P(x), P(w), P(b), act, param, P(col), P(y))
    check(rc)


def conv2d_backward(int dtype, tuple geom, int64_t chunk, uintptr_t x, uintptr_t w,
                    uintptr_t y, uintptr_t dy, int act, double param, uintptr_t col,
                    uintptr_t dz, uintptr_t dw, uintptr_t db, uintptr_t dx):
    cdef rp_conv2d_geom g = conv_geom(geom)
    cdef int rc
    with nogil:
        rc = rp_dev_conv2d_backward(dtype, &g, chunk, P(x), P(w), P(y), P(dy), act, param,
                                    P(col), P(dz), P(dw), P(db), P(dx))
    check(rc)


def im2col(int dtype, tuple geom, int64_t first, int64_t count, uintptr_t x, uintptr_t col):
    cdef rp_conv2d_geom g = conv_geom(geom)
    check(rp_dev_im2col(dtype, &g, first, count, P(x), P(col)))


def col2im(int dtype, tuple geom, int64_t first, int64_t count, uintptr_t dcol, uintptr_t dx):
    cdef rp_conv2d_geom g = conv_geom(geom)
    check(rp_dev_col2im(dtype, &g, first, count, P(dcol), P(dx)))


def maxpool_forward(int dtype, tuple geom, uintptr_t x, uintptr_t y, uintptr_t argmax):
    """geom: (n, h, w, c, ph, pw, stride_h, stride_w, pad_top, pad_left, oh, ow)."""
    cdef rp_pool2d_geom g = pool_geom(geom)
    check(rp_dev_maxpool_forward(dtype, &g, P(x), P(y), <int32_t *>P(argmax)))


def maxpool_backward(int dtype, tuple geom, uintptr_t argmax, uintptr_t dy, uintptr_t dx):
    cdef rp_pool2d_geom g = pool_geom(geom)
    check(rp_dev_maxpool_backward(dtype, &g, <const int32_t *>P(argmax), P(dy), P(dx)))


def avgpool_forward(int dtype, tuple geom, uintptr_t x, uintptr_t y):
    cdef rp_pool2d_geom g = pool_geom(geom)
    check(rp_dev_avgpool_forward(dtype, &g, P(x), P(y)))


def avgpool_backward(int dtype, tuple geom, uintptr_t dy, uintptr_t dx):
    cdef rp_pool2d_geom g = pool_geom(geom)
    check(rp_dev_avgpool_backward(dtype, &g, P(dy), P(dx)))


_RULES = {"sgd": RP_OPT_SGD, "adam": RP_OPT_ADAM, "rmsprop": RP_OPT_RMSPROP,
          "adagrad": RP_OPT_ADAGRAD}

# the byte size of one rp_dev_segment (bodies/untyped.inc): 4 pointers, 2 int64
SEGMENT_BYTES = 4 * sizeof(void *) + 2 * sizeof(int64_t)


def optimizer_step(int dtype, str rule, int mode, uintptr_t segments, int64_t count,
                   int64_t total, uintptr_t result, double lr, double weight_decay,
                   double momentum, bint nesterov, double beta1, double beta2, double c1,
                   double c2, bint decoupled, double rho, double eps):
    cdef rp_opt_config cfg
    cfg.rule = _RULES[rule]
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
    cdef int rc
    with nogil:
        rc = rp_dev_optimizer_step(dtype, &cfg, mode, P(segments), count, total,
                                   <int64_t *>P(result))
    check(rc)


def find_nonfinite(int dtype, int64_t n, uintptr_t x, uintptr_t result):
    check(rp_dev_find_nonfinite(dtype, n, P(x), <int64_t *>P(result)))


def gather_rows(int64_t row_bytes, int64_t rows, uintptr_t index, uintptr_t src, uintptr_t out):
    check(rp_dev_gather_rows(row_bytes, rows, <const int64_t *>P(index), P(src), P(out)))


def dropout(int dtype, int64_t n, uint64_t seed, uint64_t counter, double rate, uintptr_t x,
            uintptr_t mask, uintptr_t y):
    check(rp_dev_dropout(dtype, n, seed, counter, rate, P(x), P(mask), P(y)))
