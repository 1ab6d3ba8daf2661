/* Optimizer steps: weight decay, momentum and the update in one pass. */
#include "retroprop/optim.h"
#include "retroprop/runtime.h"
#include "act_internal.h"

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
