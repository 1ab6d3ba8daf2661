/* The host emulator of the device API (csrc/cuda/api.h): the CUDA
 * backend's operations (ops.inc) and kernel bodies (bodies/) run on the CPU,
 * so the CPU test suite checks their index arithmetic, padding, strides and
 * reductions on every run, without a GPU.
 *
 * "Device" memory is host memory. A launch runs its body over exactly the
 * grid the GPU would use (rp_launch_for): block by block, thread by thread,
 * each thread taking its grid-stride indices. The GEMM is the CPU
 * backend's; the cuBLASLt epilogue is reported unsupported, so the fused
 * elementwise fallback is what runs here. Events and the copy stream are
 * no-ops: everything is synchronous. Single-threaded by design. */
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "api.h"
#include "bodies/bodies.h"
#include "retroprop/gemm.h"

static int64_t rp_max_blocks = RP_DEFAULT_MAX_BLOCKS;
static char last_error[512];

static int fail(int code, const char *message)
{
    snprintf(last_error, sizeof last_error, "%s", message);
    return code;
}

const char *rp_dev_error(void) { return last_error; }

#define RP_LAUNCH(BODY, N, ...)                                                          \
    do {                                                                                 \
        const int64_t n_ = (N);                                                          \
        const rp_launch l_ = rp_launch_for(n_, rp_max_blocks);                           \
        for (int64_t block_ = 0; block_ < l_.blocks; ++block_)                           \
            for (int thread_ = 0; thread_ < l_.threads; ++thread_)                       \
                RP_GRID_STRIDE(i_, n_, block_, l_.threads, l_.blocks, thread_)           \
                    BODY(i_, __VA_ARGS__);                                               \
    } while (0)

/* ---- the implementation hooks of ops.inc -------------------------------- */

static void *scratch;
static int64_t scratch_bytes;

static int rp_impl_scratch(int64_t bytes, void **ptr)
{
    if (bytes > scratch_bytes) {
        free(scratch);
        scratch = malloc((size_t)bytes);
        scratch_bytes = scratch ? bytes : 0;
        if (!scratch) return fail(RP_DEV_FAILED, "emulated device: out of memory for scratch");
    }
    *ptr = scratch;
    return RP_DEV_OK;
}

static int rp_impl_memset(void *dst, int value, int64_t bytes)
{
    if (bytes > 0) memset(dst, value, (size_t)bytes);
    return RP_DEV_OK;
}

static int rp_impl_gemm(int dtype, int trans_a, int trans_b, int64_t m, int64_t n, int64_t k,
                        double alpha, const void *a, int64_t lda, const void *b, int64_t ldb,
                        double beta, void *c, int64_t ldc)
{
    if (m > INT_MAX || n > INT_MAX || k > INT_MAX || lda > INT_MAX || ldb > INT_MAX ||
        ldc > INT_MAX)
        return fail(RP_DEV_FAILED, "emulated gemm: a dimension exceeds INT_MAX");
    if (m == 0 || n == 0) return RP_DEV_OK;
    if (dtype == RP_DEV_F64)
        rp_gemm_f64(trans_a, trans_b, (int)m, (int)n, (int)k, alpha, (const double *)a, (int)lda,
                    (const double *)b, (int)ldb, beta, (double *)c, (int)ldc, NULL, RP_ACT_LINEAR);
    else
        rp_gemm_f32(trans_a, trans_b, (int)m, (int)n, (int)k, (float)alpha, (const float *)a,
                    (int)lda, (const float *)b, (int)ldb, (float)beta, (float *)c, (int)ldc, NULL,
                    RP_ACT_LINEAR);
    return RP_DEV_OK;
}

static int rp_impl_dense_epilogue(int dtype, int64_t n, int64_t k, int64_t m, const void *x,
                                  const void *w, const void *b, int act, double param, void *y)
{
    (void)dtype; (void)n; (void)k; (void)m; (void)x; (void)w; (void)b; (void)act; (void)param;
    (void)y;
    return RP_DEV_UNSUPPORTED;
}

#include "ops.inc"

/* ---- the cuBLASLt-only relu chain: not emulated --------------------------- */

int64_t rp_dev_relu_mask_bytes(int64_t n, int64_t width)
{
    return (width + 127) / 128 * 128 * n / 8;
}

int rp_dev_dense_forward_relu_mask(int dtype, int64_t n, int64_t k, int64_t m, const void *x,
                                   const void *w, const void *b, void *y, void *mask)
{
    (void)dtype; (void)n; (void)k; (void)m; (void)x; (void)w; (void)b; (void)y; (void)mask;
    return fail(RP_DEV_UNSUPPORTED, "emulated device: no cuBLASLt epilogues");
}

int rp_dev_dense_dx_drelu_bgrad(int dtype, int64_t n, int64_t k, int64_t m, const void *dz,
                                const void *w, const void *mask, void *dz_prev, void *db_prev)
{
    (void)dtype; (void)n; (void)k; (void)m; (void)dz; (void)w; (void)mask; (void)dz_prev;
    (void)db_prev;
    return fail(RP_DEV_UNSUPPORTED, "emulated device: no cuBLASLt epilogues");
}

/* ---- runtime ------------------------------------------------------------ */

int rp_dev_init(void) { return RP_DEV_OK; }

int rp_dev_properties_get(rp_dev_properties *out)
{
    memset(out, 0, sizeof *out);
    snprintf(out->name, sizeof out->name, "host emulator (csrc/cuda/emulate.c)");
    out->emulated = 1;
    return RP_DEV_OK;
}

void rp_dev_set_max_blocks(int64_t max_blocks)
{
    rp_max_blocks = max_blocks < 1 ? RP_DEFAULT_MAX_BLOCKS : max_blocks;
}

int rp_dev_malloc(int64_t bytes, void **ptr)
{
    *ptr = NULL;
    if (bytes <= 0) return RP_DEV_OK;
    *ptr = malloc((size_t)bytes);   /* aligned for any element type */
    return *ptr ? RP_DEV_OK : fail(RP_DEV_FAILED, "emulated device: out of memory");
}

int rp_dev_free(void *ptr)
{
    free(ptr);
    return RP_DEV_OK;
}

int rp_dev_host_malloc(int64_t bytes, void **host_ptr) { return rp_dev_malloc(bytes, host_ptr); }
int rp_dev_host_free(void *host_ptr) { return rp_dev_free(host_ptr); }

int rp_dev_upload(void *dst, const void *host_src, int64_t bytes)
{
    if (bytes > 0) memcpy(dst, host_src, (size_t)bytes);
    return RP_DEV_OK;
}

int rp_dev_download(void *host_dst, const void *src, int64_t bytes)
{
    if (bytes > 0) memcpy(host_dst, src, (size_t)bytes);
    return RP_DEV_OK;
}

int rp_dev_copy(void *dst, const void *src, int64_t bytes)
{
    if (bytes > 0) memmove(dst, src, (size_t)bytes);
    return RP_DEV_OK;
}

int rp_dev_memset(void *dst, int value, int64_t bytes) { return rp_impl_memset(dst, value, bytes); }
int rp_dev_synchronize(void) { return RP_DEV_OK; }

/* An event is a token: everything already happened. */
int rp_dev_event_create(void **event)
{
    *event = malloc(1);
    return *event ? RP_DEV_OK : fail(RP_DEV_FAILED, "emulated device: out of memory");
}

int rp_dev_event_destroy(void *event)
{
    free(event);
    return RP_DEV_OK;
}

int rp_dev_event_record(void *event) { (void)event; return RP_DEV_OK; }
int rp_dev_event_wait(void *event) { (void)event; return RP_DEV_OK; }

int rp_dev_upload_async(void *dst, const void *host_pinned_src, int64_t bytes, void *ready)
{
    (void)ready;
    return rp_dev_upload(dst, host_pinned_src, bytes);
}
