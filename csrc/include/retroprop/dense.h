/* Fully connected layer, y = act(x @ W + b), forward and backward.
 * x is (n_batch, n_in), W is (n_in, n_out), b is (n_out) or NULL,
 * y is (n_batch, n_out). All row-major and contiguous. */
#ifndef RETROPROP_DENSE_H
#define RETROPROP_DENSE_H

#include "retroprop/act.h"

#ifdef __cplusplus
extern "C" {
#endif

/* y = act(x W + b): one GEMM with bias and activation applied in its write-back.
 * act must be one whose derivative comes from the output (act.h); act_param is
 * its parameter (sigmoid slope, leaky_relu / elu alpha), ignored by the others. */
void rp_dense_forward_f32(int n_batch, int n_in, int n_out, const float *x,
                          const float *w, const float *b, rp_act act, double act_param, float *y);
void rp_dense_forward_f64(int n_batch, int n_in, int n_out, const double *x,
                          const double *w, const double *b, rp_act act, double act_param, double *y);

/* logits = x W + b, then y = row-wise softmax(logits), in one call: the
 * output layer of a classifier. Its backward is dense_backward with the
 * gradient w.r.t. the logits and RP_ACT_LINEAR (the fused softmax +
 * cross-entropy gradient, or the softmax Jacobian applied by the caller). */
void rp_dense_forward_softmax_f32(int n_batch, int n_in, int n_out, const float *x,
                                  const float *w, const float *b, float *logits, float *y);
void rp_dense_forward_softmax_f64(int n_batch, int n_in, int n_out, const double *x,
                                  const double *w, const double *b, double *logits, double *y);

/* dz = dy * act'(y), from the output y with forward's act_param (into the
 * caller's workspace dz, n_batch x n_out, which may alias dy), db = column sums of dz (skipped when db is NULL), dW = x^T dz,
 * dx = dz W^T (skipped when dx is NULL). Outputs are overwritten. */
void rp_dense_backward_f32(int n_batch, int n_in, int n_out, const float *x,
                           const float *w, const float *y, const float *dy, rp_act act,
                           double act_param, float *dz, float *dw, float *db, float *dx);
void rp_dense_backward_f64(int n_batch, int n_in, int n_out, const double *x,
                           const double *w, const double *y, const double *dy, rp_act act,
                           double act_param, double *dz, double *dw, double *db, double *dx);

#ifdef __cplusplus
}
#endif
#endif
