/* Optimizer updates, one fused pass over each parameter.
 *
 * Every step function takes check_only and returns a count:
 *   check_only == 0: updates param and its state in place; returns 0;
 *   check_only != 0: writes nothing; returns how many elements WOULD get a
 *                    NaN or Inf (in the parameter or its state), so a whole
 *                    step can be tested before any array is changed. */
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
size_t rp_sgd_step_f32(size_t n, float *param, const float *grad, float *velocity,
                     float lr, float momentum, int nesterov, float weight_decay, int check_only);
size_t rp_sgd_step_f64(size_t n, double *param, const double *grad, double *velocity,
                     double lr, double momentum, int nesterov, double weight_decay, int check_only);

/* Adam / AdamW, with the bias corrections passed in as factors
 * c1 = 1 / (1 - beta1^t) and c2 = 1 / (1 - beta2^t) (t = 1 for the first step):
 *   decoupled == 0 (Adam, L2):  g = grad + weight_decay * param
 *   decoupled != 0 (AdamW):     g = grad; param -= lr * weight_decay * param
 *   m = beta1 * m + (1 - beta1) * g
 *   v = beta2 * v + (1 - beta2) * g^2
 *   param -= lr * (m * c1) / (sqrt(v * c2) + eps)                              */
size_t rp_adam_step_f32(size_t n, float *param, const float *grad, float *m, float *v,
                      float lr, float beta1, float beta2, float eps, float weight_decay,
                      int decoupled, float c1, float c2, int check_only);
size_t rp_adam_step_f64(size_t n, double *param, const double *grad, double *m, double *v,
                      double lr, double beta1, double beta2, double eps, double weight_decay,
                      int decoupled, double c1, double c2, int check_only);

/* RMSprop:
 *   ms = rho * ms + (1 - rho) * grad^2
 *   momentum == 0:  param -= lr * grad / (sqrt(ms) + eps)        (mom unused, may be NULL)
 *   otherwise:      mom = momentum * mom + lr * grad / (sqrt(ms) + eps); param -= mom */
size_t rp_rmsprop_step_f32(size_t n, float *param, const float *grad, float *ms, float *mom,
                         float lr, float rho, float momentum, float eps, int check_only);
size_t rp_rmsprop_step_f64(size_t n, double *param, const double *grad, double *ms, double *mom,
                         double lr, double rho, double momentum, double eps, int check_only);

/* Adagrad:
 *   acc += grad^2
 *   param -= lr * grad / (sqrt(acc) + eps)                                     */
size_t rp_adagrad_step_f32(size_t n, float *param, const float *grad, float *acc,
                         float lr, float eps, int check_only);
size_t rp_adagrad_step_f64(size_t n, double *param, const double *grad, double *acc,
                         double lr, double eps, int check_only);

#ifdef __cplusplus
}
#endif
#endif
