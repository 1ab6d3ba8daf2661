/* Losses whose hot part is worth a kernel. */
#ifndef RETROPROP_LOSS_H
#define RETROPROP_LOSS_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Row-wise softmax of an (n x c) matrix, max-subtracted; out may equal x. */
void rp_softmax_f32(int n, int c, const float *x, float *out);
void rp_softmax_f64(int n, int c, const double *x, double *out);

/* Softmax + categorical cross-entropy as one op, from logits z (n x c).
 * Targets are either class ids (labels, length n, each in [0, c)) or a
 * row-stochastic matrix (targets, n x c); pass NULL for the unused one.
 * Returns the batch-mean loss  mean_i [logsumexp(z_i) - sum_j t_ij z_ij]
 * and writes grad = (softmax(z) - t) / n (grad may be NULL). */
double rp_softmax_xent_f32(int n, int c, const float *z, const int64_t *labels,
                           const float *targets, float *grad);
double rp_softmax_xent_f64(int n, int c, const double *z, const int64_t *labels,
                           const double *targets, double *grad);

#ifdef __cplusplus
}
#endif
#endif
