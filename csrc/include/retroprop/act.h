/* Elementwise activations: forward and derivative, float32 and float64.
 *
 * Every activation takes one scalar parameter `param`, passed explicitly
 * (ignored by the activations that have none; rp_act_default_param gives the
 * usual value). Below z is the activation's input, y = act(z) its output.
 *
 * Derivative FROM THE OUTPUT y (the input need not be kept; these are the
 * ones the GEMM write-back can fuse, see gemm.h / dense.h / conv.h):
 *   LINEAR      y = z                                   y' = 1
 *   RELU        y = max(z, 0)                           y' = [y > 0]
 *   SIGMOID     y = 1 / (1 + e^(-a z)), a = param > 0   y' = a y (1 - y)
 *   TANH        y = tanh z                              y' = 1 - y^2
 *   STEP        y = [z >= 0]  (Heaviside, H(0) = 1)     y' = 0 (no gradient flows)
 *   LEAKY_RELU  y = z > 0 ? z : a z, a = param >= 0     y' = y > 0 ? 1 : a
 *   ELU         y = z > 0 ? z : a (e^z - 1), a >= 0     y' = y > 0 ? 1 : y + a   (= a e^z)
 * For LEAKY_RELU and ELU, a >= 0 makes [y > 0] equal [z > 0]; at z = 0 the
 * derivative is the left one (a), like relu's 0.
 *
 * Derivative FROM THE INPUT z (y alone does not determine it, so the caller
 * keeps the pre-activation):
 *   ARCTAN      y = atan z                              y' = 1 / (1 + z^2)
 *   SOFTPLUS    y = log(1 + e^z)  (never overflows)     y' = sigmoid(z)
 *   GELU        tanh approximation (PyTorch's gelu(approximate="tanh")):
 *               y = z s, s = sigmoid(2u) = (1 + tanh u) / 2, u = sqrt(2/pi) (z + 0.044715 z^3)
 *               y' = s + 2 z s (1 - s) u',  u' = sqrt(2/pi) (1 + 3 * 0.044715 z^2)
 *   SWISH       y = z sigmoid(z)  (SiLU)                y' = s + z s (1 - s), s = sigmoid(z)
 *   MISH        y = z tanh(softplus(z))  (Misra 2019)   y' = t + z s (1 - t^2), t = tanh(softplus(z))
 *
 * Arrays of at least RP_ELEMENTWISE_PARALLEL_MIN (cheap activations) or
 * RP_ELEMENTWISE_PARALLEL_MIN_TRANSCENDENTAL elements (those calling libm per
 * element) are split over OpenMP threads; results do not depend on the
 * thread count.
 */
#ifndef RETROPROP_ACT_H
#define RETROPROP_ACT_H

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef enum {
    RP_ACT_LINEAR = 0,
    RP_ACT_RELU = 1,
    RP_ACT_SIGMOID = 2,
    RP_ACT_TANH = 3,
    RP_ACT_STEP = 4,
    RP_ACT_LEAKY_RELU = 5,
    RP_ACT_ELU = 6,
    RP_ACT_ARCTAN = 7,
    RP_ACT_SOFTPLUS = 8,
    RP_ACT_GELU = 9,
    RP_ACT_SWISH = 10,
    RP_ACT_MISH = 11
} rp_act;

#define RP_ACT_COUNT 12

/* 1 when act's derivative needs the input z (ARCTAN, SOFTPLUS, GELU, SWISH, MISH),
 * 0 when it is computed from the output y (the others). */
int rp_act_derivative_needs_input(rp_act act);

/* The conventional parameter: sigmoid slope 1, leaky_relu 0.01, elu 1, else 0. */
double rp_act_default_param(rp_act act);

/* y[i] = act(x[i]); x may equal y (in place). */
void rp_act_forward_f32(rp_act act, double param, size_t n, const float *x, float *y);
void rp_act_forward_f64(rp_act act, double param, size_t n, const double *x, double *y);

/* dx[i] = dy[i] * act'(z[i]). The derivative is read from the output y when
 * rp_act_derivative_needs_input(act) is 0 (x may then be NULL), from the input
 * x = z otherwise (y may then be NULL). dx may equal dy. */
void rp_act_backward_f32(rp_act act, double param, size_t n, const float *x, const float *y,
                         const float *dy, float *dx);
void rp_act_backward_f64(rp_act act, double param, size_t n, const double *x, const double *y,
                         const double *dy, double *dx);

#ifdef __cplusplus
}
#endif
#endif
