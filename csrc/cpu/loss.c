/* Softmax and the fused softmax + categorical cross-entropy. */
#include <math.h>
#include <stdlib.h>
#include "retroprop/loss.h"
#include "retroprop/runtime.h"
#include "loss_internal.h"
#ifdef RETROPROP_HAVE_OPENMP
#include <omp.h>
#define RP_THREAD_ID(t) (t) = omp_get_thread_num()
#define RP_TEAM_SIZE(k) (k) = omp_get_num_threads()
#else
#define RP_THREAD_ID(t) (void)(t)
#define RP_TEAM_SIZE(k) (void)(k)
#endif

/* Rows are independent; a parallel region only pays off for big batches. */
static int threads_for_rows(int n, int c)
{
    return (long)n * c < RP_LOSS_ROWS_PARALLEL_MIN ? 1 : rp_get_num_threads();
}

#define SOFTMAX_ROW(REAL, EXP, z, out, c)                                  \
    {                                                                      \
        REAL row_max = z[0];                                               \
        for (int j = 1; j < c; ++j) row_max = z[j] > row_max ? z[j] : row_max; \
        REAL sum = 0;                                                      \
        for (int j = 0; j < c; ++j) { out[j] = EXP(z[j] - row_max); sum += out[j]; } \
        const REAL inv = (REAL)1 / sum;                                    \
        for (int j = 0; j < c; ++j) out[j] *= inv;                         \
    }

/* Rows [lo, hi): the AVX2 loop for float32 where the CPU has it, else the
 * scalar rows (float64 is always scalar). */
static void softmax_range_f32(int lo, int hi, int c, const float *x, float *out)
{
#ifdef RETROPROP_HAVE_AVX2
    if (rp_simd_in_use() == RP_SIMD_AVX2) {
        rp_softmax_rows_f32_avx2(lo, hi, c, x, out);
        return;
    }
#endif
    for (int i = lo; i < hi; ++i) SOFTMAX_ROW(float, expf, (x + (long)i * c), (out + (long)i * c), c)
}

static void softmax_range_f64(int lo, int hi, int c, const double *x, double *out)
{
    for (int i = lo; i < hi; ++i) SOFTMAX_ROW(double, exp, (x + (long)i * c), (out + (long)i * c), c)
}

/* Small batches (single-sample inference) open no parallel region: even
 * one for a single thread costs ~0.5 us, more than a 10-class softmax. */
/* Rows of no columns have no softmax (and no first value to seed the
 * maximum): nothing is read or written. The bindings refuse them; the
 * dense stack reaches these entries directly. */
#define SOFTMAX_ROWS(SUFFIX)                                               \
    {                                                                      \
        if (n < 1 || c < 1) return;                                        \
        const int nt = threads_for_rows(n, c);                             \
        if (nt <= 1) {                                                     \
            softmax_range_##SUFFIX(0, n, c, x, out);                       \
            return;                                                        \
        }                                                                  \
        _Pragma("omp parallel num_threads(nt)")                            \
        {                                                                  \
            int t = 0, team = 1;                                           \
            RP_THREAD_ID(t);                                               \
            RP_TEAM_SIZE(team);                                            \
            softmax_range_##SUFFIX((int)((long)n * t / team),              \
                                   (int)((long)n * (t + 1) / team), c, x, out); \
        }                                                                  \
    }

void rp_softmax_f32(int n, int c, const float *x, float *out)
SOFTMAX_ROWS(f32)

void rp_softmax_f64(int n, int c, const double *x, double *out)
SOFTMAX_ROWS(f64)

/* Per row: m = max z, s = sum e^(z - m); log-sum-exp = m + log s, so the
 * loss never takes the log of an underflowed probability. Row losses are
 * added per thread in row order and the per-thread sums in thread order:
 * deterministic for a fixed thread count. Sums are kept in double. */
#define XENT_ROW(REAL, EXP)                                                            \
    static double xent_row_##REAL(int i, int c, const REAL *z, const int64_t *labels,  \
                                  const REAL *targets, REAL *grad, REAL inv_n)         \
    {                                                                                  \
        const REAL *zi = z + (long)i * c;                                              \
        REAL row_max = zi[0];                                                          \
        for (int j = 1; j < c; ++j) row_max = zi[j] > row_max ? zi[j] : row_max;       \
        double s = 0;                                                                  \
        for (int j = 0; j < c; ++j) s += (double)EXP(zi[j] - row_max);                 \
        const double lse = (double)row_max + log(s);                                   \
        double target_dot = 0;                                                         \
        if (labels) target_dot = (double)zi[labels[i]];                                \
        else for (int j = 0; j < c; ++j)                                               \
            target_dot += (double)targets[(long)i * c + j] * (double)zi[j];            \
        if (grad) {                                                                    \
            REAL *gi = grad + (long)i * c;                                             \
            const REAL inv_s = (REAL)(1.0 / s);                                        \
            for (int j = 0; j < c; ++j) {                                              \
                REAL t_ij = labels ? (REAL)(labels[i] == j) : targets[(long)i * c + j]; \
                gi[j] = (EXP(zi[j] - row_max) * inv_s - t_ij) * inv_n;                 \
            }                                                                          \
        }                                                                              \
        return lse - target_dot;                                                       \
    }

XENT_ROW(float, expf)
XENT_ROW(double, exp)

/* Sum of the row losses of rows [lo, hi), in row order. */
static double xent_range_f32(int lo, int hi, int c, const float *z, const int64_t *labels,
                             const float *targets, float *grad, float inv_n)
{
#ifdef RETROPROP_HAVE_AVX2
    if (rp_simd_in_use() == RP_SIMD_AVX2)
        return rp_softmax_xent_rows_f32_avx2(lo, hi, c, z, labels, targets, grad, inv_n);
#endif
    double total = 0;
    for (int i = lo; i < hi; ++i) total += xent_row_float(i, c, z, labels, targets, grad, inv_n);
    return total;
}

static double xent_range_f64(int lo, int hi, int c, const double *z, const int64_t *labels,
                             const double *targets, double *grad, double inv_n)
{
    double total = 0;
    for (int i = lo; i < hi; ++i) total += xent_row_double(i, c, z, labels, targets, grad, inv_n);
    return total;
}

/* A small batch (the common case) is one thread's loop with no parallel
 * region; a large one is split over threads in contiguous row ranges, with
 * per-thread partial sums added in thread order: deterministic for a fixed
 * thread count. */
/* No rows or no classes: no loss is defined, NaN (read nothing). */
#define SOFTMAX_XENT(REAL, SUFFIX)                                                     \
    {                                                                                  \
        if (n < 1 || c < 1) return NAN;                                                \
        const int wanted = threads_for_rows(n, c);                                     \
        const int nt = wanted < 256 ? wanted : 256;   /* partial[] below */           \
        const REAL inv_n = (REAL)1 / (REAL)n;                                          \
        if (nt <= 1)                                                                   \
            return xent_range_##SUFFIX(0, n, c, z, labels, targets, grad, inv_n) / (double)n; \
        double partial[256] = {0};                                                     \
        _Pragma("omp parallel num_threads(nt)")                                        \
        {                                                                              \
            int t = 0, team = 1;                                                       \
            RP_THREAD_ID(t);                                                           \
            RP_TEAM_SIZE(team);                                                        \
            partial[t] = xent_range_##SUFFIX((int)((long)n * t / team),                \
                                             (int)((long)n * (t + 1) / team), c, z,    \
                                             labels, targets, grad, inv_n);            \
        }                                                                              \
        double total = 0;                                                              \
        for (int t = 0; t < nt; ++t) total += partial[t];                              \
        return total / (double)n;                                                      \
    }

double rp_softmax_xent_f32(int n, int c, const float *z, const int64_t *labels,
                           const float *targets, float *grad)
SOFTMAX_XENT(float, f32)

double rp_softmax_xent_f64(int n, int c, const double *z, const int64_t *labels,
                           const double *targets, double *grad)
SOFTMAX_XENT(double, f64)
