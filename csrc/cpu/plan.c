/* Step programs (retroprop/plan.h): the records of a planned step, run in
 * order, each the kernel call the layer-by-layer computation makes. */
#include <math.h>
#include <stdint.h>
#include "retroprop/act.h"
#include "retroprop/conv.h"
#include "retroprop/dense.h"
#include "retroprop/loss.h"
#include "retroprop/optim.h"
#include "retroprop/plan.h"
#include "retroprop/pool.h"
#include "retroprop/rows.h"
#include "retroprop/runtime.h"
#include "loss_internal.h"
#ifdef RETROPROP_HAVE_OPENMP
#include <omp.h>
#endif

/* NumPy's bit generator interface (numpy/random/bitgen.h, stable since
 * NumPy 1.17): the Dropout layer's generator, drawn from exactly as
 * Generator.random draws, one next_double per element in C order. */
typedef struct {
    void *state;
    uint64_t (*next_uint64)(void *state);
    uint32_t (*next_uint32)(void *state);
    double (*next_double)(void *state);
    uint64_t (*next_raw)(void *state);
} rp_numpy_bitgen;

/* Below this many elements an elementwise record runs on one thread. */
#define RP_PLAN_PARALLEL_MIN 32768

/* NumPy's PCG64 (numpy/random/src/pcg64/pcg64.h, XSL-RR output, the default
 * 128-bit multiplier), for the Dropout masks of a PCG64 generator: the same
 * stream as its next_double, a few times faster inline, and split over
 * threads by jumping ahead. The binding checks this layout against NumPy's
 * own draws before a program uses it (rp_pcg64_uniform). */
#if defined(__SIZEOF_INT128__)
typedef unsigned __int128 rp_u128;
typedef struct {
    rp_u128 state;
    rp_u128 inc;
} rp_pcg64_random;
typedef struct {
    rp_pcg64_random *pcg;   /* pcg64_state: the generator's state ... */
    int has_uint32;         /* ... and its buffered 32-bit half (not used here) */
    uint32_t uinteger;
} rp_pcg64_state;

#define RP_PCG64_MULT (((rp_u128)2549297995355413924ULL << 64) | 4865540595714422341ULL)

static inline double pcg64_next_double(rp_u128 *state, rp_u128 inc)
{
    *state = *state * RP_PCG64_MULT + inc;
    const uint64_t x = (uint64_t)(*state >> 64) ^ (uint64_t)*state;
    const unsigned rot = (unsigned)(*state >> 122);
    const uint64_t out = (x >> rot) | (x << ((64 - rot) & 63));
    return (double)(int64_t)(out >> 11) * (1.0 / 9007199254740992.0);
}

/* The state after `delta` more draws (PCG's jump-ahead, O(log delta)). */
static rp_u128 pcg64_advance(rp_u128 state, rp_u128 inc, uint64_t delta)
{
    rp_u128 mult = RP_PCG64_MULT, plus = inc, acc_mult = 1, acc_plus = 0;
    while (delta > 0) {
        if (delta & 1) {
            acc_mult *= mult;
            acc_plus = acc_plus * mult + plus;
        }
        plus = (mult + 1) * plus;
        mult *= mult;
        delta >>= 1;
    }
    return acc_mult * state + acc_plus;
}

void rp_pcg64_uniform(void *pcg64_state, long n, double *out)
{
    rp_pcg64_random *g = ((rp_pcg64_state *)pcg64_state)->pcg;
    for (long j = 0; j < n; ++j) out[j] = pcg64_next_double(&g->state, g->inc);
}
#define RP_HAVE_PCG64 1
#else
void rp_pcg64_uniform(void *pcg64_state, long n, double *out)
{
    (void)pcg64_state;
    for (long j = 0; j < n; ++j) out[j] = -1.0;   /* never equal: the binding falls back */
}
#endif

/* The index of the first largest value of row[0..c) (the first NaN, if
 * any, as numpy.argmax). */
#define DEFINE_ARGMAX(SUFFIX, REAL)                                                           \
    static long argmax_##SUFFIX(const REAL *row, long c)                                      \
    {                                                                                         \
        long best = 0;                                                                        \
        if (row[0] != row[0]) return 0;                                                       \
        for (long j = 1; j < c; ++j) {                                                        \
            if (row[j] != row[j]) return j;                                                   \
            if (row[j] > row[best]) best = j;                                                 \
        }                                                                                     \
        return best;                                                                          \
    }

DEFINE_ARGMAX(f32, float)
DEFINE_ARGMAX(f64, double)

/* The records of [i, i + count) run on the calling thread while the rest of
 * the team copies the gather's rows (the next batch, copied mostly while a
 * core would otherwise wait for the small top layer).
 * Used only when the gather would run on several threads (a batch of 64
 * KiB or more) and the records would run on one anyway (the caller's
 * check); the records' kernels see themselves inside a parallel region and
 * run on the calling thread, which changes no result. */
typedef int (*run_fn)(const rp_record *, int, int, void *const *, rp_program_state *, int);

static int run_overlapped(run_fn run, const rp_record *records, int i, int count,
                          void *const *ptrs, rp_program_state *st)
{
    const rp_rows_gather *jobs = st->gather;
    const int n_jobs = st->gathered ? 0 : st->n_gather;
    int next = i + count;
#ifdef RETROPROP_HAVE_OPENMP
    int nt = 1;
    for (int j = 0; j < n_jobs; ++j) {
        const int t = jobs[j].count > 0 ? rp_gather_threads(jobs[j].row_bytes, jobs[j].count) : 1;
        if (t > nt) nt = t;
    }
    if (nt > 1) {
        long next_rows[RP_PROGRAM_MAX_GATHERS] = {0};
#pragma omp parallel num_threads(nt)
        {
            if (omp_get_thread_num() == 0) next = run(records, i, i + count, ptrs, st, 0);
            for (int j = 0; j < n_jobs; ++j) rp_gather_rows_claimed(&jobs[j], &next_rows[j]);
        }
        st->gathered = 1;
        return next;
    }
#endif
    (void)n_jobs;
    return run(records, i, i + count, ptrs, st, 0);
}

#define P(idx) ((idx) < 0 ? NULL : ptrs[(idx)])

#define DEFINE_RUN(SUFFIX, REAL)                                                               \
    DEFINE_PENALTY(SUFFIX, REAL)                                                               \
    DEFINE_DROPOUT(SUFFIX, REAL)                                                               \
    int rp_program_run_##SUFFIX(const rp_record *records, int begin, int end,                  \
                                void *const *ptrs, rp_program_state *st, int finish)           \
    {                                                                                          \
        int i = begin;                                                                         \
        while (i < end && st->status == RP_PROGRAM_OK) {                                       \
            const rp_record *r = &records[i];                                                  \
            const int *a = r->a;                                                               \
            switch (r->kind) {                                                                 \
            case RP_REC_DENSE_FWD:                                                             \
                rp_dense_forward_##SUFFIX((int)r->n, (int)r->m, (int)r->k, (const REAL *)P(a[0]), \
                                          (const REAL *)P(a[1]), (const REAL *)P(a[2]),        \
                                          (rp_act)r->act, r->p0, (REAL *)P(a[3]));              \
                break;                                                                         \
            case RP_REC_DENSE_SOFTMAX_FWD:                                                     \
                rp_dense_forward_softmax_##SUFFIX((int)r->n, (int)r->m, (int)r->k,             \
                                                  (const REAL *)P(a[0]), (const REAL *)P(a[1]), \
                                                  (const REAL *)P(a[2]), (REAL *)P(a[3]),      \
                                                  (REAL *)P(a[4]));                            \
                break;                                                                         \
            case RP_REC_DENSE_BWD:                                                             \
                rp_dense_backward_##SUFFIX((int)r->n, (int)r->m, (int)r->k, (const REAL *)P(a[0]), \
                                           (const REAL *)P(a[1]), (const REAL *)P(a[2]),       \
                                           (const REAL *)P(a[3]), (rp_act)r->act, r->p0,       \
                                           (REAL *)P(a[4]), (REAL *)P(a[5]), (REAL *)P(a[6]),  \
                                           (REAL *)P(a[7]));                                   \
                break;                                                                         \
            case RP_REC_SOFTMAX_XENT: {                                                        \
                REAL *grad = (REAL *)P(a[3]);                                                  \
                const double value = rp_softmax_xent_##SUFFIX(                                 \
                    (int)r->n, (int)r->k, (const REAL *)P(a[0]), (const int64_t *)P(a[1]),     \
                    (const REAL *)P(a[2]), grad);                                              \
                if (r->p0 != 1.0) {                                                            \
                    const REAL w = (REAL)r->p0;                                                \
                    const long count = r->n * r->k;                                            \
                    for (long j = 0; j < count; ++j) grad[j] *= w;                             \
                }                                                                              \
                st->loss += r->p0 * value;                                                     \
                if (st->losses) st->losses[r->m] = value;                                      \
                break;                                                                         \
            }                                                                                  \
            case RP_REC_ACT_FWD:                                                               \
                rp_act_forward_##SUFFIX((rp_act)r->act, r->p0, (size_t)r->n,                   \
                                        (const REAL *)P(a[0]), (REAL *)P(a[1]));               \
                break;                                                                         \
            case RP_REC_ACT_BWD:                                                               \
                rp_act_backward_##SUFFIX((rp_act)r->act, r->p0, (size_t)r->n,                  \
                                         (const REAL *)P(a[0]), (const REAL *)P(a[1]),         \
                                         (const REAL *)P(a[2]), (REAL *)P(a[3]));              \
                break;                                                                         \
            case RP_REC_DROPOUT_FWD:                                                           \
                dropout_##SUFFIX(r, (const REAL *)P(a[0]), (REAL *)P(a[1]), (REAL *)P(a[2]),   \
                                 P(a[3]));                                                     \
                break;                                                                         \
            case RP_REC_MUL: {                                                                 \
                const REAL *x = (const REAL *)P(a[0]), *m = (const REAL *)P(a[1]);             \
                REAL *y = (REAL *)P(a[2]);                                                     \
                const long n = r->n;                                                           \
                _Pragma("omp parallel for if (n >= RP_PLAN_PARALLEL_MIN && !rp_in_parallel())") \
                for (long j = 0; j < n; ++j) y[j] = x[j] * m[j];                               \
                break;                                                                         \
            }                                                                                  \
            case RP_REC_ADD: {                                                                 \
                const REAL *x0 = (const REAL *)P(a[0]), *x1 = (const REAL *)P(a[1]);           \
                REAL *y = (REAL *)P(a[2]);                                                     \
                const long n = r->n;                                                           \
                _Pragma("omp parallel for if (n >= RP_PLAN_PARALLEL_MIN && !rp_in_parallel())") \
                for (long j = 0; j < n; ++j) y[j] = x0[j] + x1[j];                             \
                break;                                                                         \
            }                                                                                  \
            case RP_REC_COPY: {                                                                \
                const REAL *x = (const REAL *)P(a[0]);                                         \
                REAL *y = (REAL *)P(a[1]);                                                     \
                for (long j = 0; j < r->n; ++j) y[j] = x[j];                                   \
                break;                                                                         \
            }                                                                                  \
            case RP_REC_COLS_IN: {                                                             \
                const REAL *x = (const REAL *)P(a[0]);                                         \
                REAL *y = (REAL *)P(a[1]);                                                     \
                for (long row = 0; row < r->n; ++row)                                          \
                    for (long j = 0; j < r->m; ++j) y[row * r->s + r->k + j] = x[row * r->m + j]; \
                break;                                                                         \
            }                                                                                  \
            case RP_REC_COLS_OUT: {                                                            \
                const REAL *x = (const REAL *)P(a[0]);                                         \
                REAL *y = (REAL *)P(a[1]);                                                     \
                for (long row = 0; row < r->n; ++row)                                          \
                    for (long j = 0; j < r->m; ++j) y[row * r->m + j] = x[row * r->s + r->k + j]; \
                break;                                                                         \
            }                                                                                  \
            case RP_REC_CONV_FWD:                                                              \
                rp_conv2d_forward_##SUFFIX(&r->conv, (const REAL *)P(a[0]), (const REAL *)P(a[1]), \
                                           (const REAL *)P(a[2]), (rp_act)r->act, r->chunk,    \
                                           (REAL *)P(a[3]), (REAL *)P(a[4]));                  \
                break;                                                                         \
            case RP_REC_CONV_BWD:                                                              \
                rp_conv2d_backward_##SUFFIX(&r->conv, (const REAL *)P(a[0]),                   \
                                            (const REAL *)P(a[1]), (const REAL *)P(a[2]),      \
                                            (const REAL *)P(a[3]), (rp_act)r->act, r->chunk,   \
                                            (REAL *)P(a[4]), (REAL *)P(a[5]), (REAL *)P(a[6]), \
                                            (REAL *)P(a[7]), (REAL *)P(a[8]));                 \
                break;                                                                         \
            case RP_REC_MAXPOOL_FWD:                                                           \
                rp_maxpool2d_forward_##SUFFIX(&r->pool, (const REAL *)P(a[0]), (REAL *)P(a[1]), \
                                              (int32_t *)P(a[2]));                             \
                break;                                                                         \
            case RP_REC_MAXPOOL_BWD:                                                           \
                /* the positions are the forward's own: always in range */                     \
                (void)rp_maxpool2d_backward_##SUFFIX(&r->pool, (const int32_t *)P(a[0]),       \
                                                     (const REAL *)P(a[1]), (REAL *)P(a[2]));  \
                break;                                                                         \
            case RP_REC_AVGPOOL_FWD:                                                           \
                rp_avgpool2d_forward_##SUFFIX(&r->pool, (const REAL *)P(a[0]), (REAL *)P(a[1])); \
                break;                                                                         \
            case RP_REC_AVGPOOL_BWD:                                                           \
                rp_avgpool2d_backward_##SUFFIX(&r->pool, (const REAL *)P(a[0]), (REAL *)P(a[1])); \
                break;                                                                         \
            case RP_REC_PENALTY:                                                               \
                st->loss += penalty_##SUFFIX(r->n, (const REAL *)P(a[0]), (REAL *)P(a[1]),     \
                                             r->p0, r->p1);                                    \
                break;                                                                         \
            case RP_REC_CHECK_LOSS:                                                            \
                if (!isfinite(st->loss)) st->status = RP_PROGRAM_LOSS_NONFINITE;               \
                break;                                                                         \
            case RP_REC_OPTIMIZER:                                                             \
                if (st->bounds && st->mode == RP_OPT_CHECK_APPLY) {                            \
                    st->first_bad = rp_optimizer_step_tracked_##SUFFIX(                        \
                        &st->opt, st->tensors, st->n_tensors, st->bounds, NULL);               \
                } else {                                                                       \
                    if (st->bounds) st->bounds->valid = 0;                                     \
                    st->first_bad = rp_optimizer_step_##SUFFIX(&st->opt, st->tensors,          \
                                                               st->n_tensors, st->mode, NULL); \
                }                                                                              \
                if (st->first_bad >= 0) st->status = RP_PROGRAM_STEP_REFUSED;                  \
                break;                                                                         \
            case RP_REC_ACCURACY: {                                                            \
                const REAL *y = (const REAL *)P(a[0]);                                         \
                const int64_t *labels = (const int64_t *)P(a[1]);                              \
                const REAL *targets = (const REAL *)P(a[2]);                                   \
                long correct = 0;                                                              \
                for (long row = 0; row < r->n; ++row) {                                        \
                    const long want = labels ? (long)labels[row]                               \
                                             : argmax_##SUFFIX(targets + row * r->k, r->k);    \
                    correct += argmax_##SUFFIX(y + row * r->k, r->k) == want;                  \
                }                                                                              \
                if (st->correct) st->correct[r->m] = correct;                                  \
                break;                                                                         \
            }                                                                                  \
            case RP_REC_OVERLAP_GATHER: {                                                      \
                const int count = i + 1 + r->n <= end ? (int)r->n : end - i - 1;               \
                i = run_overlapped(rp_program_run_##SUFFIX, records, i + 1, count, ptrs, st);  \
                continue;                                                                      \
            }                                                                                  \
            }                                                                                  \
            ++i;                                                                               \
        }                                                                                      \
        if (finish && st->gather && !st->gathered) {                                           \
            for (int j = 0; j < st->n_gather; ++j) {                                           \
                const rp_rows_gather *job = &st->gather[j];                                    \
                rp_gather_rows(job->row_bytes, job->n_rows, job->x, job->count, job->index,    \
                               job->out);                                                      \
            }                                                                                  \
            st->gathered = 1;                                                                  \
        }                                                                                      \
        return i;                                                                              \
    }

/* l1 sum|w| + l2 sum w^2 (in double), and g += l1 sign(w) + 2 l2 w in the
 * element type, term by term as regularizers.L1L2.gradient computes it
 * (zeros, + l1 sign(w) when l1, + (2 l2) w when l2; NaN's sign is NaN). The
 * sums are taken over at most RP_PENALTY_BLOCKS fixed blocks, added in
 * order, so the value does not depend on the thread count. */
#define RP_PENALTY_BLOCKS 64
#define RP_PENALTY_BLOCK_MIN 8192

#define DEFINE_PENALTY(SUFFIX, REAL)                                                           \
    /* the common case, L2 alone: four independent sums so that the loop is   \
     * not one long chain of dependent additions */                           \
    static void penalty_l2_block_##SUFFIX(long lo, long hi, const REAL *w, REAL *g, double l2,  \
                                          double *sq_sum)                                      \
    {                                                                                          \
        double q0 = 0.0, q1 = 0.0, q2 = 0.0, q3 = 0.0;                                         \
        const REAL c2 = (REAL)(2.0 * l2);                                                      \
        long j = lo;                                                                           \
        for (; j + 4 <= hi; j += 4) {                                                          \
            const REAL v0 = w[j], v1 = w[j + 1], v2 = w[j + 2], v3 = w[j + 3];                 \
            q0 += (double)(v0 * v0);                                                           \
            q1 += (double)(v1 * v1);                                                           \
            q2 += (double)(v2 * v2);                                                           \
            q3 += (double)(v3 * v3);                                                           \
            if (g) {                                                                           \
                g[j] += (REAL)0 + c2 * v0;                                                     \
                g[j + 1] += (REAL)0 + c2 * v1;                                                 \
                g[j + 2] += (REAL)0 + c2 * v2;                                                 \
                g[j + 3] += (REAL)0 + c2 * v3;                                                 \
            }                                                                                  \
        }                                                                                      \
        for (; j < hi; ++j) {                                                                  \
            q0 += (double)(w[j] * w[j]);                                                       \
            if (g) g[j] += (REAL)0 + c2 * w[j];                                                \
        }                                                                                      \
        *sq_sum = (q0 + q1) + (q2 + q3);                                                       \
    }                                                                                          \
                                                                                               \
    static void penalty_block_##SUFFIX(long lo, long hi, const REAL *w, REAL *g, double l1,     \
                                       double l2, double *abs_sum, double *sq_sum)             \
    {                                                                                          \
        if (l1 == 0.0) {                                                                       \
            *abs_sum = 0.0;                                                                    \
            penalty_l2_block_##SUFFIX(lo, hi, w, g, l2, sq_sum);                               \
            return;                                                                            \
        }                                                                                      \
        double a = 0.0, q = 0.0;                                                               \
        const REAL c1 = (REAL)l1, c2 = (REAL)(2.0 * l2);                                       \
        for (long j = lo; j < hi; ++j) {                                                       \
            const REAL v = w[j];                                                               \
            REAL add = (REAL)0;                                                                \
            const REAL sign = v != v ? v : (REAL)((v > 0) - (v < 0));                           \
            a += (double)(v < 0 ? -v : v);                                                     \
            add += c1 * sign;                                                                  \
            if (l2 != 0.0) {                                                                   \
                q += (double)(v * v);                                                          \
                add += c2 * v;                                                                 \
            }                                                                                  \
            if (g) g[j] += add;                                                                \
        }                                                                                      \
        *abs_sum = a;                                                                          \
        *sq_sum = q;                                                                           \
    }                                                                                          \
                                                                                               \
    static double penalty_##SUFFIX(long n, const REAL *w, REAL *g, double l1, double l2)       \
    {                                                                                          \
        double abs_sums[RP_PENALTY_BLOCKS], sq_sums[RP_PENALTY_BLOCKS];                        \
        long block = (n + RP_PENALTY_BLOCKS - 1) / RP_PENALTY_BLOCKS;                          \
        if (block < RP_PENALTY_BLOCK_MIN) block = RP_PENALTY_BLOCK_MIN;                        \
        const long blocks = n > 0 ? (n + block - 1) / block : 0;                               \
        const int nt = blocks > 1 && !rp_in_parallel() ? rp_get_num_threads() : 1;             \
        _Pragma("omp parallel for schedule(static) num_threads(nt) if (nt > 1)")               \
        for (long b = 0; b < blocks; ++b) {                                                    \
            const long lo = b * block, hi = lo + block < n ? lo + block : n;                   \
            penalty_block_##SUFFIX(lo, hi, w, g, l1, l2, &abs_sums[b], &sq_sums[b]);           \
        }                                                                                      \
        double abs_sum = 0.0, sq_sum = 0.0;                                                    \
        for (long b = 0; b < blocks; ++b) {                                                    \
            abs_sum += abs_sums[b];                                                            \
            sq_sum += sq_sums[b];                                                              \
        }                                                                                      \
        return l1 * abs_sum + l2 * sq_sum;                                                     \
    }

/* mask = u >= rate ? scale : 0 and y = x * mask, u drawn per element in C
 * order: with k == 1 from a PCG64 state inline (its stream split over
 * threads by jumping ahead, then the state left n draws on), else from the
 * bit generator's next_double. */
#ifdef RP_HAVE_PCG64
/* Each thread's share is drawn as RP_PCG64_LANES interleaved streams (each
 * jumped ahead to its own stretch of the share): the LCG's 128-bit multiply
 * is a long chain of dependent instructions, and independent chains run
 * side by side. Every element still gets the draw of its position. */
/* Whether the draw of a state (XSL-RR output u = (out >> 11) / 2^53, as
 * next_double returns it) is >= rate: as integers, out >> 11 >= threshold
 * with threshold = ceil(rate 2^53) (exact: u is a multiple of 2^-53 below
 * 1), a compare the compiler does without a branch. */
static inline int pcg64_keeps(rp_u128 state, uint64_t threshold)
{
    const uint64_t x = (uint64_t)(state >> 64) ^ (uint64_t)state;
    const unsigned rot = (unsigned)(state >> 122);
    const uint64_t out = (x >> rot) | (x << ((64 - rot) & 63));
    return (out >> 11) >= threshold;
}

/* Elements [lo, hi) (one thread's share), element j taking the draw that
 * leaves the generator j + 1 draws after `start`. Four interleaved chains:
 * chain l draws positions lo + l, lo + l + 4, ..., each stepping four draws
 * at once (s M^4 + inc (1 + M + M^2 + M^3)), so four independent 128-bit
 * multiplies run side by side; the mask is selected without a branch (a
 * drop rate's draws are unpredictable). Arguments by value: the states stay
 * in registers. */
#define DEFINE_DROPOUT_SHARE(SUFFIX, REAL)                                                     \
    static void dropout_share_##SUFFIX(long lo, long hi, rp_u128 start, rp_u128 inc,          \
                                       double rate, REAL scale, const REAL *restrict x,        \
                                       REAL *restrict y, REAL *restrict mask)                  \
    {                                                                                          \
        const uint64_t threshold = (uint64_t)ceil(rate * 9007199254740992.0);                 \
        const rp_u128 m2 = RP_PCG64_MULT * RP_PCG64_MULT, c2 = inc * (RP_PCG64_MULT + 1);      \
        const rp_u128 m4 = m2 * m2, c4 = c2 * m2 + c2;                                         \
        rp_u128 s[4];                                                                          \
        s[0] = pcg64_advance(start, inc, (uint64_t)lo) * RP_PCG64_MULT + inc;                  \
        for (int l = 1; l < 4; ++l) s[l] = s[l - 1] * RP_PCG64_MULT + inc;                     \
        rp_u128 s0 = s[0], s1 = s[1], s2 = s[2], s3 = s[3];                                    \
        long j = lo;                                                                           \
        for (; j + 4 <= hi; j += 4) {                                                          \
            const REAL k0 = (REAL)pcg64_keeps(s0, threshold) * scale;                      \
            const REAL k1 = (REAL)pcg64_keeps(s1, threshold) * scale;                      \
            const REAL k2 = (REAL)pcg64_keeps(s2, threshold) * scale;                      \
            const REAL k3 = (REAL)pcg64_keeps(s3, threshold) * scale;                      \
            mask[j] = k0;                                                                      \
            y[j] = x[j] * k0;                                                                  \
            mask[j + 1] = k1;                                                                  \
            y[j + 1] = x[j + 1] * k1;                                                          \
            mask[j + 2] = k2;                                                                  \
            y[j + 2] = x[j + 2] * k2;                                                          \
            mask[j + 3] = k3;                                                                  \
            y[j + 3] = x[j + 3] * k3;                                                          \
            s0 = s0 * m4 + c4;                                                                 \
            s1 = s1 * m4 + c4;                                                                 \
            s2 = s2 * m4 + c4;                                                                 \
            s3 = s3 * m4 + c4;                                                                 \
        }                                                                                      \
        s[0] = s0;                                                                             \
        s[1] = s1;                                                                             \
        s[2] = s2;                                                                             \
        for (int l = 0; j < hi; ++j, ++l) {                                                    \
            const REAL keep = (REAL)pcg64_keeps(s[l], threshold) * scale;                      \
            mask[j] = keep;                                                                    \
            y[j] = x[j] * keep;                                                                \
        }                                                                                      \
    }
DEFINE_DROPOUT_SHARE(f32, float)
DEFINE_DROPOUT_SHARE(f64, double)

#define DROPOUT_PCG64(SUFFIX, REAL)                                                            \
    if (r->k == 1) {                                                                           \
        rp_pcg64_random *g = ((rp_pcg64_state *)gen)->pcg;                                     \
        const rp_u128 start = g->state, inc = g->inc;                                          \
        const long n = r->n;                                                                   \
        const int nt = n >= RP_PLAN_PARALLEL_MIN && !rp_in_parallel() ? rp_get_num_threads() : 1; \
        if (nt > 1) {                                                                          \
            _Pragma("omp parallel num_threads(nt)")                                            \
            {                                                                                  \
                int t = 0, team = 1;                                                           \
                DROPOUT_TEAM(t, team);                                                         \
                dropout_share_##SUFFIX(n * t / team, n * (t + 1) / team, start, inc, rate,     \
                                       scale, x, y, mask);                                     \
            }                                                                                  \
        } else {                                                                               \
            dropout_share_##SUFFIX(0, n, start, inc, rate, scale, x, y, mask);                 \
        }                                                                                      \
        g->state = pcg64_advance(start, inc, (uint64_t)n);                                     \
        return;                                                                                \
    }
#else
#define DROPOUT_PCG64(SUFFIX, REAL)
#endif
#ifdef RETROPROP_HAVE_OPENMP
#define DROPOUT_TEAM(t, team) (t = omp_get_thread_num(), team = omp_get_num_threads())
#else
#define DROPOUT_TEAM(t, team) ((void)0)
#endif

#define DEFINE_DROPOUT(SUFFIX, REAL)                                                           \
    static void dropout_##SUFFIX(const rp_record *r, const REAL *x, REAL *y, REAL *mask,       \
                                 void *gen)                                                    \
    {                                                                                          \
        const REAL scale = (REAL)r->p1;                                                        \
        const double rate = r->p0;                                                             \
        DROPOUT_PCG64(SUFFIX, REAL)                                                            \
        const rp_numpy_bitgen *bitgen = (const rp_numpy_bitgen *)gen;                          \
        for (long j = 0; j < r->n; ++j) {                                                      \
            mask[j] = bitgen->next_double(bitgen->state) >= rate ? scale : (REAL)0;            \
            y[j] = x[j] * mask[j];                                                             \
        }                                                                                      \
    }

DEFINE_RUN(f32, float)
DEFINE_RUN(f64, double)
