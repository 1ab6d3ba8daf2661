/* The device API: memory, copies and the operations of the CUDA backend.
 *
 * Two implementations share this header and one Cython binding
 * (src/retroprop/_device.pyx):
 *   csrc/cuda/runtime.cu   the GPU: the CUDA runtime, cuBLAS/cuBLASLt, and
 *                          the kernels of csrc/cuda/kernels.cuh;
 *   csrc/cuda/emulate.c    the host: "device" memory is host memory, every
 *                          kernel body runs over the same grid, block by
 *                          block and thread by thread, and the GEMM is the
 *                          CPU backend's (rp_gemm).
 * The operations themselves (which kernels, in which order, on which
 * workspace) are written once, in csrc/cuda/ops.inc, and compiled into both:
 * the CPU test suite runs them through the emulator.
 *
 * Every pointer argument is a device pointer (from rp_dev_malloc) unless
 * named host_*; arrays are C-contiguous, row-major; dtype is RP_DEV_F32 or
 * RP_DEV_F64. Every operation is queued on the one compute stream and
 * returns 0, or nonzero with a message from rp_dev_error(). */
#ifndef RETROPROP_CUDA_API_H
#define RETROPROP_CUDA_API_H

#include <stdint.h>
#include "retroprop/conv.h"
#include "retroprop/optim.h"
#include "retroprop/pool.h"

#ifdef __cplusplus
extern "C" {
#endif

enum { RP_DEV_F32 = 0, RP_DEV_F64 = 1 };

/* Failures: RP_DEV_UNAVAILABLE means no usable GPU (the message says why:
 * no driver, no device, a driver older than the runtime); RP_DEV_UNSUPPORTED
 * that a fused path (a cuBLASLt epilogue) is not available and the caller
 * should take the plain one. */
enum { RP_DEV_OK = 0, RP_DEV_FAILED = 1, RP_DEV_UNAVAILABLE = 2, RP_DEV_UNSUPPORTED = 3 };

/* The message of the last failure in this process. */
const char *rp_dev_error(void);

/* ---- runtime ---------------------------------------------------------- */

typedef struct {
    char name[256];
    int major, minor;            /* compute capability */
    int multiprocessors;
    int64_t total_memory;        /* bytes */
    int runtime_version;         /* e.g. 13000 */
    int driver_version;
    int blas_version;            /* cuBLAS, e.g. 130002; 0 when emulated */
    int emulated;                /* 1 for csrc/cuda/emulate.c */
} rp_dev_properties;

/* Opens device 0: checks driver and device, creates the streams and the
 * cuBLAS handles. Safe to call again (then it does nothing). */
int rp_dev_init(void);
int rp_dev_properties_get(rp_dev_properties *out);

/* Largest grid of the elementwise launches (tests lower it; see common.h). */
void rp_dev_set_max_blocks(int64_t max_blocks);

int rp_dev_malloc(int64_t bytes, void **ptr);        /* stream-ordered */
int rp_dev_free(void *ptr);
int rp_dev_host_malloc(int64_t bytes, void **host_ptr);   /* pinned host memory */
int rp_dev_host_free(void *host_ptr);
int rp_dev_upload(void *dst, const void *host_src, int64_t bytes);
int rp_dev_download(void *host_dst, const void *src, int64_t bytes);   /* waits for the stream */
int rp_dev_copy(void *dst, const void *src, int64_t bytes);
int rp_dev_memset(void *dst, int value, int64_t bytes);
int rp_dev_synchronize(void);

/* Overlapped uploads: bytes from pinned host memory are copied on a second
 * stream; the compute stream waits for `ready` (an event) before its next
 * operation. rp_dev_event_record marks the compute stream's current end;
 * rp_dev_event_wait blocks the host until the stream gets there. */
int rp_dev_event_create(void **event);
int rp_dev_event_destroy(void *event);
int rp_dev_event_record(void *event);
int rp_dev_event_wait(void *event);
int rp_dev_upload_async(void *dst, const void *host_pinned_src, int64_t bytes, void *ready);

/* ---- GEMM ---------------------------------------------------------------- */

/* c (m, n) = alpha op(a) op(b) + beta c, row-major; op(a) is (m, k). */
int rp_dev_gemm(int dtype, int trans_a, int trans_b, int64_t m, int64_t n, int64_t k,
                double alpha, const void *a, const void *b, double beta, void *c);

/* y (n, m) = act(x (n, k) @ w (k, m) + b): a cuBLASLt epilogue where it
 * applies (linear/relu/gelu with a bias), else the GEMM and one fused
 * bias + activation kernel. *fused (may be NULL) is set to 1 when the
 * epilogue did it. b may be NULL. */
int rp_dev_dense_forward(int dtype, int64_t n, int64_t k, int64_t m, const void *x,
                         const void *w, const void *b, int act, double param, void *y,
                         int *fused);

/* dz = dy * act'(y) into dz_workspace (n, m); db = column sums of dz
 * (deterministic; skipped when NULL); dw = x^T dz; dx = dz w^T (skipped
 * when NULL). */
int rp_dev_dense_backward(int dtype, int64_t n, int64_t k, int64_t m, const void *x,
                          const void *w, const void *y, const void *dy, int act, double param,
                          void *dz_workspace, void *dw, void *db, void *dx);

/* The relu chain fused into cuBLASLt epilogues, for a planner that knows a
 * relu Dense layer feeds the next one (both RP_DEV_UNSUPPORTED where the
 * epilogue is not available, or emulated: the caller then runs
 * rp_dev_dense_forward, and the GEMM + activation backward + column sums):
 *   forward:  y (n, m) = relu(x @ w + b) and mask, relu's bits, for ...
 *   backward: dz_prev (n, k) = (dz (n, m) @ w^T) * relu'(mask of the layer
 *             that produced this layer's input, (n, k)) and db_prev (k) its
 *             column sums: one DRELU_BGRAD GEMM instead of three kernels.
 * mask is rp_dev_relu_mask_bytes(n, width) bytes (width: the relu layer's
 * output width). */
int64_t rp_dev_relu_mask_bytes(int64_t n, int64_t width);
int rp_dev_dense_forward_relu_mask(int dtype, int64_t n, int64_t k, int64_t m, const void *x,
                                   const void *w, const void *b, void *y, void *mask);
int rp_dev_dense_dx_drelu_bgrad(int dtype, int64_t n, int64_t k, int64_t m, const void *dz,
                                const void *w, const void *mask, void *dz_prev, void *db_prev);

/* ---- elementwise, rows, losses ---------------------------------------------- */

int rp_dev_act_forward(int dtype, int act, double param, int64_t n, const void *x, void *y);
/* x (input-derivative activations) or y (the others) may be NULL when unused. */
int rp_dev_act_backward(int dtype, int act, double param, int64_t n, const void *x,
                        const void *y, const void *dy, void *dx);
int rp_dev_mul(int dtype, int64_t n, const void *a, const void *b, void *out);
/* out = alpha x + beta y (out may alias x or y). */
int rp_dev_axpby(int dtype, int64_t n, double alpha, const void *x, double beta, const void *y,
                 void *out);
/* grad += l1 sign(w) + 2 l2 w. */
int rp_dev_penalty_grad(int dtype, int64_t n, double l1, double l2, const void *w, void *grad);
int rp_dev_softmax(int dtype, int64_t rows, int64_t cols, const void *x, void *y);

/* A loss of kind RP_LOSS_* (csrc/cuda/bodies/loss.inc) over (rows, cols)
 * predictions: targets are class ids (labels, int64, rows) or a float array
 * like pred (targets); grad (may be NULL) = dL/dpred divided by grad_scale;
 * *loss (a device double) = the sum of the row losses / divisor, added in a
 * fixed order. */
int rp_dev_loss(int dtype, int kind, int64_t rows, int64_t cols, const void *pred,
                const int64_t *labels, const void *targets, void *grad, double grad_scale,
                double divisor, double eps, double margin, double *loss);

/* out (cols) = column sums of x (rows, cols), deterministic. */
int rp_dev_col_sums(int dtype, int64_t rows, int64_t cols, const void *x, void *out);

/* ---- batch normalisation (x is (rows, c), channels last) -------------------- */

int rp_dev_bn_stats(int dtype, int64_t rows, int64_t c, const void *x, void *mean, void *var);
int rp_dev_bn_apply(int dtype, int64_t rows, int64_t c, const void *x, const void *mean,
                    const void *var, const void *gamma, const void *beta, double eps, void *y);
int rp_dev_bn_backward(int dtype, int64_t rows, int64_t c, const void *x, const void *dy,
                       const void *mean, const void *var, const void *gamma, double eps,
                       int training, void *dgamma, void *dbeta, void *dx);

/* ---- convolution and pooling (NHWC) ------------------------------------------ */

/* y = act(conv(x, w) + b) by im2col into col_workspace (chunk images at a
 * time: chunk * oh * ow * kh * kw * c elements; unused for a pointwise
 * convolution, which multiplies x itself) and one GEMM per chunk. */
int rp_dev_conv2d_forward(int dtype, const rp_conv2d_geom *g, int64_t chunk, const void *x,
                          const void *w, const void *b, int act, double param,
                          void *col_workspace, void *y);
/* dz = dy * act'(y) (dz_workspace, n*oh*ow*filters); db = column sums of dz;
 * dw = sum over chunks of col^T dz; dx = col2im(dz w^T) as a gather (the
 * column gradient goes through col_workspace). db and dx may be NULL. */
int rp_dev_conv2d_backward(int dtype, const rp_conv2d_geom *g, int64_t chunk, const void *x,
                           const void *w, const void *y, const void *dy, int act, double param,
                           void *col_workspace, void *dz_workspace, void *dw, void *db,
                           void *dx);
int rp_dev_im2col(int dtype, const rp_conv2d_geom *g, int64_t first, int64_t count,
                  const void *x, void *col);
int rp_dev_col2im(int dtype, const rp_conv2d_geom *g, int64_t first, int64_t count,
                  const void *dcol, void *dx);

int rp_dev_maxpool_forward(int dtype, const rp_pool2d_geom *g, const void *x, void *y,
                           int32_t *argmax);
int rp_dev_maxpool_backward(int dtype, const rp_pool2d_geom *g, const int32_t *argmax,
                            const void *dy, void *dx);
int rp_dev_avgpool_forward(int dtype, const rp_pool2d_geom *g, const void *x, void *y);
int rp_dev_avgpool_backward(int dtype, const rp_pool2d_geom *g, const void *dy, void *dx);

/* ---- optimizer, checks, batches, dropout ------------------------------------- */

/* One step of cfg->rule over `count` parameters described by segments (a
 * device array of rp_dev_segment, offsets increasing, `total` elements in
 * all), in one launch for mode RP_OPT_APPLY; RP_OPT_CHECK and
 * RP_OPT_CHECK_APPLY check first (flags per segment), and the apply launch
 * writes only when no new value is NaN/Inf. *result (a device int64) = the
 * first failing parameter or -1. */
int rp_dev_optimizer_step(int dtype, const rp_opt_config *cfg, int mode, const void *segments,
                          int64_t count, int64_t total, int64_t *result);

/* *result (device int64) = flat index of the first NaN/Inf of x, or -1. */
int rp_dev_find_nonfinite(int dtype, int64_t n, const void *x, int64_t *result);

/* out row r = src row index[r] (rows of row_bytes; index int64 on the device,
 * already checked to be in range). */
int rp_dev_gather_rows(int64_t row_bytes, int64_t rows, const int64_t *index, const void *src,
                       void *out);

/* mask = 0 or 1 / (1 - rate) from (seed, counter, i); y = x * mask. */
int rp_dev_dropout(int dtype, int64_t n, uint64_t seed, uint64_t counter, double rate,
                   const void *x, void *mask, void *y);

#ifdef __cplusplus
}
#endif
#endif
