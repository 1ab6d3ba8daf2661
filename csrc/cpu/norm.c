/* Batch normalisation kernels (see retroprop/norm.h for the formulas):
 * the public entry points, choosing the AVX2 build of the kernels
 * (norm_avx2.c, float32) or the portable one compiled here.
 *
 * Data is (rows, c) with channels contiguous, so every loop walks rows in
 * the outer loop and channels in the inner, unit-stride loop (which the
 * compiler vectorises).
 *
 * Reductions: the rows are cut into blocks whose boundaries depend on
 * `rows` and `c` alone (about RP_BN_BLOCK_BYTES of x each, so a block read
 * twice comes from the core's L2 the second time). Threads take whole
 * blocks and write one partial result per (block, channel); the partials
 * are then combined in block order. The result therefore never depends on
 * the thread count (deterministic). Within a block, sums run in the element
 * type over RP_BN_SUB rows at a time and are then added into double: a
 * float32 running sum over 10^6 rows would lose about three digits, a
 * double per element would make the pass compute-bound.
 *
 * The statistics read x once from memory: each block's mean, then the sum
 * of squared deviations around it (the block again, from L2), combined
 * across blocks with the parallel variance formula (Chan et al. 1979):
 *     M2 = sum_b M2_b + sum_b n_b (mean_b - mean)^2.
 * Deviations are always taken from a mean, never E[x^2] - E[x]^2, so a
 * large mean against the spread costs no digits.
 *
 * The _act variants fuse an activation after the normalisation (relu,
 * for a BN + ReLU pair) and its derivative, read from the output, into the
 * backward: one pass over memory less each way.
 */
#include "retroprop/norm.h"
#include "norm_internal.h"
#include "act_scalar.h"

#define REAL float
#define KFN(name) rp_bn_##name##_f32_generic
#define GRAD_FROM_OUTPUT rp_act_grad_from_output_f32
#define ACT_SCALAR rp_act_scalar_f32
#include "norm_kernels.inc"
#undef REAL
#undef KFN
#undef GRAD_FROM_OUTPUT
#undef ACT_SCALAR

#define REAL double
#define KFN(name) rp_bn_##name##_f64_generic
#define GRAD_FROM_OUTPUT rp_act_grad_from_output_f64
#define ACT_SCALAR rp_act_scalar_f64
#include "norm_kernels.inc"
#undef REAL
#undef KFN
#undef GRAD_FROM_OUTPUT
#undef ACT_SCALAR

#ifdef RETROPROP_HAVE_AVX2
#define USE_AVX2 (rp_simd_in_use() == RP_SIMD_AVX2)
#else
#define USE_AVX2 0
#define rp_bn_stats_f32_avx2 rp_bn_stats_f32_generic
#define rp_bn_apply_act_f32_avx2 rp_bn_apply_act_f32_generic
#define rp_bn_backward_act_f32_avx2 rp_bn_backward_act_f32_generic
#endif

/* moving = momentum * moving + (1 - momentum) * batch, as two products and a sum. */
void rp_batchnorm_update_moving_f32(int c, const float *mean, const float *var, float momentum,
                                    float *moving_mean, float *moving_var)
{
    const float keep = momentum, take = 1.0f - momentum;
    for (int j = 0; j < c; ++j) {
        const float old_mean = keep * moving_mean[j], new_mean = take * mean[j];
        const float old_var = keep * moving_var[j], new_var = take * var[j];
        moving_mean[j] = old_mean + new_mean;
        moving_var[j] = old_var + new_var;
    }
}

void rp_batchnorm_update_moving_f64(int c, const double *mean, const double *var,
                                    double momentum, double *moving_mean, double *moving_var)
{
    const double keep = momentum, take = 1.0 - momentum;
    for (int j = 0; j < c; ++j) {
        const double old_mean = keep * moving_mean[j], new_mean = take * mean[j];
        const double old_var = keep * moving_var[j], new_var = take * var[j];
        moving_mean[j] = old_mean + new_mean;
        moving_var[j] = old_var + new_var;
    }
}

int rp_batchnorm_stats_f32(long rows, int c, const float *x, float *mean, float *var)
{
    return USE_AVX2 ? rp_bn_stats_f32_avx2(rows, c, x, mean, var)
                    : rp_bn_stats_f32_generic(rows, c, x, mean, var);
}

int rp_batchnorm_stats_f64(long rows, int c, const double *x, double *mean, double *var)
{
    return rp_bn_stats_f64_generic(rows, c, x, mean, var);
}

int rp_batchnorm_apply_act_f32(long rows, int c, const float *x, const float *mean,
                               const float *var, const float *gamma, const float *beta,
                               float eps, rp_act act, float *y)
{
    return USE_AVX2 ? rp_bn_apply_act_f32_avx2(rows, c, x, mean, var, gamma, beta, eps, act, y)
                    : rp_bn_apply_act_f32_generic(rows, c, x, mean, var, gamma, beta, eps, act, y);
}

int rp_batchnorm_apply_act_f64(long rows, int c, const double *x, const double *mean,
                               const double *var, const double *gamma, const double *beta,
                               double eps, rp_act act, double *y)
{
    return rp_bn_apply_act_f64_generic(rows, c, x, mean, var, gamma, beta, eps, act, y);
}

int rp_batchnorm_apply_f32(long rows, int c, const float *x, const float *mean, const float *var,
                           const float *gamma, const float *beta, float eps, float *y)
{
    return rp_batchnorm_apply_act_f32(rows, c, x, mean, var, gamma, beta, eps, RP_ACT_LINEAR, y);
}

int rp_batchnorm_apply_f64(long rows, int c, const double *x, const double *mean,
                           const double *var, const double *gamma, const double *beta,
                           double eps, double *y)
{
    return rp_batchnorm_apply_act_f64(rows, c, x, mean, var, gamma, beta, eps, RP_ACT_LINEAR, y);
}

int rp_batchnorm_backward_act_f32(long rows, int c, const float *x, const float *y,
                                  const float *dy, const float *mean, const float *var,
                                  const float *gamma, float eps, int batch_stats, rp_act act,
                                  float *dgamma, float *dbeta, float *dx)
{
    return USE_AVX2 ? rp_bn_backward_act_f32_avx2(rows, c, x, y, dy, mean, var, gamma, eps,
                                                  batch_stats, act, dgamma, dbeta, dx)
                    : rp_bn_backward_act_f32_generic(rows, c, x, y, dy, mean, var, gamma, eps,
                                                     batch_stats, act, dgamma, dbeta, dx);
}

int rp_batchnorm_backward_act_f64(long rows, int c, const double *x, const double *y,
                                  const double *dy, const double *mean, const double *var,
                                  const double *gamma, double eps, int batch_stats, rp_act act,
                                  double *dgamma, double *dbeta, double *dx)
{
    return rp_bn_backward_act_f64_generic(rows, c, x, y, dy, mean, var, gamma, eps, batch_stats,
                                          act, dgamma, dbeta, dx);
}

int rp_batchnorm_backward_f32(long rows, int c, const float *x, const float *dy,
                              const float *mean, const float *var, const float *gamma,
                              float eps, int batch_stats, float *dgamma, float *dbeta, float *dx)
{
    return rp_batchnorm_backward_act_f32(rows, c, x, NULL, dy, mean, var, gamma, eps, batch_stats,
                                         RP_ACT_LINEAR, dgamma, dbeta, dx);
}

int rp_batchnorm_backward_f64(long rows, int c, const double *x, const double *dy,
                              const double *mean, const double *var, const double *gamma,
                              double eps, int batch_stats, double *dgamma, double *dbeta,
                              double *dx)
{
    return rp_batchnorm_backward_act_f64(rows, c, x, NULL, dy, mean, var, gamma, eps, batch_stats,
                                         RP_ACT_LINEAR, dgamma, dbeta, dx);
}
