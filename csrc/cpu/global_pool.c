/* Global average pooling over channels-last images (see retroprop/pool.h):
 * a mean per image and channel, and its backward, which spreads each
 * gradient evenly over the pixels. Images go to threads whole, and each
 * image's sums run in one order, so results do not depend on the thread
 * count. The element-type dependent part is written once below the #else
 * and instantiated for float and double by including this file twice. */
#ifndef RP_GAP_TEMPLATE

#include "retroprop/pool.h"
#include "retroprop/runtime.h"
#include "act_internal.h"

#define RP_GAP_SUB 64L      /* pixels summed in the element type before the double sum */
#define RP_GAP_CHUNK 256    /* channels of one pass's local sums (on the stack) */

static int threads_for(double elements, long n)
{
    return n < 2 || elements < (double)RP_ELEMENTWISE_PARALLEL_MIN ? 1 : rp_get_num_threads();
}

#define RP_GAP_TEMPLATE 1
#define REAL float
#define FN(name) name##_f32
#include "global_pool.c"
#undef REAL
#undef FN

#define REAL double
#define FN(name) name##_f64
#include "global_pool.c"
#undef REAL
#undef FN

#else /* RP_GAP_TEMPLATE */

void FN(rp_global_avgpool_forward)(long n, long pixels, int c, const REAL *x, REAL *y)
{
    const int nt = threads_for((double)n * pixels * c, n);
    (void)nt;
#ifdef RETROPROP_HAVE_OPENMP
#pragma omp parallel for schedule(static) num_threads(nt)
#endif
    for (long i = 0; i < n; ++i) {
        const REAL *ximg = x + i * pixels * c;
        for (int j0 = 0; j0 < c; j0 += RP_GAP_CHUNK) {
            const int nj = c - j0 < RP_GAP_CHUNK ? c - j0 : RP_GAP_CHUNK;
            double sum[RP_GAP_CHUNK];
            for (int j = 0; j < nj; ++j) sum[j] = 0.0;
            for (long p0 = 0; p0 < pixels; p0 += RP_GAP_SUB) {
                const long p1 = p0 + RP_GAP_SUB < pixels ? p0 + RP_GAP_SUB : pixels;
                REAL acc[RP_GAP_CHUNK];
                for (int j = 0; j < nj; ++j) acc[j] = (REAL)0;
                for (long p = p0; p < p1; ++p) {
                    const REAL *xp = ximg + p * c + j0;
                    for (int j = 0; j < nj; ++j) acc[j] += xp[j];
                }
                for (int j = 0; j < nj; ++j) sum[j] += (double)acc[j];
            }
            for (int j = 0; j < nj; ++j) y[i * c + j0 + j] = (REAL)(sum[j] / (double)pixels);
        }
    }
}

void FN(rp_global_avgpool_backward)(long n, long pixels, int c, const REAL *dy, REAL *dx)
{
    const int nt = threads_for((double)n * pixels * c, n);
    const REAL inv = (REAL)(1.0 / (double)pixels);
    (void)nt;
#ifdef RETROPROP_HAVE_OPENMP
#pragma omp parallel for schedule(static) num_threads(nt)
#endif
    for (long i = 0; i < n; ++i) {
        const REAL *g = dy + i * c;
        REAL *dimg = dx + i * pixels * c;
        for (int j0 = 0; j0 < c; j0 += RP_GAP_CHUNK) {
            const int nj = c - j0 < RP_GAP_CHUNK ? c - j0 : RP_GAP_CHUNK;
            REAL share[RP_GAP_CHUNK];
            for (int j = 0; j < nj; ++j) share[j] = g[j0 + j] * inv;
            for (long p = 0; p < pixels; ++p) {
                REAL *dp = dimg + p * c + j0;
                for (int j = 0; j < nj; ++j) dp[j] = share[j];
            }
        }
    }
}

#endif /* RP_GAP_TEMPLATE */
