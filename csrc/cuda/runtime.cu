/* The GPU implementation of the device API (csrc/cuda/api.h): the CUDA
 * runtime for memory, streams and events, cuBLAS / cuBLASLt for the GEMMs,
 * and one thin __global__ wrapper (rp_grid_kernel) that runs a kernel body
 * of csrc/cuda/bodies over a grid-stride loop. The operations themselves
 * are ops.inc, shared with the host emulator (emulate.c).
 *
 * One device (0), one compute stream, one copy stream; the library is used
 * from one host thread at a time (the backend serialises its calls). */
#include <cuda_runtime.h>
#include <cublasLt.h>
#include <cublas_v2.h>

#include <stdio.h>
#include <string.h>

#include "api.h"
#include "bodies/bodies.h"

static int64_t rp_max_blocks = RP_DEFAULT_MAX_BLOCKS;
static char last_error[512];
static int initialised;
static cudaStream_t rp_stream;
static cudaStream_t rp_copy_stream;
static cublasHandle_t rp_blas;
static cublasLtHandle_t rp_lt;
static void *rp_lt_workspace;
static const size_t rp_lt_workspace_bytes = (size_t)32 << 20;

static int fail(int code, const char *what, const char *why)
{
    snprintf(last_error, sizeof last_error, "%s: %s", what, why);
    return code;
}

static int fail_cuda(const char *what, cudaError_t err)
{
    return fail(RP_DEV_FAILED, what, cudaGetErrorString(err));
}

#define CUDA_TRY(what, call)                                  \
    do {                                                      \
        const cudaError_t err_ = (call);                      \
        if (err_ != cudaSuccess) return fail_cuda(what, err_); \
    } while (0)

static int fail_blas(const char *what, cublasStatus_t status)
{
    char why[64];
    snprintf(why, sizeof why, "cuBLAS status %d", (int)status);
    return fail(RP_DEV_FAILED, what, why);
}

extern "C" const char *rp_dev_error(void) { return last_error; }

/* The one kernel: body BODY at every grid-stride index of this thread. */
template <auto BODY, typename... Args>
__global__ void rp_grid_kernel(int64_t n, Args... args)
{
    RP_GRID_STRIDE(i, n, blockIdx.x, blockDim.x, gridDim.x, threadIdx.x) BODY(i, args...);
}

#define RP_LAUNCH(BODY, N, ...)                                                          \
    do {                                                                                 \
        const int64_t n_ = (N);                                                          \
        if (n_ > 0) {                                                                    \
            const rp_launch l_ = rp_launch_for(n_, rp_max_blocks);                       \
            rp_grid_kernel<BODY><<<(unsigned)l_.blocks, l_.threads, 0, rp_stream>>>(n_, __VA_ARGS__); \
            const cudaError_t err_ = cudaGetLastError();                                 \
            if (err_ != cudaSuccess) return fail_cuda("launch of " #BODY, err_);         \
        }                                                                                \
    } while (0)

/* ---- the implementation hooks of ops.inc -------------------------------- */

static void *scratch;
static int64_t scratch_bytes;

/* Scratch memory for the reductions' partials: grown when needed, freed in
 * stream order, so kernels still using the old buffer finish first. */
static int rp_impl_scratch(int64_t bytes, void **ptr)
{
    if (bytes > scratch_bytes) {
        if (scratch) CUDA_TRY("scratch free", cudaFreeAsync(scratch, rp_stream));
        scratch = NULL;
        scratch_bytes = 0;
        const int64_t grown = bytes < ((int64_t)1 << 20) ? ((int64_t)1 << 20) : bytes;
        CUDA_TRY("scratch allocation", cudaMallocAsync(&scratch, (size_t)grown, rp_stream));
        scratch_bytes = grown;
    }
    *ptr = scratch;
    return RP_DEV_OK;
}

static int rp_impl_memset(void *dst, int value, int64_t bytes)
{
    if (bytes > 0) CUDA_TRY("memset", cudaMemsetAsync(dst, value, (size_t)bytes, rp_stream));
    return RP_DEV_OK;
}

/* Row-major c = alpha op(a) op(b) + beta c as cuBLAS's column-major
 * c^T = op(b)^T op(a)^T: the operands swap places, the transposes stay. */
static int rp_impl_gemm(int dtype, int trans_a, int trans_b, int64_t m, int64_t n, int64_t k,
                        double alpha, const void *a, int64_t lda, const void *b, int64_t ldb,
                        double beta, void *c, int64_t ldc)
{
    if (m == 0 || n == 0) return RP_DEV_OK;
    const cublasOperation_t op_b = trans_b ? CUBLAS_OP_T : CUBLAS_OP_N;
    const cublasOperation_t op_a = trans_a ? CUBLAS_OP_T : CUBLAS_OP_N;
    cublasStatus_t st;
    if (k == 0) {   /* cuBLAS scales c by beta for k = 0, as the definition says */
        if (beta == 0.0) return rp_impl_memset(c, 0, m * ldc * (dtype == RP_DEV_F64 ? 8 : 4));
    }
    if (dtype == RP_DEV_F64) {
        st = cublasDgemm_64(rp_blas, op_b, op_a, n, m, k, &alpha, (const double *)b, ldb,
                            (const double *)a, lda, &beta, (double *)c, ldc);
    } else {
        const float alpha_f = (float)alpha, beta_f = (float)beta;
        st = cublasSgemm_64(rp_blas, op_b, op_a, n, m, k, &alpha_f, (const float *)b, ldb,
                            (const float *)a, lda, &beta_f, (float *)c, ldc);
    }
    return st == CUBLAS_STATUS_SUCCESS ? RP_DEV_OK : fail_blas("gemm", st);
}

/* cuBLASLt plans for y = epilogue(x @ w + b), cached per shape: creating the
 * descriptors and asking the heuristic costs more than a small GEMM. */
typedef struct {
    int used, dtype, epilogue, has_bias, trans_w;
    int64_t n, k, m;
    int supported;
    cublasLtMatmulDesc_t op;
    cublasLtMatrixLayout_t wl, xl, yl;
    cublasLtMatmulAlgo_t algo;
} lt_plan;

#define RP_LT_PLANS 64
static lt_plan lt_plans[RP_LT_PLANS];
static int lt_next;

static void lt_plan_release(lt_plan *p)
{
    if (!p->used) return;
    if (p->op) cublasLtMatmulDescDestroy(p->op);
    if (p->wl) cublasLtMatrixLayoutDestroy(p->wl);
    if (p->xl) cublasLtMatrixLayoutDestroy(p->xl);
    if (p->yl) cublasLtMatrixLayoutDestroy(p->yl);
    memset(p, 0, sizeof *p);
}

/* The epilogue for an activation with or without a bias, or -1: relu and
 * the tanh-approximated gelu are cuBLASLt's; the others take the fallback. */
static int lt_epilogue_for(int act, int has_bias)
{
    switch (act) {
    case RP_ACT_LINEAR: return has_bias ? (int)CUBLASLT_EPILOGUE_BIAS : -1;
    case RP_ACT_RELU: return has_bias ? (int)CUBLASLT_EPILOGUE_RELU_BIAS : (int)CUBLASLT_EPILOGUE_RELU;
    case RP_ACT_GELU: return has_bias ? (int)CUBLASLT_EPILOGUE_GELU_BIAS : (int)CUBLASLT_EPILOGUE_GELU;
    default: return -1;
    }
}

/* The aux leading dimension of the relu bit mask: a multiple of 128 rows. */
static int64_t relu_mask_ld(int64_t width) { return (width + 127) / 128 * 128; }

extern "C" int64_t rp_dev_relu_mask_bytes(int64_t n, int64_t width)
{
    return relu_mask_ld(width) * n / 8;
}

/* A plan for out^T (rows x n) = op(w_cm) @ x^T (k x n), column-major, with
 * w's row-major storage read as w_cm: (m x k) when trans_w == 0 (the
 * forward, rows = m), or transposed from (k x m) when trans_w (dx = dz w^T,
 * rows = k, x = dz of width m). For the relu epilogues the aux (bit mask)
 * has out^T's shape. */
static lt_plan *lt_plan_get_op(int dtype, int64_t n, int64_t k, int64_t m, int epilogue,
                               int has_bias, int trans_w)
{
    for (int i = 0; i < RP_LT_PLANS; ++i) {
        lt_plan *p = &lt_plans[i];
        if (p->used && p->dtype == dtype && p->n == n && p->k == k && p->m == m &&
            p->epilogue == epilogue && p->has_bias == has_bias && p->trans_w == trans_w)
            return p;
    }
    lt_plan *p = &lt_plans[lt_next];
    lt_next = (lt_next + 1) % RP_LT_PLANS;
    lt_plan_release(p);
    p->used = 1;
    p->dtype = dtype;
    p->n = n;
    p->k = k;
    p->m = m;
    p->epilogue = epilogue;
    p->has_bias = has_bias;
    p->trans_w = trans_w;
    p->supported = 0;
    const cudaDataType_t type = dtype == RP_DEV_F64 ? CUDA_R_64F : CUDA_R_32F;
    const cublasComputeType_t compute = dtype == RP_DEV_F64 ? CUBLAS_COMPUTE_64F : CUBLAS_COMPUTE_32F;
    /* column-major: y^T (m x n) = w^T (m x k, w's row-major storage) @ x^T (k x n);
     * the bias runs along y^T's rows, one per output feature, as the epilogue wants. */
    if (cublasLtMatmulDescCreate(&p->op, compute, type) != CUBLAS_STATUS_SUCCESS) return p;
    const cublasLtEpilogue_t epi = (cublasLtEpilogue_t)epilogue;
    cublasLtMatmulDescSetAttribute(p->op, CUBLASLT_MATMUL_DESC_EPILOGUE, &epi, sizeof epi);
    int ok;
    if (!trans_w) {
        /* y^T (m x n) = w_cm (m x k) @ x^T (k x n) */
        ok = cublasLtMatrixLayoutCreate(&p->wl, type, (uint64_t)m, (uint64_t)k, m) == CUBLAS_STATUS_SUCCESS &&
             cublasLtMatrixLayoutCreate(&p->xl, type, (uint64_t)k, (uint64_t)n, k) == CUBLAS_STATUS_SUCCESS &&
             cublasLtMatrixLayoutCreate(&p->yl, type, (uint64_t)m, (uint64_t)n, m) == CUBLAS_STATUS_SUCCESS;
    } else {
        /* dz_prev^T (k x n) = (w_cm (m x k))^T @ dz^T (m x n) */
        const cublasOperation_t t = CUBLAS_OP_T;
        cublasLtMatmulDescSetAttribute(p->op, CUBLASLT_MATMUL_DESC_TRANSA, &t, sizeof t);
        ok = cublasLtMatrixLayoutCreate(&p->wl, type, (uint64_t)m, (uint64_t)k, m) == CUBLAS_STATUS_SUCCESS &&
             cublasLtMatrixLayoutCreate(&p->xl, type, (uint64_t)m, (uint64_t)n, m) == CUBLAS_STATUS_SUCCESS &&
             cublasLtMatrixLayoutCreate(&p->yl, type, (uint64_t)k, (uint64_t)n, k) == CUBLAS_STATUS_SUCCESS;
    }
    if (epilogue == (int)CUBLASLT_EPILOGUE_RELU_AUX_BIAS || epilogue == (int)CUBLASLT_EPILOGUE_DRELU_BGRAD) {
        const int64_t ld = relu_mask_ld(trans_w ? k : m);
        cublasLtMatmulDescSetAttribute(p->op, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_LD, &ld, sizeof ld);
    }
    if (!ok) return p;
    cublasLtMatmulPreference_t pref;
    if (cublasLtMatmulPreferenceCreate(&pref) != CUBLAS_STATUS_SUCCESS) return p;
    cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                                         &rp_lt_workspace_bytes, sizeof rp_lt_workspace_bytes);
    cublasLtMatmulHeuristicResult_t result;
    int found = 0;
    const cublasStatus_t st = cublasLtMatmulAlgoGetHeuristic(rp_lt, p->op, p->wl, p->xl, p->yl,
                                                             p->yl, pref, 1, &result, &found);
    cublasLtMatmulPreferenceDestroy(pref);
    if (st == CUBLAS_STATUS_SUCCESS && found > 0) {
        p->algo = result.algo;
        p->supported = 1;
    }
    return p;
}

static lt_plan *lt_plan_get(int dtype, int64_t n, int64_t k, int64_t m, int epilogue, int has_bias)
{
    return lt_plan_get_op(dtype, n, k, m, epilogue, has_bias, 0);
}

/* Run plan p: out = epilogue(op(w) @ x) with the bias / aux pointers set. */
static int lt_run(lt_plan *p, int dtype, const void *x, const void *w, const void *bias,
                  const void *aux, void *out)
{
    if (bias)
        cublasLtMatmulDescSetAttribute(p->op, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bias, sizeof bias);
    if (aux)
        cublasLtMatmulDescSetAttribute(p->op, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_POINTER, &aux, sizeof aux);
    const double one_d = 1.0, zero_d = 0.0;
    const float one_f = 1.0f, zero_f = 0.0f;
    const void *one = dtype == RP_DEV_F64 ? (const void *)&one_d : (const void *)&one_f;
    const void *zero = dtype == RP_DEV_F64 ? (const void *)&zero_d : (const void *)&zero_f;
    const cublasStatus_t st = cublasLtMatmul(rp_lt, p->op, one, w, p->wl, x, p->xl, zero, out,
                                             p->yl, out, p->yl, &p->algo, rp_lt_workspace,
                                             rp_lt_workspace_bytes, rp_stream);
    if (st != CUBLAS_STATUS_SUCCESS) {
        /* Not this shape or type after all: the plan is dropped and the
         * caller takes the plain path (which overwrites the output). The
         * reason stays in rp_dev_error() for benchmarks/cuda_check.py. */
        p->supported = 0;
        fail_blas("cublasLtMatmul (falling back to GEMM + kernel)", st);
        return RP_DEV_UNSUPPORTED;
    }
    return RP_DEV_OK;
}

static int rp_impl_dense_epilogue(int dtype, int64_t n, int64_t k, int64_t m, const void *x,
                                  const void *w, const void *b, int act, double param, void *y)
{
    (void)param;
    const int epilogue = lt_epilogue_for(act, b != NULL);
    if (epilogue < 0 || n == 0 || m == 0 || k == 0) return RP_DEV_UNSUPPORTED;
    lt_plan *p = lt_plan_get(dtype, n, k, m, epilogue, b != NULL);
    if (!p->supported) return RP_DEV_UNSUPPORTED;
    return lt_run(p, dtype, x, w, b, NULL, y);
}

extern "C" int rp_dev_dense_forward_relu_mask(int dtype, int64_t n, int64_t k, int64_t m,
                                              const void *x, const void *w, const void *b,
                                              void *y, void *mask)
{
    if (!b || n == 0 || m == 0 || k == 0)
        return fail(RP_DEV_UNSUPPORTED, "relu mask", "needs a bias and a non-empty GEMM");
    lt_plan *p = lt_plan_get_op(dtype, n, k, m, (int)CUBLASLT_EPILOGUE_RELU_AUX_BIAS, 1, 0);
    if (!p->supported) return fail(RP_DEV_UNSUPPORTED, "relu mask", "RELU_AUX_BIAS not available");
    return lt_run(p, dtype, x, w, b, mask, y);
}

extern "C" int rp_dev_dense_dx_drelu_bgrad(int dtype, int64_t n, int64_t k, int64_t m,
                                           const void *dz, const void *w, const void *mask,
                                           void *dz_prev, void *db_prev)
{
    if (!db_prev || n == 0 || m == 0 || k == 0)
        return fail(RP_DEV_UNSUPPORTED, "drelu", "needs db and a non-empty GEMM");
    lt_plan *p = lt_plan_get_op(dtype, n, k, m, (int)CUBLASLT_EPILOGUE_DRELU_BGRAD, 1, 1);
    if (!p->supported) return fail(RP_DEV_UNSUPPORTED, "drelu", "DRELU_BGRAD not available");
    return lt_run(p, dtype, dz, w, db_prev, mask, dz_prev);
}

#include "ops.inc"

/* ---- runtime ------------------------------------------------------------ */

extern "C" int rp_dev_init(void)
{
    if (initialised) return RP_DEV_OK;
    int driver = 0;
    cudaDriverGetVersion(&driver);
    if (driver == 0)
        return fail(RP_DEV_UNAVAILABLE, "no CUDA driver",
                    "the NVIDIA driver (libcuda.so) is not installed or could not be loaded");
    int count = 0;
    const cudaError_t err = cudaGetDeviceCount(&count);
    if (err == cudaErrorInsufficientDriver) {
        char why[160];
        snprintf(why, sizeof why, "the driver supports CUDA %d.%d, older than the runtime %d.%d this was built with",
                 driver / 1000, driver % 1000 / 10, CUDART_VERSION / 1000, CUDART_VERSION % 1000 / 10);
        return fail(RP_DEV_UNAVAILABLE, "CUDA driver too old", why);
    }
    if (err == cudaErrorNoDevice || (err == cudaSuccess && count == 0))
        return fail(RP_DEV_UNAVAILABLE, "no CUDA device", "the driver found no GPU");
    if (err != cudaSuccess)
        return fail(RP_DEV_UNAVAILABLE, "CUDA unavailable", cudaGetErrorString(err));
    CUDA_TRY("cudaSetDevice", cudaSetDevice(0));
    CUDA_TRY("stream", cudaStreamCreateWithFlags(&rp_stream, cudaStreamNonBlocking));
    CUDA_TRY("copy stream", cudaStreamCreateWithFlags(&rp_copy_stream, cudaStreamNonBlocking));
    cublasStatus_t st = cublasCreate(&rp_blas);
    if (st != CUBLAS_STATUS_SUCCESS) return fail_blas("cublasCreate", st);
    st = cublasSetStream(rp_blas, rp_stream);
    if (st != CUBLAS_STATUS_SUCCESS) return fail_blas("cublasSetStream", st);
    st = cublasLtCreate(&rp_lt);
    if (st != CUBLAS_STATUS_SUCCESS) return fail_blas("cublasLtCreate", st);
    CUDA_TRY("cuBLASLt workspace", cudaMalloc(&rp_lt_workspace, rp_lt_workspace_bytes));
    initialised = 1;
    return RP_DEV_OK;
}

extern "C" int rp_dev_properties_get(rp_dev_properties *out)
{
    memset(out, 0, sizeof *out);
    cudaDeviceProp prop;
    CUDA_TRY("cudaGetDeviceProperties", cudaGetDeviceProperties(&prop, 0));
    snprintf(out->name, sizeof out->name, "%s", prop.name);
    out->major = prop.major;
    out->minor = prop.minor;
    out->multiprocessors = prop.multiProcessorCount;
    out->total_memory = (int64_t)prop.totalGlobalMem;
    cudaRuntimeGetVersion(&out->runtime_version);
    cudaDriverGetVersion(&out->driver_version);
    int version = 0;
    if (rp_blas && cublasGetVersion(rp_blas, &version) == CUBLAS_STATUS_SUCCESS)
        out->blas_version = version;
    return RP_DEV_OK;
}

extern "C" void rp_dev_set_max_blocks(int64_t max_blocks)
{
    rp_max_blocks = max_blocks < 1 ? RP_DEFAULT_MAX_BLOCKS : max_blocks;
}

extern "C" int rp_dev_malloc(int64_t bytes, void **ptr)
{
    *ptr = NULL;
    if (bytes <= 0) return RP_DEV_OK;
    CUDA_TRY("device allocation", cudaMallocAsync(ptr, (size_t)bytes, rp_stream));
    return RP_DEV_OK;
}

extern "C" int rp_dev_free(void *ptr)
{
    if (ptr) CUDA_TRY("device free", cudaFreeAsync(ptr, rp_stream));
    return RP_DEV_OK;
}

extern "C" int rp_dev_host_malloc(int64_t bytes, void **host_ptr)
{
    *host_ptr = NULL;
    if (bytes <= 0) return RP_DEV_OK;
    CUDA_TRY("pinned allocation", cudaHostAlloc(host_ptr, (size_t)bytes, cudaHostAllocDefault));
    return RP_DEV_OK;
}

extern "C" int rp_dev_host_free(void *host_ptr)
{
    if (host_ptr) CUDA_TRY("pinned free", cudaFreeHost(host_ptr));
    return RP_DEV_OK;
}

/* From pageable memory the copy has left the host buffer when this returns. */
extern "C" int rp_dev_upload(void *dst, const void *host_src, int64_t bytes)
{
    if (bytes > 0)
        CUDA_TRY("upload", cudaMemcpyAsync(dst, host_src, (size_t)bytes, cudaMemcpyHostToDevice, rp_stream));
    return RP_DEV_OK;
}

extern "C" int rp_dev_download(void *host_dst, const void *src, int64_t bytes)
{
    if (bytes > 0)
        CUDA_TRY("download", cudaMemcpyAsync(host_dst, src, (size_t)bytes, cudaMemcpyDeviceToHost, rp_stream));
    CUDA_TRY("download (wait)", cudaStreamSynchronize(rp_stream));
    return RP_DEV_OK;
}

extern "C" int rp_dev_copy(void *dst, const void *src, int64_t bytes)
{
    if (bytes > 0)
        CUDA_TRY("device copy", cudaMemcpyAsync(dst, src, (size_t)bytes, cudaMemcpyDeviceToDevice, rp_stream));
    return RP_DEV_OK;
}

extern "C" int rp_dev_memset(void *dst, int value, int64_t bytes) { return rp_impl_memset(dst, value, bytes); }

extern "C" int rp_dev_synchronize(void)
{
    CUDA_TRY("synchronize", cudaStreamSynchronize(rp_stream));
    return RP_DEV_OK;
}

extern "C" int rp_dev_event_create(void **event)
{
    cudaEvent_t e;
    CUDA_TRY("event", cudaEventCreateWithFlags(&e, cudaEventDisableTiming));
    *event = (void *)e;
    return RP_DEV_OK;
}

extern "C" int rp_dev_event_destroy(void *event)
{
    if (event) CUDA_TRY("event destroy", cudaEventDestroy((cudaEvent_t)event));
    return RP_DEV_OK;
}

extern "C" int rp_dev_event_record(void *event)
{
    CUDA_TRY("event record", cudaEventRecord((cudaEvent_t)event, rp_stream));
    return RP_DEV_OK;
}

extern "C" int rp_dev_event_wait(void *event)
{
    CUDA_TRY("event wait", cudaEventSynchronize((cudaEvent_t)event));
    return RP_DEV_OK;
}

extern "C" int rp_dev_upload_async(void *dst, const void *host_pinned_src, int64_t bytes, void *ready)
{
    if (bytes > 0)
        CUDA_TRY("async upload", cudaMemcpyAsync(dst, host_pinned_src, (size_t)bytes,
                                                 cudaMemcpyHostToDevice, rp_copy_stream));
    CUDA_TRY("async upload (record)", cudaEventRecord((cudaEvent_t)ready, rp_copy_stream));
    CUDA_TRY("async upload (wait)", cudaStreamWaitEvent(rp_stream, (cudaEvent_t)ready, 0));
    return RP_DEV_OK;
}
