/* Optimizer steps: weight decay, momentum and the update in one pass. */
#include "retroprop/optim.h"
#include "retroprop/runtime.h"
#include "act_internal.h"

#include <math.h>

#define SGD_STEP(REAL)                                                                 \
    {                                                                                  \
        const long count = (long)n;                                                    \
        const int nt = n < RP_ELEMENTWISE_PARALLEL_MIN ? 1 : rp_get_num_threads();     \
        (void)nt;                                                                      \
        if (momentum == 0) {                                                           \
            _Pragma("omp parallel for schedule(static) num_threads(nt)")               \
            for (long i = 0; i < count; ++i)                                           \
                param[i] -= lr * (grad[i] + weight_decay * param[i]);                  \
        } else if (nesterov) {                                                         \
            _Pragma("omp parallel for schedule(static) num_threads(nt)")               \
            for (long i = 0; i < count; ++i) {                                         \
                const REAL g = grad[i] + weight_decay * param[i];                      \
                const REAL v = momentum * velocity[i] + g;                             \
                velocity[i] = v;                                                       \
                param[i] -= lr * (g + momentum * v);                                   \
            }                                                                          \
        } else {                                                                       \
            _Pragma("omp parallel for schedule(static) num_threads(nt)")               \
            for (long i = 0; i < count; ++i) {                                         \
                const REAL v = momentum * velocity[i] + grad[i] + weight_decay * param[i]; \
                velocity[i] = v;                                                       \
                param[i] -= lr * v;                                                    \
            }                                                                          \
        }                                                                              \
    }

void rp_sgd_step_f32(size_t n, float *param, const float *grad, float *velocity,
                     float lr, float momentum, int nesterov, float weight_decay)
SGD_STEP(float)

void rp_sgd_step_f64(size_t n, double *param, const double *grad, double *velocity,
                     double lr, double momentum, int nesterov, double weight_decay)
SGD_STEP(double)

/* Adam and AdamW. Every quantity is read and written once per element: the
 * moments and the parameter stay in registers between the three updates. */
#define ADAM_STEP(REAL, SQRT)                                                          \
    {                                                                                  \
        const long count = (long)n;                                                    \
        const int nt = n < RP_ELEMENTWISE_PARALLEL_MIN ? 1 : rp_get_num_threads();     \
        (void)nt;                                                                      \
        /* L2 decay is folded into the gradient; decoupled decay shrinks the weight. */ \
        const REAL l2 = decoupled ? (REAL)0 : weight_decay;                            \
        const REAL shrink = decoupled ? (REAL)1 - lr * weight_decay : (REAL)1;         \
        const REAL one_b1 = (REAL)1 - beta1, one_b2 = (REAL)1 - beta2;                 \
        _Pragma("omp parallel for schedule(static) num_threads(nt)")                   \
        for (long i = 0; i < count; ++i) {                                             \
            const REAL p = param[i];                                                   \
            const REAL g = grad[i] + l2 * p;                                           \
            const REAL mi = beta1 * m[i] + one_b1 * g;                                 \
            const REAL vi = beta2 * v[i] + one_b2 * g * g;                             \
            m[i] = mi;                                                                 \
            v[i] = vi;                                                                 \
            param[i] = p * shrink - lr * (mi * c1) / (SQRT(vi * c2) + eps);            \
        }                                                                              \
    }

void rp_adam_step_f32(size_t n, float *param, const float *grad, float *m, float *v,
                      float lr, float beta1, float beta2, float eps, float weight_decay,
                      int decoupled, float c1, float c2)
ADAM_STEP(float, sqrtf)

void rp_adam_step_f64(size_t n, double *param, const double *grad, double *m, double *v,
                      double lr, double beta1, double beta2, double eps, double weight_decay,
                      int decoupled, double c1, double c2)
ADAM_STEP(double, sqrt)

#define RMSPROP_STEP(REAL, SQRT)                                                       \
    {                                                                                  \
        const long count = (long)n;                                                    \
        const int nt = n < RP_ELEMENTWISE_PARALLEL_MIN ? 1 : rp_get_num_threads();     \
        (void)nt;                                                                      \
        const REAL one_rho = (REAL)1 - rho;                                            \
        if (momentum == 0) {                                                           \
            _Pragma("omp parallel for schedule(static) num_threads(nt)")               \
            for (long i = 0; i < count; ++i) {                                         \
                const REAL g = grad[i];                                                \
                const REAL s = rho * ms[i] + one_rho * g * g;                          \
                ms[i] = s;                                                             \
                param[i] -= lr * g / (SQRT(s) + eps);                                  \
            }                                                                          \
        } else {                                                                       \
            _Pragma("omp parallel for schedule(static) num_threads(nt)")               \
            for (long i = 0; i < count; ++i) {                                         \
                const REAL g = grad[i];                                                \
                const REAL s = rho * ms[i] + one_rho * g * g;                          \
                const REAL b = momentum * mom[i] + lr * g / (SQRT(s) + eps);           \
                ms[i] = s;                                                             \
                mom[i] = b;                                                            \
                param[i] -= b;                                                         \
            }                                                                          \
        }                                                                              \
    }

void rp_rmsprop_step_f32(size_t n, float *param, const float *grad, float *ms, float *mom,
                         float lr, float rho, float momentum, float eps)
RMSPROP_STEP(float, sqrtf)

void rp_rmsprop_step_f64(size_t n, double *param, const double *grad, double *ms, double *mom,
                         double lr, double rho, double momentum, double eps)
RMSPROP_STEP(double, sqrt)

#define ADAGRAD_STEP(REAL, SQRT)                                                       \
    {                                                                                  \
        const long count = (long)n;                                                    \
        const int nt = n < RP_ELEMENTWISE_PARALLEL_MIN ? 1 : rp_get_num_threads();     \
        (void)nt;                                                                      \
        _Pragma("omp parallel for schedule(static) num_threads(nt)")                   \
        for (long i = 0; i < count; ++i) {                                             \
            const REAL g = grad[i];                                                    \
            const REAL a = acc[i] + g * g;                                             \
            acc[i] = a;                                                                \
            param[i] -= lr * g / (SQRT(a) + eps);                                      \
        }                                                                              \
    }

void rp_adagrad_step_f32(size_t n, float *param, const float *grad, float *acc,
                         float lr, float eps)
ADAGRAD_STEP(float, sqrtf)

void rp_adagrad_step_f64(size_t n, double *param, const double *grad, double *acc,
                         double lr, double eps)
ADAGRAD_STEP(double, sqrt)
