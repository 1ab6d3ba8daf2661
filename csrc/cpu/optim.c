/* Optimizer steps: weight decay, momentum and the update in one pass.
 *
 * Each optimizer is written once as an update RULE that computes the new
 * values of element i (the parameter and its state) from the old ones, over
 * one range of one tensor. The same rule runs in two modes:
 *   check_only == 0: the new values are written;
 *   check_only != 0: nothing is written, the non-finite new values are
 *                    counted.
 * rp_optimizer_step_* runs a rule over all the tensors of a model in one
 * parallel region: the threads check the concatenated elements in chunks
 * (each its own share first, then helping with the others'), wait for each
 * other, and, when nobody found a non-finite value, write them the same
 * way, mostly the chunks each one checked.
 * So a step that would overflow, or that meets a NaN/Inf gradient, leaves
 * the weights and the optimizer state exactly as they were, without copies,
 * in one call per step instead of two per parameter. */
#include "retroprop/optim.h"
#include "retroprop/runtime.h"
#include "act_internal.h"
#include "team.h"

#include <math.h>
#ifdef RETROPROP_HAVE_OPENMP
#include <omp.h>
#endif

/* x - x is 0 for every finite x and NaN for NaN and +-Inf. Unlike isfinite()
 * this is plain arithmetic and a compare, so the check loops vectorise. */
#define NONFINITE(x) ((x) - (x) != 0)

typedef size_t (*rule_range_fn)(const rp_opt_config *cfg, const rp_opt_tensor *t, size_t begin,
                                size_t end, int check_only);

/* A rule over [begin, end) of one tensor. PROLOGUE turns the config into
 * locals of the element type (a macro taking REAL); RULE declares the new values; COMMIT stores
 * them; BAD is nonzero when one of them is NaN or Inf. The check ORs BAD
 * over the range (a loop that vectorises without widening) and counts the
 * bad values exactly only when there is one. Each rule is compiled twice:
 * for the baseline ISA and, where the compiler can, for AVX2+FMA (picked at
 * run time); these loops are a few flops per element on data that is in
 * cache, so the vector width is what bounds them. */
#define DEFINE_RULE_RANGE_WITH(NAME, ATTRIBUTES, REAL, PROLOGUE, RULE, COMMIT, BAD)        \
    ATTRIBUTES static size_t NAME(const rp_opt_config *cfg, const rp_opt_tensor *t,       \
                                  size_t begin, size_t end, int check_only)               \
    {                                                                                     \
        REAL *param = (REAL *)t->param;                                                   \
        const REAL *grad = (const REAL *)t->grad;                                         \
        REAL *s0 = (REAL *)t->state0;                                                     \
        REAL *s1 = (REAL *)t->state1;                                                     \
        (void)s0; (void)s1;                                                               \
        PROLOGUE(REAL)                                                                    \
        if (check_only) {                                                                 \
            int any = 0;                                                                  \
            for (size_t i = begin; i < end; ++i) {                                        \
                RULE                                                                      \
                any |= (BAD);                                                             \
            }                                                                             \
            if (!any) return 0;                                                           \
            size_t bad = 0;                                                               \
            for (size_t i = begin; i < end; ++i) {                                        \
                RULE                                                                      \
                bad += (BAD) != 0;                                                        \
            }                                                                             \
            return bad;                                                                   \
        }                                                                                 \
        for (size_t i = begin; i < end; ++i) {                                            \
            RULE                                                                          \
            COMMIT                                                                        \
        }                                                                                 \
        return 0;                                                                         \
    }

#if defined(RETROPROP_HAVE_AVX2) && defined(__GNUC__)
#define OPTIM_HAVE_AVX2 1
#define DEFINE_RULE_RANGE(NAME, REAL, PROLOGUE, RULE, COMMIT, BAD)                        \
    DEFINE_RULE_RANGE_WITH(NAME, , REAL, PROLOGUE, RULE, COMMIT, BAD)                     \
    DEFINE_RULE_RANGE_WITH(NAME##_avx2, __attribute__((target("avx2,fma"))), REAL,        \
                           PROLOGUE, RULE, COMMIT, BAD)
#else
#define DEFINE_RULE_RANGE(NAME, REAL, PROLOGUE, RULE, COMMIT, BAD)                        \
    DEFINE_RULE_RANGE_WITH(NAME, , REAL, PROLOGUE, RULE, COMMIT, BAD)
#endif

/* ---- SGD: the three variants are separate rules so each loop is branch-free
 * (s0 = velocity). */
#define SGD_PROLOGUE(REAL)                                                                \
    const REAL lr = (REAL)cfg->lr, wd = (REAL)cfg->weight_decay, mu = (REAL)cfg->momentum;  \
    (void)mu;

#define SGD_RULES(REAL, SUFFIX)                                                           \
    DEFINE_RULE_RANGE(sgd_plain_##SUFFIX, REAL, SGD_PROLOGUE,                       \
        const REAL p_new = param[i] - lr * (grad[i] + wd * param[i]);,                    \
        param[i] = p_new;,                                                                \
        NONFINITE(p_new))                                                                 \
    DEFINE_RULE_RANGE(sgd_momentum_##SUFFIX, REAL, SGD_PROLOGUE,                    \
        const REAL v_new = mu * s0[i] + grad[i] + wd * param[i];                          \
        const REAL p_new = param[i] - lr * v_new;,                                        \
        s0[i] = v_new; param[i] = p_new;,                                                 \
        NONFINITE(p_new) | NONFINITE(v_new))                                              \
    DEFINE_RULE_RANGE(sgd_nesterov_##SUFFIX, REAL, SGD_PROLOGUE,                    \
        const REAL g = grad[i] + wd * param[i];                                           \
        const REAL v_new = mu * s0[i] + g;                                                \
        const REAL p_new = param[i] - lr * (g + mu * v_new);,                             \
        s0[i] = v_new; param[i] = p_new;,                                                 \
        NONFINITE(p_new) | NONFINITE(v_new))

SGD_RULES(float, f32)
SGD_RULES(double, f64)

/* ---- Adam and AdamW (s0 = m, s1 = v). Every quantity is read and written
 * once per element: the moments and the parameter stay in registers. */
#define ADAM_PROLOGUE(REAL)                                                               \
    const REAL lr = (REAL)cfg->lr, wd = (REAL)cfg->weight_decay;                          \
    /* L2 decay is folded into the gradient; decoupled decay shrinks the weight. */       \
    const REAL l2 = cfg->decoupled ? (REAL)0 : wd;                                        \
    const REAL shrink = cfg->decoupled ? (REAL)1 - lr * wd : (REAL)1;                     \
    const REAL b1 = (REAL)cfg->beta1, b2 = (REAL)cfg->beta2;                              \
    const REAL one_b1 = (REAL)1 - b1, one_b2 = (REAL)1 - b2;                              \
    const REAL c1 = (REAL)cfg->c1, c2 = (REAL)cfg->c2, eps = (REAL)cfg->eps;

#define ADAM_RULES(REAL, SUFFIX, SQRT)                                                    \
    DEFINE_RULE_RANGE(adam_##SUFFIX, REAL, ADAM_PROLOGUE,                           \
        const REAL p = param[i];                                                          \
        const REAL g = grad[i] + l2 * p;                                                  \
        const REAL m_new = b1 * s0[i] + one_b1 * g;                                       \
        const REAL v_new = b2 * s1[i] + one_b2 * g * g;                                   \
        const REAL p_new = p * shrink - lr * (m_new * c1) / (SQRT(v_new * c2) + eps);,    \
        s0[i] = m_new; s1[i] = v_new; param[i] = p_new;,                                  \
        NONFINITE(p_new) | NONFINITE(m_new) | NONFINITE(v_new))

ADAM_RULES(float, f32, sqrtf)
ADAM_RULES(double, f64, sqrt)

/* ---- RMSprop, with and without momentum (s0 = ms, s1 = mom). */
#define RMSPROP_PROLOGUE(REAL)                                                            \
    const REAL lr = (REAL)cfg->lr, rho = (REAL)cfg->rho, mu = (REAL)cfg->momentum;        \
    const REAL one_rho = (REAL)1 - rho, eps = (REAL)cfg->eps;                             \
    (void)mu;

#define RMSPROP_RULES(REAL, SUFFIX, SQRT)                                                 \
    DEFINE_RULE_RANGE(rmsprop_plain_##SUFFIX, REAL, RMSPROP_PROLOGUE,               \
        const REAL g = grad[i];                                                           \
        const REAL s_new = rho * s0[i] + one_rho * g * g;                                 \
        const REAL p_new = param[i] - lr * g / (SQRT(s_new) + eps);,                      \
        s0[i] = s_new; param[i] = p_new;,                                                 \
        NONFINITE(p_new) | NONFINITE(s_new))                                              \
    DEFINE_RULE_RANGE(rmsprop_momentum_##SUFFIX, REAL, RMSPROP_PROLOGUE,            \
        const REAL g = grad[i];                                                           \
        const REAL s_new = rho * s0[i] + one_rho * g * g;                                 \
        const REAL b_new = mu * s1[i] + lr * g / (SQRT(s_new) + eps);                     \
        const REAL p_new = param[i] - b_new;,                                             \
        s0[i] = s_new; s1[i] = b_new; param[i] = p_new;,                                  \
        NONFINITE(p_new) | NONFINITE(s_new) | NONFINITE(b_new))

RMSPROP_RULES(float, f32, sqrtf)
RMSPROP_RULES(double, f64, sqrt)

/* ---- Adagrad (s0 = acc). */
#define ADAGRAD_PROLOGUE(REAL) const REAL lr = (REAL)cfg->lr, eps = (REAL)cfg->eps;

#define ADAGRAD_RULES(REAL, SUFFIX, SQRT)                                                 \
    DEFINE_RULE_RANGE(adagrad_##SUFFIX, REAL, ADAGRAD_PROLOGUE,                     \
        const REAL g = grad[i];                                                           \
        const REAL a_new = s0[i] + g * g;                                                 \
        const REAL p_new = param[i] - lr * g / (SQRT(a_new) + eps);,                      \
        s0[i] = a_new; param[i] = p_new;,                                                 \
        NONFINITE(p_new) | NONFINITE(a_new))

ADAGRAD_RULES(float, f32, sqrtf)
ADAGRAD_RULES(double, f64, sqrt)

#ifdef OPTIM_HAVE_AVX2
#define RULE_FN(NAME, F64) (avx2 ? (F64 ? NAME##_f64_avx2 : NAME##_f32_avx2) : (F64 ? NAME##_f64 : NAME##_f32))
#else
#define RULE_FN(NAME, F64) (F64 ? NAME##_f64 : NAME##_f32)
#endif

static rule_range_fn pick_rule(const rp_opt_config *cfg, int f64)
{
    const int avx2 = rp_simd_in_use() == RP_SIMD_AVX2;
    (void)avx2;
    switch (cfg->rule) {
    case RP_OPT_SGD:
        if (cfg->momentum == 0) return RULE_FN(sgd_plain, f64);
        if (cfg->nesterov) return RULE_FN(sgd_nesterov, f64);
        return RULE_FN(sgd_momentum, f64);
    case RP_OPT_ADAM:
        return RULE_FN(adam, f64);
    case RP_OPT_RMSPROP:
        if (cfg->momentum == 0) return RULE_FN(rmsprop_plain, f64);
        return RULE_FN(rmsprop_momentum, f64);
    case RP_OPT_ADAGRAD:
        return RULE_FN(adagrad, f64);
    }
    return NULL;
}

/* ---------------------------------------------------------------- the driver */

/* Run the rule over elements [lo, hi) of the concatenated tensors. In check
 * mode, returns the bad-element count and lowers *first_bad to the first
 * tensor that has one. */
static size_t run_slice(rule_range_fn rule, const rp_opt_config *cfg, const rp_opt_tensor *tensors,
                        int count, size_t lo, size_t hi, int check_only, long *first_bad)
{
    size_t offset = 0, bad_total = 0;
    for (int i = 0; i < count && offset < hi; ++i) {
        const size_t n = tensors[i].n;
        const size_t begin = lo > offset ? lo - offset : 0;
        const size_t end = hi - offset < n ? hi - offset : n;
        if (begin < end) {
            const size_t bad = rule(cfg, &tensors[i], begin, end, check_only);
            if (bad) {
                bad_total += bad;
                if (i < *first_bad) *first_bad = i;
            }
        }
        offset += n;
    }
    return bad_total;
}

/* Elements per item of the shared loops: a multiple of 16, so two threads
 * rarely write the same cache line, and small enough (16 KiB of float32
 * parameters) for a helper to even out the threads' finishing times. */
#define STEP_CHUNK 4096

/* One thread's view of a step: the shared arguments, and what its items
 * found (check mode). */
typedef struct {
    rule_range_fn rule;
    const rp_opt_config *cfg;
    const rp_opt_tensor *tensors;
    int count, check_only;
    size_t total, bad;
    long first_bad;
} step_items_context;

/* Items are chunks of STEP_CHUNK elements of the concatenated tensors. */
static void step_items(void *context, int first, int count)
{
    step_items_context *c = (step_items_context *)context;
    const size_t lo = (size_t)first * STEP_CHUNK;
    const size_t end = (size_t)(first + count) * STEP_CHUNK;
    const size_t hi = end < c->total ? end : c->total;
    c->bad += run_slice(c->rule, c->cfg, c->tensors, c->count, lo, hi, c->check_only,
                        &c->first_bad);
}

/* What thread tid of nt does in a step: check its chunks (modes with a
 * check), wait for the others, and write the chunks when nobody found a
 * non-finite value. Any thread may run any chunk (team.h): the update of
 * an element does not depend on who computes it, and the first bad tensor
 * and the bad count are a minimum and a sum. With nt == 1 it reaches no
 * OpenMP construct, so small models pay for no parallel region. */
static void step_slice(rule_range_fn rule, const rp_opt_config *cfg, const rp_opt_tensor *tensors,
                       int count, size_t total, rp_opt_mode mode, int tid, int nt,
                       rp_share_queue *queues, long *first_bad, size_t *bad_sum)
{
    const int chunks = (int)((total + STEP_CHUNK - 1) / STEP_CHUNK);
    step_items_context mine = {rule, cfg, tensors, count, 1, total, 0, count};
    if (mode != RP_OPT_APPLY) {
        rp_share_loop(queues, tid, nt, chunks, step_items, &mine);
        if (mine.bad) {
#ifdef RETROPROP_HAVE_OPENMP
#pragma omp critical(rp_optimizer_first_bad)
#endif
            {
                *bad_sum += mine.bad;
                if (mine.first_bad < *first_bad) *first_bad = mine.first_bad;
            }
        }
        RP_TEAM_BARRIER(nt);
    }
    if (mode == RP_OPT_APPLY || (mode == RP_OPT_CHECK_APPLY && *first_bad == count)) {
        mine.check_only = 0;
        rp_share_loop(queues, tid, nt, chunks, step_items, &mine);
    }
}

static long optimizer_step(const rp_opt_config *cfg, const rp_opt_tensor *tensors, int count,
                           rp_opt_mode mode, size_t *bad_elements, int f64)
{
    if (bad_elements) *bad_elements = 0;
    const rule_range_fn rule = pick_rule(cfg, f64);
    if (!rule || count <= 0) return -1;
    size_t total = 0;
    for (int i = 0; i < count; ++i) total += tensors[i].n;
    const int nt = total < RP_ELEMENTWISE_PARALLEL_MIN || rp_in_parallel() ? 1 : rp_get_num_threads();
    long first_bad = count;      /* "none" */
    size_t bad_sum = 0;
    if (nt > 1) {
#ifdef RETROPROP_HAVE_OPENMP
        rp_share_queue queues[nt];
        rp_queues_init(queues, nt);
#pragma omp parallel num_threads(nt)
        step_slice(rule, cfg, tensors, count, total, mode, omp_get_thread_num(),
                   omp_get_num_threads(), queues, &first_bad, &bad_sum);
#endif
    } else {
        step_slice(rule, cfg, tensors, count, total, mode, 0, 1, NULL, &first_bad, &bad_sum);
    }
    if (bad_elements) *bad_elements = bad_sum;
    return first_bad < count ? first_bad : -1;
}

long rp_optimizer_step_f32(const rp_opt_config *cfg, const rp_opt_tensor *tensors, int count,
                           rp_opt_mode mode, size_t *bad_elements)
{
    return optimizer_step(cfg, tensors, count, mode, bad_elements, 0);
}

long rp_optimizer_step_f64(const rp_opt_config *cfg, const rp_opt_tensor *tensors, int count,
                           rp_opt_mode mode, size_t *bad_elements)
{
    return optimizer_step(cfg, tensors, count, mode, bad_elements, 1);
}

/* ---------------------------------------------------------------- one tensor */

static size_t step_one(const rp_opt_config *cfg, size_t n, void *param, const void *grad,
                       void *state0, void *state1, int check_only, int f64)
{
    const rp_opt_tensor t = {n, param, grad, state0, state1};
    size_t bad = 0;
    optimizer_step(cfg, &t, 1, check_only ? RP_OPT_CHECK : RP_OPT_APPLY, &bad, f64);
    return bad;
}

#define SGD_ONE(F64)                                                                      \
    {                                                                                     \
        rp_opt_config cfg = {0};                                                          \
        cfg.rule = RP_OPT_SGD; cfg.lr = lr; cfg.momentum = momentum;                      \
        cfg.nesterov = nesterov; cfg.weight_decay = weight_decay;                         \
        return step_one(&cfg, n, param, grad, momentum == 0 ? NULL : velocity, NULL,      \
                        check_only, F64);                                                 \
    }

size_t rp_sgd_step_f32(size_t n, float *param, const float *grad, float *velocity,
                       float lr, float momentum, int nesterov, float weight_decay, int check_only)
SGD_ONE(0)

size_t rp_sgd_step_f64(size_t n, double *param, const double *grad, double *velocity,
                       double lr, double momentum, int nesterov, double weight_decay,
                       int check_only)
SGD_ONE(1)

#define ADAM_ONE(F64)                                                                     \
    {                                                                                     \
        rp_opt_config cfg = {0};                                                          \
        cfg.rule = RP_OPT_ADAM; cfg.lr = lr; cfg.beta1 = beta1; cfg.beta2 = beta2;        \
        cfg.eps = eps; cfg.weight_decay = weight_decay; cfg.decoupled = decoupled;        \
        cfg.c1 = c1; cfg.c2 = c2;                                                         \
        return step_one(&cfg, n, param, grad, m, v, check_only, F64);                     \
    }

size_t rp_adam_step_f32(size_t n, float *param, const float *grad, float *m, float *v,
                        float lr, float beta1, float beta2, float eps, float weight_decay,
                        int decoupled, float c1, float c2, int check_only)
ADAM_ONE(0)

size_t rp_adam_step_f64(size_t n, double *param, const double *grad, double *m, double *v,
                        double lr, double beta1, double beta2, double eps, double weight_decay,
                        int decoupled, double c1, double c2, int check_only)
ADAM_ONE(1)

#define RMSPROP_ONE(F64)                                                                  \
    {                                                                                     \
        rp_opt_config cfg = {0};                                                          \
        cfg.rule = RP_OPT_RMSPROP; cfg.lr = lr; cfg.rho = rho; cfg.momentum = momentum;   \
        cfg.eps = eps;                                                                    \
        return step_one(&cfg, n, param, grad, ms, momentum == 0 ? NULL : mom, check_only, F64); \
    }

size_t rp_rmsprop_step_f32(size_t n, float *param, const float *grad, float *ms, float *mom,
                           float lr, float rho, float momentum, float eps, int check_only)
RMSPROP_ONE(0)

size_t rp_rmsprop_step_f64(size_t n, double *param, const double *grad, double *ms, double *mom,
                           double lr, double rho, double momentum, double eps, int check_only)
RMSPROP_ONE(1)

#define ADAGRAD_ONE(F64)                                                                  \
    {                                                                                     \
        rp_opt_config cfg = {0};                                                          \
        cfg.rule = RP_OPT_ADAGRAD; cfg.lr = lr; cfg.eps = eps;                            \
        return step_one(&cfg, n, param, grad, acc, NULL, check_only, F64);                \
    }

size_t rp_adagrad_step_f32(size_t n, float *param, const float *grad, float *acc,
                           float lr, float eps, int check_only)
ADAGRAD_ONE(0)

size_t rp_adagrad_step_f64(size_t n, double *param, const double *grad, double *acc,
                           double lr, double eps, int check_only)
ADAGRAD_ONE(1)
