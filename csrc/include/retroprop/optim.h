/* Optimizer updates, one fused pass over each parameter. */
#ifndef RETROPROP_OPTIM_H
#define RETROPROP_OPTIM_H

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

/* SGD with optional weight decay, momentum and Nesterov momentum:
 *   g = grad + weight_decay * param
 *   momentum == 0:  param -= lr * g                     (velocity unused, may be NULL)
 *   otherwise:      v = momentum * v + g
 *                   param -= lr * (nesterov ? g + momentum * v : v)            */
void rp_sgd_step_f32(size_t n, float *param, const float *grad, float *velocity,
                     float lr, float momentum, int nesterov, float weight_decay);
void rp_sgd_step_f64(size_t n, double *param, const double *grad, double *velocity,
                     double lr, double momentum, int nesterov, double weight_decay);

#ifdef __cplusplus
}
#endif
#endif
