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
 * in one call per step instead of two per parameter.
 *
 * A tracked SGD step (rp_optimizer_step_tracked_*) replaces the check, which
 * reads parameters, state and gradients, by a scan of the gradients alone
 * whenever the largest magnitudes the previous step wrote prove the update
 * finite; its write records the new largest magnitudes. At batch 128 of a
 * 784-256-128-10 MLP (C harness) the optimizer went from ~59 to ~44 us a
 * step, the write alone taking ~35. */
#include "retroprop/optim.h"
#include "retroprop/runtime.h"
#include "act_internal.h"
#include "finite_bits.h"
#include "team.h"

#include <float.h>
#include <math.h>
#include <stdint.h>
#include <string.h>
#ifdef RETROPROP_HAVE_OPENMP
#include <omp.h>
#endif


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

/* The write of a rule over [begin, end) that also raises *param_max and
 * *state_max to the largest magnitude written (P_NEW, S_NEW: the new
 * parameter and state value): the bounds of rp_optimizer_step_tracked_*.
 * The maxima are taken over the bit patterns with the sign cleared (BITS,
 * the unsigned integer of the element's size), which order like the
 * magnitudes: a float max reduction does not vectorise without giving up
 * NaN semantics (-ffinite-math-only), an integer one does, and this loop
 * scalar took 4x as long as the check and write together. */
typedef void (*tracked_range_fn)(const rp_opt_config *cfg, const rp_opt_tensor *t, size_t begin,
                                 size_t end, double *param_max, double *state_max);

#define MAGNITUDE_BITS(REAL, BITS, VALUE, OUT)                                                \
    BITS OUT;                                                                             \
    {                                                                                     \
        const REAL value_ = (VALUE);                                                      \
        memcpy(&OUT, &value_, sizeof OUT);                                                \
        OUT &= ~((BITS)1 << (8 * sizeof(BITS) - 1));                                      \
    }

#define DEFINE_TRACKED_WITH(NAME, ATTRIBUTES, REAL, BITS, PROLOGUE, RULE, COMMIT, P_NEW,   \
                            S_NEW)                                                        \
    ATTRIBUTES static void NAME(const rp_opt_config *cfg, const rp_opt_tensor *t,          \
                                size_t begin, size_t end, double *param_max,              \
                                double *state_max)                                        \
    {                                                                                     \
        REAL *param = (REAL *)t->param;                                                   \
        const REAL *grad = (const REAL *)t->grad;                                         \
        REAL *s0 = (REAL *)t->state0;                                                     \
        (void)s0;                                                                         \
        PROLOGUE(REAL)                                                                    \
        BITS p_top = 0, s_top = 0;                                                        \
        for (size_t i = begin; i < end; ++i) {                                            \
            RULE                                                                          \
            COMMIT                                                                        \
            MAGNITUDE_BITS(REAL, BITS, P_NEW, p_bits)                                     \
            MAGNITUDE_BITS(REAL, BITS, S_NEW, s_bits)                                     \
            p_top = p_bits > p_top ? p_bits : p_top;                                      \
            s_top = s_bits > s_top ? s_bits : s_top;                                      \
        }                                                                                 \
        REAL p_max, s_max;                                                                \
        memcpy(&p_max, &p_top, sizeof p_max);                                             \
        memcpy(&s_max, &s_top, sizeof s_max);                                             \
        if (p_max > *param_max) *param_max = p_max;                                       \
        if (s_max > *state_max) *state_max = s_max;                                       \
    }

/* The gradients' part of the tracked check: whether grad[begin, end) holds
 * a NaN/Inf (OR_NONFINITE_BITS, as check.c's scan) and its largest
 * magnitude (over the bit patterns, as above). */
typedef void (*grad_scan_fn)(const void *grad, size_t begin, size_t end, double *grad_max,
                             int *nonfinite);

#define DEFINE_GRAD_SCAN_WITH(NAME, ATTRIBUTES, REAL, BITS)                                \
    ATTRIBUTES static void NAME(const void *grad_v, size_t begin, size_t end,              \
                                double *grad_max, int *nonfinite)                         \
    {                                                                                     \
        const REAL *grad = (const REAL *)grad_v;                                          \
        BITS any = 0, top = 0;                                                            \
        for (size_t i = begin; i < end; ++i) {                                            \
            OR_NONFINITE_BITS(REAL, BITS, grad[i], any)                                   \
            MAGNITUDE_BITS(REAL, BITS, grad[i], g_bits)                                   \
            top = g_bits > top ? g_bits : top;                                            \
        }                                                                                 \
        REAL g_max;                                                                       \
        memcpy(&g_max, &top, sizeof g_max);                                               \
        if (any) *nonfinite = 1;                                                          \
        if (g_max > *grad_max) *grad_max = g_max;                                         \
    }

#ifdef OPTIM_HAVE_AVX2
#define DEFINE_TRACKED(NAME, REAL, BITS, PROLOGUE, RULE, COMMIT, P_NEW, S_NEW)            \
    DEFINE_TRACKED_WITH(NAME, , REAL, BITS, PROLOGUE, RULE, COMMIT, P_NEW, S_NEW)         \
    DEFINE_TRACKED_WITH(NAME##_avx2, __attribute__((target("avx2,fma"))), REAL, BITS,      \
                        PROLOGUE, RULE, COMMIT, P_NEW, S_NEW)
DEFINE_GRAD_SCAN_WITH(grad_scan_f32, , float, uint32_t)
DEFINE_GRAD_SCAN_WITH(grad_scan_f64, , double, uint64_t)
DEFINE_GRAD_SCAN_WITH(grad_scan_f32_avx2, __attribute__((target("avx2"))), float, uint32_t)
DEFINE_GRAD_SCAN_WITH(grad_scan_f64_avx2, __attribute__((target("avx2"))), double, uint64_t)
#else
#define DEFINE_TRACKED(NAME, REAL, BITS, PROLOGUE, RULE, COMMIT, P_NEW, S_NEW)            \
    DEFINE_TRACKED_WITH(NAME, , REAL, BITS, PROLOGUE, RULE, COMMIT, P_NEW, S_NEW)
DEFINE_GRAD_SCAN_WITH(grad_scan_f32, , float, uint32_t)
DEFINE_GRAD_SCAN_WITH(grad_scan_f64, , double, uint64_t)
#endif

/* ---- SGD: the three variants are separate rules so each loop is branch-free
 * (s0 = velocity). Each is written once and compiled as a checked rule and
 * as a tracked write. */
#define SGD_PROLOGUE(REAL)                                                                \
    const REAL lr = (REAL)cfg->lr, wd = (REAL)cfg->weight_decay, mu = (REAL)cfg->momentum;  \
    (void)mu;

#define SGD_PLAIN_RULE(REAL) const REAL p_new = param[i] - lr * (grad[i] + wd * param[i]);
#define SGD_PLAIN_COMMIT param[i] = p_new;
#define SGD_MOMENTUM_RULE(REAL)                                                           \
    const REAL v_new = mu * s0[i] + grad[i] + wd * param[i];                              \
    const REAL p_new = param[i] - lr * v_new;
#define SGD_NESTEROV_RULE(REAL)                                                           \
    const REAL g = grad[i] + wd * param[i];                                               \
    const REAL v_new = mu * s0[i] + g;                                                    \
    const REAL p_new = param[i] - lr * (g + mu * v_new);
#define SGD_VELOCITY_COMMIT s0[i] = v_new; param[i] = p_new;

#define SGD_RULES(REAL, BITS, SUFFIX)                                                     \
    DEFINE_RULE_RANGE(sgd_plain_##SUFFIX, REAL, SGD_PROLOGUE, SGD_PLAIN_RULE(REAL),       \
                      SGD_PLAIN_COMMIT, NONFINITE(p_new))                                 \
    DEFINE_RULE_RANGE(sgd_momentum_##SUFFIX, REAL, SGD_PROLOGUE, SGD_MOMENTUM_RULE(REAL), \
                      SGD_VELOCITY_COMMIT, NONFINITE(p_new) | NONFINITE(v_new))           \
    DEFINE_RULE_RANGE(sgd_nesterov_##SUFFIX, REAL, SGD_PROLOGUE, SGD_NESTEROV_RULE(REAL), \
                      SGD_VELOCITY_COMMIT, NONFINITE(p_new) | NONFINITE(v_new))           \
    DEFINE_TRACKED(sgd_plain_tracked_##SUFFIX, REAL, BITS, SGD_PROLOGUE,                  \
                   SGD_PLAIN_RULE(REAL), SGD_PLAIN_COMMIT, p_new, (REAL)0)                \
    DEFINE_TRACKED(sgd_momentum_tracked_##SUFFIX, REAL, BITS, SGD_PROLOGUE,               \
                   SGD_MOMENTUM_RULE(REAL), SGD_VELOCITY_COMMIT, p_new, v_new)            \
    DEFINE_TRACKED(sgd_nesterov_tracked_##SUFFIX, REAL, BITS, SGD_PROLOGUE,               \
                   SGD_NESTEROV_RULE(REAL), SGD_VELOCITY_COMMIT, p_new, v_new)

SGD_RULES(float, uint32_t, f32)
SGD_RULES(double, uint64_t, f64)

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

/* The tracked write of an SGD rule; NULL for the other rules (their steps
 * are always checked in full). */
static tracked_range_fn pick_tracked(const rp_opt_config *cfg, int f64)
{
    const int avx2 = rp_simd_in_use() == RP_SIMD_AVX2;
    (void)avx2;
    if (cfg->rule != RP_OPT_SGD) return NULL;
    if (cfg->momentum == 0) return RULE_FN(sgd_plain_tracked, f64);
    if (cfg->nesterov) return RULE_FN(sgd_nesterov_tracked, f64);
    return RULE_FN(sgd_momentum_tracked, f64);
}

static grad_scan_fn pick_grad_scan(int f64)
{
    const int avx2 = rp_simd_in_use() == RP_SIMD_AVX2;
    (void)avx2;
    return RULE_FN(grad_scan, f64);
}

/* Whether an SGD step provably writes only finite values, given finite
 * gradients of magnitude at most grad_max and parameters and velocities of
 * magnitude at most param_max and state_max: each new value's formula with
 * every term at its largest magnitude (in double) stays at or below limit,
 * half the element type's largest finite value, which leaves far more room
 * than the few roundings of the computation in the element type can use
 * (each multiplies by at most 1 + 2^-24). NaN bounds compare false. */
static int sgd_update_stays_finite(const rp_opt_config *cfg, double grad_max, double param_max,
                                   double state_max, double limit)
{
    const double lr = fabs(cfg->lr), wd = fabs(cfg->weight_decay), mu = fabs(cfg->momentum);
    const double g = grad_max + wd * param_max;   /* |grad + wd * param| */
    double p_bound, v_bound = 0.0;
    if (cfg->momentum == 0) {
        p_bound = param_max + lr * g;
    } else {
        v_bound = mu * state_max + g;
        p_bound = param_max + lr * (cfg->nesterov ? g + mu * v_bound : v_bound);
    }
    return p_bound <= limit && v_bound <= limit;
}

/* ---------------------------------------------------------------- the driver */

/* The passes a step makes over the concatenated elements. */
typedef enum {
    PASS_APPLY,          /* write the new values */
    PASS_CHECK,          /* count the non-finite new values, write nothing */
    PASS_APPLY_TRACKED,  /* write, and raise the maxima of what was written */
    PASS_SCAN_GRADS      /* the gradients' NaN/Inf flag and largest magnitude */
} step_pass;

/* What a step's threads share: its arguments, and what their passes found
 * (a minimum, a sum and maxima, combined under a critical section). */
typedef struct {
    rule_range_fn rule;
    tracked_range_fn tracked;       /* a tracked step (bounds != NULL) */
    grad_scan_fn scan;
    const rp_opt_config *cfg;
    const rp_opt_tensor *tensors;
    int count;
    size_t total;
    rp_opt_mode mode;
    const rp_opt_bounds *bounds;    /* NULL: an untracked step */
    double limit;                   /* half the element type's largest finite value */
    long first_bad;                 /* count: none */
    size_t bad_sum;
    double grad_max, param_max, state_max;
    int grad_nonfinite;
    int applied;
} step_shared;

/* One thread's view of a step: the shared step, the pass, and what its
 * items found. */
typedef struct {
    const step_shared *sh;
    step_pass pass;
    size_t bad;
    long first_bad;
    double param_max, state_max, grad_max;
    int grad_nonfinite;
} step_items_context;

/* The pass over elements [lo, hi) of the concatenated tensors. A check
 * adds to c->bad and lowers c->first_bad to the first tensor with a bad
 * value. */
static void run_slice(step_items_context *c, size_t lo, size_t hi)
{
    const step_shared *sh = c->sh;
    size_t offset = 0;
    for (int i = 0; i < sh->count && offset < hi; ++i) {
        const rp_opt_tensor *t = &sh->tensors[i];
        const size_t begin = lo > offset ? lo - offset : 0;
        const size_t end = hi - offset < t->n ? hi - offset : t->n;
        if (begin < end) {
            if (c->pass == PASS_APPLY_TRACKED) {
                sh->tracked(sh->cfg, t, begin, end, &c->param_max, &c->state_max);
            } else if (c->pass == PASS_SCAN_GRADS) {
                sh->scan(t->grad, begin, end, &c->grad_max, &c->grad_nonfinite);
            } else {
                const size_t bad = sh->rule(sh->cfg, t, begin, end, c->pass == PASS_CHECK);
                if (bad) {
                    c->bad += bad;
                    if (i < c->first_bad) c->first_bad = i;
                }
            }
        }
        offset += t->n;
    }
}

/* Elements per item of the shared loops: a multiple of 16, so two threads
 * rarely write the same cache line, and small enough (16 KiB of float32
 * parameters) for a helper to even out the threads' finishing times. */
#define STEP_CHUNK 4096

/* Items are chunks of STEP_CHUNK elements of the concatenated tensors. */
static void step_items(void *context, int first, int count)
{
    step_items_context *c = (step_items_context *)context;
    const size_t lo = (size_t)first * STEP_CHUNK;
    const size_t end = (size_t)(first + count) * STEP_CHUNK;
    const size_t hi = end < c->sh->total ? end : c->sh->total;
    run_slice(c, lo, hi);
}

/* Adds a thread's findings to the shared ones. */
static void combine(step_shared *sh, const step_items_context *mine)
{
#ifdef RETROPROP_HAVE_OPENMP
#pragma omp critical(rp_optimizer_combine)
#endif
    {
        sh->bad_sum += mine->bad;
        if (mine->first_bad < sh->first_bad) sh->first_bad = mine->first_bad;
        if (mine->grad_max > sh->grad_max) sh->grad_max = mine->grad_max;
        sh->grad_nonfinite |= mine->grad_nonfinite;
        if (mine->param_max > sh->param_max) sh->param_max = mine->param_max;
        if (mine->state_max > sh->state_max) sh->state_max = mine->state_max;
    }
}

/* What thread tid of nt does in a step: check its chunks (modes with a
 * check), wait for the others, and write the chunks when nobody found a
 * non-finite value. Any thread may run any chunk (team.h): the update of
 * an element does not depend on who computes it, and what the passes find
 * is a minimum, a sum or a maximum. Every thread takes the same decisions,
 * from what all found, after a barrier. With nt == 1 it reaches no OpenMP
 * construct, so small models pay for no parallel region.
 * A tracked step with valid bounds first scans the gradients only, and
 * skips the check when sgd_update_stays_finite; its write raises the
 * maxima. */
static void step_slice(step_shared *sh, int tid, int nt, rp_share_queue *queues)
{
    const int chunks = (int)((sh->total + STEP_CHUNK - 1) / STEP_CHUNK);
    step_items_context mine = {.sh = sh, .first_bad = sh->count};
    int checked = sh->mode == RP_OPT_APPLY;
    if (sh->bounds && sh->bounds->valid != 0) {
        mine.pass = PASS_SCAN_GRADS;
        rp_share_loop(queues, tid, nt, chunks, step_items, &mine);
        combine(sh, &mine);
        RP_TEAM_BARRIER(nt);
        checked = !sh->grad_nonfinite &&
                  sgd_update_stays_finite(sh->cfg, sh->grad_max, sh->bounds->param_max,
                                          sh->bounds->state_max, sh->limit);
    }
    if (!checked) {
        mine.pass = PASS_CHECK;
        rp_share_loop(queues, tid, nt, chunks, step_items, &mine);
        if (mine.bad) combine(sh, &mine);
        RP_TEAM_BARRIER(nt);
        if (sh->mode == RP_OPT_CHECK || sh->first_bad != sh->count) return;
    }
    mine.pass = sh->bounds ? PASS_APPLY_TRACKED : PASS_APPLY;
    mine.param_max = mine.state_max = 0.0;
    rp_share_loop(queues, tid, nt, chunks, step_items, &mine);
    if (sh->bounds) combine(sh, &mine);
    if (tid == 0) sh->applied = 1;
}

/* One step over all tensors; bounds: a tracked step (rp_optimizer_step_tracked_*). */
static long optimizer_step(const rp_opt_config *cfg, const rp_opt_tensor *tensors, int count,
                           rp_opt_mode mode, size_t *bad_elements, rp_opt_bounds *bounds, int f64)
{
    if (bad_elements) *bad_elements = 0;
    const rule_range_fn rule = pick_rule(cfg, f64);
    if (!rule || count <= 0) return -1;
    step_shared sh = {.rule = rule, .cfg = cfg, .tensors = tensors, .count = count,
                      .mode = mode, .limit = f64 ? DBL_MAX / 2 : FLT_MAX / 2, .first_bad = count};
    if (bounds) {
        sh.tracked = pick_tracked(cfg, f64);
        if (!sh.tracked) bounds->valid = 0;   /* only SGD steps are tracked */
        else sh.bounds = bounds;
        sh.scan = pick_grad_scan(f64);
    }
    for (int i = 0; i < count; ++i) sh.total += tensors[i].n;
    const int nt = sh.total < RP_ELEMENTWISE_PARALLEL_MIN || rp_in_parallel() ? 1 : rp_get_num_threads();
    if (nt > 1) {
#ifdef RETROPROP_HAVE_OPENMP
        rp_share_queue queues[nt];
        rp_queues_init(queues, nt);
#pragma omp parallel num_threads(nt)
        step_slice(&sh, omp_get_thread_num(), omp_get_num_threads(), queues);
#endif
    } else {
        step_slice(&sh, 0, 1, NULL);
    }
    if (sh.bounds && sh.applied) {
        bounds->valid = 1;
        bounds->param_max = sh.param_max;
        bounds->state_max = sh.state_max;
    }
    if (bad_elements) *bad_elements = sh.bad_sum;
    return sh.first_bad < count ? sh.first_bad : -1;
}

long rp_optimizer_step_f32(const rp_opt_config *cfg, const rp_opt_tensor *tensors, int count,
                           rp_opt_mode mode, size_t *bad_elements)
{
    return optimizer_step(cfg, tensors, count, mode, bad_elements, NULL, 0);
}

long rp_optimizer_step_f64(const rp_opt_config *cfg, const rp_opt_tensor *tensors, int count,
                           rp_opt_mode mode, size_t *bad_elements)
{
    return optimizer_step(cfg, tensors, count, mode, bad_elements, NULL, 1);
}

long rp_optimizer_step_tracked_f32(const rp_opt_config *cfg, const rp_opt_tensor *tensors,
                                   int count, rp_opt_bounds *bounds, size_t *bad_elements)
{
    return optimizer_step(cfg, tensors, count, RP_OPT_CHECK_APPLY, bad_elements, bounds, 0);
}

long rp_optimizer_step_tracked_f64(const rp_opt_config *cfg, const rp_opt_tensor *tensors,
                                   int count, rp_opt_bounds *bounds, size_t *bad_elements)
{
    return optimizer_step(cfg, tensors, count, RP_OPT_CHECK_APPLY, bad_elements, bounds, 1);
}

/* ---------------------------------------------------------------- one tensor */

static size_t step_one(const rp_opt_config *cfg, size_t n, void *param, const void *grad,
                       void *state0, void *state1, int check_only, int f64)
{
    const rp_opt_tensor t = {n, param, grad, state0, state1};
    size_t bad = 0;
    optimizer_step(cfg, &t, 1, check_only ? RP_OPT_CHECK : RP_OPT_APPLY, &bad, NULL, f64);
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
