/* Batch normalisation kernels (see retroprop/norm.h for the formulas).
 *
 * Data is (rows, c) with channels contiguous, so every loop walks rows in
 * the outer loop and channels in the inner, unit-stride loop.
 *
 * Per-channel sums: the rows are cut into at most RP_BN_MAX_BLOCKS blocks
 * whose boundaries depend on `rows` alone. Threads take whole blocks and
 * write one partial sum per (block, channel); the partials are then added
 * in block order. The result therefore never depends on the thread count
 * (deterministic), and each thread still streams through contiguous memory.
 * Sums are kept in double for both element types: a float32 running sum
 * over 10^6 rows would lose about three digits.
 *
 * The element-type dependent part is written once, below the #else, and
 * instantiated for float and double by including this file twice.
 */
#ifndef RP_NORM_TEMPLATE

#include <math.h>
#include <stdlib.h>
#include "retroprop/norm.h"
#include "retroprop/runtime.h"
#include "act_internal.h"

#define RP_BN_MAX_BLOCKS 64L
#define RP_BN_MIN_BLOCK_ROWS 64L

static int threads_for(double elements)
{
    return elements < (double)RP_ELEMENTWISE_PARALLEL_MIN ? 1 : rp_get_num_threads();
}

/* Rows per block: at least RP_BN_MIN_BLOCK_ROWS, and few enough blocks. */
static long block_rows_for(long rows)
{
    long per = (rows + RP_BN_MAX_BLOCKS - 1) / RP_BN_MAX_BLOCKS;
    return per < RP_BN_MIN_BLOCK_ROWS ? RP_BN_MIN_BLOCK_ROWS : per;
}

/* out[j] = sum over blocks b, in order, of partial[b * c + j]. */
static void sum_blocks(const double *partial, long blocks, int c, double *out)
{
    for (int j = 0; j < c; ++j) out[j] = 0.0;
    for (long b = 0; b < blocks; ++b) {
        const double *p = partial + b * c;
        for (int j = 0; j < c; ++j) out[j] += p[j];
    }
}

#define RP_NORM_TEMPLATE 1
#define REAL float
#define FN(name) name##_f32
#include "norm.c"
#undef REAL
#undef FN

#define REAL double
#define FN(name) name##_f64
#include "norm.c"
#undef REAL
#undef FN

#else /* RP_NORM_TEMPLATE: the body, instantiated per element type */

int FN(rp_batchnorm_stats)(long rows, int c, const REAL *x, REAL *mean, REAL *var)
{
    const long brows = block_rows_for(rows);
    const long blocks = (rows + brows - 1) / brows;
    const int nt = threads_for((double)rows * c);
    /* partial sums (blocks x c), then the channel means, then the squared deviations. */
    double *partial = (double *)malloc(sizeof(double) * ((size_t)blocks * c + 2 * (size_t)c));
    if (partial == NULL) return -1;
    double *mean_d = partial + blocks * c;
    double *var_d = mean_d + c;
    (void)nt;

    /* Pass 1: the mean. */
#ifdef RETROPROP_HAVE_OPENMP
#pragma omp parallel for schedule(static) num_threads(nt)
#endif
    for (long b = 0; b < blocks; ++b) {
        double *p = partial + b * c;
        const long end = (b + 1) * brows < rows ? (b + 1) * brows : rows;
        for (int j = 0; j < c; ++j) p[j] = 0.0;
        for (long i = b * brows; i < end; ++i) {
            const REAL *xr = x + i * c;
            for (int j = 0; j < c; ++j) p[j] += (double)xr[j];
        }
    }
    sum_blocks(partial, blocks, c, mean_d);
    for (int j = 0; j < c; ++j) mean_d[j] /= (double)rows;

    /* Pass 2: the variance around that mean (two passes: no cancellation
     * of E[x^2] - E[x]^2 when the mean is large against the spread). */
#ifdef RETROPROP_HAVE_OPENMP
#pragma omp parallel for schedule(static) num_threads(nt)
#endif
    for (long b = 0; b < blocks; ++b) {
        double *p = partial + b * c;
        const long end = (b + 1) * brows < rows ? (b + 1) * brows : rows;
        for (int j = 0; j < c; ++j) p[j] = 0.0;
        for (long i = b * brows; i < end; ++i) {
            const REAL *xr = x + i * c;
            for (int j = 0; j < c; ++j) {
                const double d = (double)xr[j] - mean_d[j];
                p[j] += d * d;
            }
        }
    }
    sum_blocks(partial, blocks, c, var_d);
    int overflow = 0;
    for (int j = 0; j < c; ++j) {
        mean[j] = (REAL)mean_d[j];
        var[j] = (REAL)(var_d[j] / (double)rows);
        /* Finite inputs (a finite mean) whose variance does not fit REAL
         * (float32 values near 1e20): an infinite variance would normalise
         * every input to beta, silently. */
        overflow |= isinf(var[j]) && isfinite(mean_d[j]);
    }
    free(partial);
    return overflow ? RP_BN_VARIANCE_OVERFLOW : 0;
}

int FN(rp_batchnorm_apply)(long rows, int c, const REAL *x, const REAL *mean,
                           const REAL *var, const REAL *gamma, const REAL *beta,
                           REAL eps, REAL *y)
{
    const int nt = threads_for((double)rows * c);
    /* y = (x - mean) * scale + shift, scale = gamma / sqrt(var + eps), shift = beta. */
    REAL *scale = (REAL *)malloc(sizeof(REAL) * 2 * (size_t)c);
    if (scale == NULL) return -1;
    REAL *shift = scale + c;
    (void)nt;
    for (int j = 0; j < c; ++j) {
        const double inv_std = 1.0 / sqrt((double)var[j] + (double)eps);
        scale[j] = (REAL)((gamma != NULL ? (double)gamma[j] : 1.0) * inv_std);
        shift[j] = beta != NULL ? beta[j] : (REAL)0;
    }
#ifdef RETROPROP_HAVE_OPENMP
#pragma omp parallel for schedule(static) num_threads(nt)
#endif
    for (long i = 0; i < rows; ++i) {
        const REAL *xr = x + i * c;
        REAL *yr = y + i * c;
        for (int j = 0; j < c; ++j) yr[j] = (xr[j] - mean[j]) * scale[j] + shift[j];
    }
    free(scale);
    return 0;
}

int FN(rp_batchnorm_backward)(long rows, int c, const REAL *x, const REAL *dy,
                              const REAL *mean, const REAL *var, const REAL *gamma,
                              REAL eps, int batch_stats, REAL *dgamma, REAL *dbeta,
                              REAL *dx)
{
    const long brows = block_rows_for(rows);
    const long blocks = (rows + brows - 1) / brows;
    const int nt = threads_for((double)rows * c);
    /* Partials of sum(dy) and sum(dy * xhat) side by side (blocks x 2c),
     * then their totals, inv_std, and room for the three dx coefficients. */
    double *partial = (double *)malloc(sizeof(double) * (2 * (size_t)blocks * c + 6 * (size_t)c));
    if (partial == NULL) return -1;
    double *sum_dy = partial + 2 * blocks * c;
    double *sum_dy_xhat = sum_dy + c;
    double *inv_std = sum_dy_xhat + c;
    (void)nt;
    for (int j = 0; j < c; ++j) inv_std[j] = 1.0 / sqrt((double)var[j] + (double)eps);

#ifdef RETROPROP_HAVE_OPENMP
#pragma omp parallel for schedule(static) num_threads(nt)
#endif
    for (long b = 0; b < blocks; ++b) {
        double *p_dy = partial + 2 * b * c;
        double *p_dyx = p_dy + c;
        const long end = (b + 1) * brows < rows ? (b + 1) * brows : rows;
        for (int j = 0; j < c; ++j) { p_dy[j] = 0.0; p_dyx[j] = 0.0; }
        for (long i = b * brows; i < end; ++i) {
            const REAL *xr = x + i * c;
            const REAL *dyr = dy + i * c;
            for (int j = 0; j < c; ++j) {
                const double g = (double)dyr[j];
                p_dy[j] += g;
                p_dyx[j] += g * ((double)xr[j] - (double)mean[j]) * inv_std[j];
            }
        }
    }
    /* Totals, in block order. */
    for (int j = 0; j < c; ++j) { sum_dy[j] = 0.0; sum_dy_xhat[j] = 0.0; }
    for (long b = 0; b < blocks; ++b) {
        const double *p_dy = partial + 2 * b * c;
        const double *p_dyx = p_dy + c;
        for (int j = 0; j < c; ++j) { sum_dy[j] += p_dy[j]; sum_dy_xhat[j] += p_dyx[j]; }
    }
    for (int j = 0; j < c; ++j) {
        if (dgamma != NULL) dgamma[j] = (REAL)sum_dy_xhat[j];
        if (dbeta != NULL) dbeta[j] = (REAL)sum_dy[j];
    }
    if (dx == NULL) {
        free(partial);
        return 0;
    }

    /* dx = k_dy * dy + k_dev * (x - mean) + k_0 per channel, where
     *   k_dy  = gamma * inv_std
     *   k_dev = -k_dy * inv_std * sum_dy_xhat / rows     (training only)
     *   k_0   = -k_dy * sum_dy / rows                    (training only)
     * which is gamma*inv_std/rows * (rows*dy - sum_dy - xhat*sum_dy_xhat). */
    REAL *k_dy = (REAL *)(inv_std + c);
    REAL *k_dev = k_dy + c;
    REAL *k_0 = k_dev + c;
    for (int j = 0; j < c; ++j) {
        const double a = (gamma != NULL ? (double)gamma[j] : 1.0) * inv_std[j];
        k_dy[j] = (REAL)a;
        k_dev[j] = batch_stats ? (REAL)(-a * inv_std[j] * sum_dy_xhat[j] / (double)rows) : (REAL)0;
        k_0[j] = batch_stats ? (REAL)(-a * sum_dy[j] / (double)rows) : (REAL)0;
    }
#ifdef RETROPROP_HAVE_OPENMP
#pragma omp parallel for schedule(static) num_threads(nt)
#endif
    for (long i = 0; i < rows; ++i) {
        const REAL *xr = x + i * c;
        const REAL *dyr = dy + i * c;
        REAL *dxr = dx + i * c;
        for (int j = 0; j < c; ++j)
            dxr[j] = k_dy[j] * dyr[j] + k_dev[j] * (xr[j] - mean[j]) + k_0[j];
    }
    free(partial);
    return 0;
}

#endif /* RP_NORM_TEMPLATE */
