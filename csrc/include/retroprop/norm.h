/* Batch normalisation over channels-last data, per channel.
 *
 * x is viewed as (rows, c): rows = every position of every sample (N for
 * (N, C), N*H*W for NHWC, N*L for (N, L, C)), c = channels, contiguous.
 * Statistics are per channel over all rows; the variance is the biased one
 * (divided by rows), as used for normalising by Keras and PyTorch alike.
 *
 * Reductions run over a partition of the rows into blocks that depends on
 * `rows` and `c` only (never on the thread count); block sums are combined
 * in block order in double precision, so results are bit-identical for any
 * number of threads.
 *
 * Functions returning int give 0 on success and -1 when their small
 * per-call scratch buffer (2 doubles per channel and block of rows) cannot
 * be allocated.
 * The statistics return RP_BN_VARIANCE_OVERFLOW (with mean and var
 * written) when the variance of finite inputs does not fit the element type.
 */
#ifndef RETROPROP_NORM_H
#define RETROPROP_NORM_H

#include "retroprop/act.h"

#ifdef __cplusplus
extern "C" {
#endif

#define RP_BN_VARIANCE_OVERFLOW 2

/* mean[j] = sum_i x[i, j] / rows;  var[j] = sum_i (x[i, j] - mean[j])^2 / rows. */
int rp_batchnorm_stats_f32(long rows, int c, const float *x, float *mean, float *var);
int rp_batchnorm_stats_f64(long rows, int c, const double *x, double *mean, double *var);

/* The moving statistics of a training step:
 *   moving_mean = momentum * moving_mean + (1 - momentum) * mean   (and var alike),
 * rounded as the two products and their sum in the element type. */
void rp_batchnorm_update_moving_f32(int c, const float *mean, const float *var, float momentum,
                                    float *moving_mean, float *moving_var);
void rp_batchnorm_update_moving_f64(int c, const double *mean, const double *var,
                                    double momentum, double *moving_mean, double *moving_var);

/* y = (x - mean) / sqrt(var + eps) * gamma + beta, per channel.
 * gamma NULL means 1, beta NULL means 0. y may alias x. */
int rp_batchnorm_apply_f32(long rows, int c, const float *x, const float *mean,
                           const float *var, const float *gamma, const float *beta,
                           float eps, float *y);
int rp_batchnorm_apply_f64(long rows, int c, const double *x, const double *mean,
                           const double *var, const double *gamma, const double *beta,
                           double eps, double *y);

/* y = act(batchnorm_apply(x)): the normalisation with an activation whose
 * derivative comes from its output (act.h) applied in the same pass, for a
 * BatchNorm followed by e.g. ReLU. RP_ACT_LINEAR is batchnorm_apply. */
int rp_batchnorm_apply_act_f32(long rows, int c, const float *x, const float *mean,
                               const float *var, const float *gamma, const float *beta,
                               float eps, rp_act act, float *y);
int rp_batchnorm_apply_act_f64(long rows, int c, const double *x, const double *mean,
                               const double *var, const double *gamma, const double *beta,
                               double eps, rp_act act, double *y);

/* Backward of apply, with xhat = (x - mean) * inv_std, inv_std = 1/sqrt(var + eps):
 *   sum_dy[j] = sum_i dy[i, j];   sum_dy_xhat[j] = sum_i dy[i, j] * xhat[i, j]
 *   dgamma = sum_dy_xhat;  dbeta = sum_dy                 (each skipped when NULL)
 *   batch_stats != 0 (training: mean and var are the batch statistics of x,
 *   so they depend on x too):
 *       dx = gamma * inv_std / rows * (rows * dy - sum_dy - xhat * sum_dy_xhat)
 *   batch_stats == 0 (inference: mean and var are constants):
 *       dx = gamma * inv_std * dy
 *   dx skipped when NULL; gamma NULL means 1. dx may alias dy. */
int rp_batchnorm_backward_f32(long rows, int c, const float *x, const float *dy,
                              const float *mean, const float *var, const float *gamma,
                              float eps, int batch_stats, float *dgamma, float *dbeta,
                              float *dx);
int rp_batchnorm_backward_f64(long rows, int c, const double *x, const double *dy,
                              const double *mean, const double *var, const double *gamma,
                              double eps, int batch_stats, double *dgamma, double *dbeta,
                              double *dx);

/* Backward of apply_act: batchnorm_backward with dy replaced by
 * g = dy * act'(y), y the output of apply_act (read only when act is not
 * RP_ACT_LINEAR). dx may alias dy. */
int rp_batchnorm_backward_act_f32(long rows, int c, const float *x, const float *y,
                                  const float *dy, const float *mean, const float *var,
                                  const float *gamma, float eps, int batch_stats, rp_act act,
                                  float *dgamma, float *dbeta, float *dx);
int rp_batchnorm_backward_act_f64(long rows, int c, const double *x, const double *y,
                                  const double *dy, const double *mean, const double *var,
                                  const double *gamma, double eps, int batch_stats, rp_act act,
                                  double *dgamma, double *dbeta, double *dx);

#ifdef __cplusplus
}
#endif
#endif
