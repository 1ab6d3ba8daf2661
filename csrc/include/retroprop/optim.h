/* Optimizer updates: one fused pass per element over the parameter and its state.
 *
 * The core entry point, rp_optimizer_step_f32/_f64, updates MANY tensors
 * (all the parameters of a model) in one call and one parallel region:
 *   RP_OPT_APPLY        write the new values;
 *   RP_OPT_CHECK        write nothing, find the tensors whose new values
 *                       would contain NaN or Inf;
 *   RP_OPT_CHECK_APPLY  check every tensor, then write only if none would be
 *                       non-finite: an all-or-nothing step that needs no copy
 *                       of the weights (a NaN/Inf gradient always fails it).
 * It returns the index of the first tensor that fails the check, or -1 (after
 * RP_OPT_APPLY always -1). When bad_elements is not NULL it receives how many
 * new values would be NaN/Inf over all tensors (0 for RP_OPT_APPLY).
 *
 * The single-tensor functions below are that call with one tensor; their
 * check_only mode returns the count of non-finite new values. */
#ifndef RETROPROP_OPTIM_H
#define RETROPROP_OPTIM_H

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef enum { RP_OPT_SGD = 0, RP_OPT_ADAM = 1, RP_OPT_RMSPROP = 2, RP_OPT_ADAGRAD = 3 } rp_optimizer;
typedef enum { RP_OPT_APPLY = 0, RP_OPT_CHECK = 1, RP_OPT_CHECK_APPLY = 2 } rp_opt_mode;

/* The hyper-parameters of one step; each rule reads only its own fields. */
typedef struct {
    rp_optimizer rule;
    double lr;
    double weight_decay;  /* SGD, Adam (L2 or decoupled) */
    double momentum;      /* SGD, RMSprop */
    int nesterov;         /* SGD */
    double beta1, beta2;  /* Adam */
    double c1, c2;        /* Adam bias corrections 1/(1 - beta1^t), 1/(1 - beta2^t) */
    int decoupled;        /* Adam: 1 for AdamW */
    double rho;           /* RMSprop */
    double eps;           /* Adam, RMSprop, Adagrad */
} rp_opt_config;

/* One parameter: n elements of param, grad and up to two state arrays
 * (SGD: velocity, NULL without momentum; Adam: m, v; RMSprop: ms, mom (NULL
 * without momentum); Adagrad: acc). Element type is that of the call. */
typedef struct {
    size_t n;
    void *param;
    const void *grad;
    void *state0;
    void *state1;
} rp_opt_tensor;

long rp_optimizer_step_f32(const rp_opt_config *cfg, const rp_opt_tensor *tensors, int count,
                           rp_opt_mode mode, size_t *bad_elements);
long rp_optimizer_step_f64(const rp_opt_config *cfg, const rp_opt_tensor *tensors, int count,
                           rp_opt_mode mode, size_t *bad_elements);

/* What an applied SGD step leaves for the next step's check: the largest
 * magnitude of any parameter and of any state value it wrote (doubles, so
 * that a float64 array of three can hold it).
 *
 * rp_optimizer_step_tracked_* is RP_OPT_CHECK_APPLY that uses them. With
 * valid bounds (valid != 0) and an SGD rule it first reads only the
 * gradients: when they are finite and the update of values no larger than
 * the bounds provably gives finite values (every term of its formula at
 * its largest stays below half the largest finite value), it applies
 * without the check, which would read parameters, state and gradients once
 * more; otherwise it checks as RP_OPT_CHECK_APPLY does. Whenever it applies
 * it stores the new bounds (valid = 1; valid = 0 for the other rules). A
 * refused step leaves the bounds as they were, like everything else.
 * bad_elements (or NULL) as for rp_optimizer_step_* (0 when the check was
 * skipped: no value can be bad then).
 * The bounds hold only while nothing else writes the parameters or the
 * state: the caller sets valid = 0 after any other change. */
typedef struct {
    double valid;
    double param_max;
    double state_max;
} rp_opt_bounds;

long rp_optimizer_step_tracked_f32(const rp_opt_config *cfg, const rp_opt_tensor *tensors,
                                   int count, rp_opt_bounds *bounds, size_t *bad_elements);
long rp_optimizer_step_tracked_f64(const rp_opt_config *cfg, const rp_opt_tensor *tensors,
                                   int count, rp_opt_bounds *bounds, size_t *bad_elements);

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
