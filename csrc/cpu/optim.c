/* Optimizer steps: weight decay, momentum and the update in one pass.
 *
 * Each optimizer is written once as an update RULE that computes the new
 * values of element i (the parameter and its state) from the old ones. The
 * same rule runs in two modes:
 *   check_only == 0: the new values are written;
 *   check_only != 0: nothing is written, the non-finite new values are
 *                    counted.
 * A trainer runs the check over every parameter first and commits only
 * when all counts are 0, so a step that would overflow (or that meets a
 * NaN/Inf gradient) leaves the weights and the optimizer state exactly as
 * they were, without keeping copies of them. */
#include "retroprop/optim.h"
#include "retroprop/runtime.h"
#include "act_internal.h"

#include <math.h>

/* The two loops around a rule. RULE declares the new values; COMMIT stores
 * them; NONFINITE is 1 when one of them is NaN or Inf. */
#define RUN_RULE(RULE, COMMIT, NONFINITE)                                             \
    {                                                                                  \
        const long count = (long)n;                                                    \
        const int nt = n < RP_ELEMENTWISE_PARALLEL_MIN ? 1 : rp_get_num_threads();     \
        (void)nt;                                                                      \
        size_t bad = 0;                                                                \
        if (check_only) {                                                              \
            _Pragma("omp parallel for schedule(static) num_threads(nt) reduction(+:bad)") \
            for (long i = 0; i < count; ++i) {                                         \
                RULE                                                                   \
                bad += (NONFINITE);                                                    \
            }                                                                          \
        } else {                                                                       \
            _Pragma("omp parallel for schedule(static) num_threads(nt)")               \
            for (long i = 0; i < count; ++i) {                                         \
                RULE                                                                   \
                COMMIT                                                                 \
            }                                                                          \
        }                                                                              \
        return bad;                                                                    \
    }

/* ---- SGD: the three variants are separate rules so each loop is branch-free. */
#define SGD_STEP(REAL)                                                                 \
    {                                                                                  \
        if (momentum == 0) {                                                           \
            RUN_RULE(const REAL p_new = param[i] - lr * (grad[i] + weight_decay * param[i]);, \
                     param[i] = p_new;,                                                \
                     !isfinite(p_new))                                                 \
        } else if (nesterov) {                                                         \
            RUN_RULE(const REAL g = grad[i] + weight_decay * param[i];                 \
                     const REAL v_new = momentum * velocity[i] + g;                    \
                     const REAL p_new = param[i] - lr * (g + momentum * v_new);,       \
                     velocity[i] = v_new; param[i] = p_new;,                           \
                     !isfinite(p_new) | !isfinite(v_new))                              \
        } else {                                                                       \
            RUN_RULE(const REAL v_new = momentum * velocity[i] + grad[i] + weight_decay * param[i]; \
                     const REAL p_new = param[i] - lr * v_new;,                        \
                     velocity[i] = v_new; param[i] = p_new;,                           \
                     !isfinite(p_new) | !isfinite(v_new))                              \
        }                                                                              \
    }

size_t rp_sgd_step_f32(size_t n, float *param, const float *grad, float *velocity,
                       float lr, float momentum, int nesterov, float weight_decay, int check_only)
SGD_STEP(float)

size_t rp_sgd_step_f64(size_t n, double *param, const double *grad, double *velocity,
                       double lr, double momentum, int nesterov, double weight_decay,
                       int check_only)
SGD_STEP(double)

/* ---- Adam and AdamW. Every quantity is read and written once per element:
 * the moments and the parameter stay in registers between the updates. */
#define ADAM_STEP(REAL, SQRT)                                                          \
    {                                                                                  \
        /* L2 decay is folded into the gradient; decoupled decay shrinks the weight. */ \
        const REAL l2 = decoupled ? (REAL)0 : weight_decay;                            \
        const REAL shrink = decoupled ? (REAL)1 - lr * weight_decay : (REAL)1;         \
        const REAL one_b1 = (REAL)1 - beta1, one_b2 = (REAL)1 - beta2;                 \
        RUN_RULE(const REAL p = param[i];                                              \
                 const REAL g = grad[i] + l2 * p;                                      \
                 const REAL m_new = beta1 * m[i] + one_b1 * g;                         \
                 const REAL v_new = beta2 * v[i] + one_b2 * g * g;                     \
                 const REAL p_new = p * shrink - lr * (m_new * c1) / (SQRT(v_new * c2) + eps);, \
                 m[i] = m_new; v[i] = v_new; param[i] = p_new;,                        \
                 !isfinite(p_new) | !isfinite(m_new) | !isfinite(v_new))               \
    }

size_t rp_adam_step_f32(size_t n, float *param, const float *grad, float *m, float *v,
                        float lr, float beta1, float beta2, float eps, float weight_decay,
                        int decoupled, float c1, float c2, int check_only)
ADAM_STEP(float, sqrtf)

size_t rp_adam_step_f64(size_t n, double *param, const double *grad, double *m, double *v,
                        double lr, double beta1, double beta2, double eps, double weight_decay,
                        int decoupled, double c1, double c2, int check_only)
ADAM_STEP(double, sqrt)

/* ---- RMSprop, with and without momentum. */
#define RMSPROP_STEP(REAL, SQRT)                                                       \
    {                                                                                  \
        const REAL one_rho = (REAL)1 - rho;                                            \
        if (momentum == 0) {                                                           \
            RUN_RULE(const REAL g = grad[i];                                           \
                     const REAL s_new = rho * ms[i] + one_rho * g * g;                 \
                     const REAL p_new = param[i] - lr * g / (SQRT(s_new) + eps);,      \
                     ms[i] = s_new; param[i] = p_new;,                                 \
                     !isfinite(p_new) | !isfinite(s_new))                              \
        } else {                                                                       \
            RUN_RULE(const REAL g = grad[i];                                           \
                     const REAL s_new = rho * ms[i] + one_rho * g * g;                 \
                     const REAL b_new = momentum * mom[i] + lr * g / (SQRT(s_new) + eps); \
                     const REAL p_new = param[i] - b_new;,                             \
                     ms[i] = s_new; mom[i] = b_new; param[i] = p_new;,                 \
                     !isfinite(p_new) | !isfinite(s_new) | !isfinite(b_new))           \
        }                                                                              \
    }

size_t rp_rmsprop_step_f32(size_t n, float *param, const float *grad, float *ms, float *mom,
                           float lr, float rho, float momentum, float eps, int check_only)
RMSPROP_STEP(float, sqrtf)

size_t rp_rmsprop_step_f64(size_t n, double *param, const double *grad, double *ms, double *mom,
                           double lr, double rho, double momentum, double eps, int check_only)
RMSPROP_STEP(double, sqrt)

/* ---- Adagrad. */
#define ADAGRAD_STEP(REAL, SQRT)                                                       \
    RUN_RULE(const REAL g = grad[i];                                                   \
             const REAL a_new = acc[i] + g * g;                                        \
             const REAL p_new = param[i] - lr * g / (SQRT(a_new) + eps);,              \
             acc[i] = a_new; param[i] = p_new;,                                        \
             !isfinite(p_new) | !isfinite(a_new))

size_t rp_adagrad_step_f32(size_t n, float *param, const float *grad, float *acc,
                           float lr, float eps, int check_only)
ADAGRAD_STEP(float, sqrtf)

size_t rp_adagrad_step_f64(size_t n, double *param, const double *grad, double *acc,
                           double lr, double eps, int check_only)
ADAGRAD_STEP(double, sqrt)
