/* The sum of a residual block's two paths with the activation after it, in
 * one pass: y = act(a + b), elementwise over n values. act is one whose
 * derivative comes from its output (act.h: linear, relu, sigmoid, tanh,
 * step, leaky_relu, elu), with its parameter; the backward of the
 * activation is rp_act_backward (act.h), and the gradient of the block's
 * input, the sum of its two paths' gradients, is this with act linear.
 * y may alias a or b. Arrays of RP_ELEMENTWISE_PARALLEL_MIN elements or
 * more are split over threads (elementwise: the result does not depend on
 * the thread count). */
#ifndef RETROPROP_RESIDUAL_H
#define RETROPROP_RESIDUAL_H

#include <stddef.h>
#include "retroprop/act.h"

#ifdef __cplusplus
extern "C" {
#endif

void rp_add_act_f32(size_t n, const float *a, const float *b, rp_act act, double param, float *y);
void rp_add_act_f64(size_t n, const double *a, const double *b, rp_act act, double param,
                    double *y);

#ifdef __cplusplus
}
#endif
#endif
