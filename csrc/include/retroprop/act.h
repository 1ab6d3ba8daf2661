/* Elementwise activations that the GEMM write-back can fuse, and their
 * derivatives expressed from the activation's output y (so the
 * pre-activation never has to be kept for backprop). */
#ifndef RETROPROP_ACT_H
#define RETROPROP_ACT_H

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef enum {
    RP_ACT_LINEAR = 0,  /* y = z,               dy/dz = 1       */
    RP_ACT_RELU = 1,    /* y = max(z, 0),       dy/dz = [y > 0] */
    RP_ACT_SIGMOID = 2, /* y = 1 / (1 + e^-z),  dy/dz = y (1 - y) */
    RP_ACT_TANH = 3     /* y = tanh z,          dy/dz = 1 - y^2 */
} rp_act;

#define RP_ACT_COUNT 4

/* y[i] = act(x[i]); x may equal y (in place). */
void rp_act_forward_f32(rp_act act, size_t n, const float *x, float *y);
void rp_act_forward_f64(rp_act act, size_t n, const double *x, double *y);

/* dx[i] = dy[i] * act'(z[i]), computed from y[i] = act(z[i]); dx may equal dy. */
void rp_act_backward_f32(rp_act act, size_t n, const float *y, const float *dy, float *dx);
void rp_act_backward_f64(rp_act act, size_t n, const double *y, const double *dy, double *dx);

#ifdef __cplusplus
}
#endif
#endif
