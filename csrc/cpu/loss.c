/* Softmax and the fused softmax + categorical cross-entropy. */
#include <math.h>
#include <stdlib.h>
#include "retroprop/loss.h"
#include "retroprop/runtime.h"
#ifdef RETROPROP_HAVE_OPENMP
#include <omp.h>
#endif

/* Rows are independent; a parallel region only pays off for big batches. */
static int threads_for_rows(int n, int c)
{
    return (long)n * c < 65536 ? 1 : rp_get_num_threads();
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

/* Small batches (single-sample inference) open no parallel region: even
 * one for a single thread costs ~0.5 us, more than a 10-class softmax. */
#define SOFTMAX_ROWS(REAL, EXP)                                            \
    {                                                                      \
        const int nt = threads_for_rows(n, c);                             \
        if (nt > 1) {                                                      \
            _Pragma("omp parallel for schedule(static) num_threads(nt)")   \
            for (int i = 0; i < n; ++i) {                                  \
                const REAL *z = x + (long)i * c;                           \
                REAL *o = out + (long)i * c;                               \
                SOFTMAX_ROW(REAL, EXP, z, o, c)                            \
            }                                                              \
        } else {                                                           \
            for (int i = 0; i < n; ++i) {                                  \
                const REAL *z = x + (long)i * c;                           \
                REAL *o = out + (long)i * c;                               \
                SOFTMAX_ROW(REAL, EXP, z, o, c)                            \
            }                                                              \
        }                                                                  \
    }

void rp_softmax_f32(int n, int c, const float *x, float *out)
SOFTMAX_ROWS(float, expf)

void rp_softmax_f64(int n, int c, const double *x, double *out)
SOFTMAX_ROWS(double, exp)

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

/* A small batch (the common case) is one thread's loop with no parallel
 * region; a large one is split over threads with per-thread partial sums. */
#define SOFTMAX_XENT(REAL)                                                             \
    {                                                                                  \
        const int wanted = threads_for_rows(n, c);                                     \
        const int nt = wanted < 256 ? wanted : 256;   /* partial[] below */           \
        const REAL inv_n = (REAL)1 / (REAL)n;                                          \
        double total = 0;                                                              \
        if (nt <= 1) {                                                                 \
            for (int i = 0; i < n; ++i)                                                \
                total += xent_row_##REAL(i, c, z, labels, targets, grad, inv_n);       \
            return total / (double)n;                                                  \
        }                                                                              \
        double partial[256] = {0};                                                     \
        _Pragma("omp parallel num_threads(nt)")                                        \
        {                                                                              \
            int t = 0;                                                                 \
            RP_THREAD_ID(t);                                                           \
            double local = 0;                                                          \
            _Pragma("omp for schedule(static)")                                        \
            for (int i = 0; i < n; ++i)                                                \
                local += xent_row_##REAL(i, c, z, labels, targets, grad, inv_n);       \
            if (t < 256) partial[t] = local;                                           \
        }                                                                              \
        for (int t = 0; t < nt && t < 256; ++t) total += partial[t];                   \
        return total / (double)n;                                                      \
    }

#ifdef RETROPROP_HAVE_OPENMP
#define RP_THREAD_ID(t) (t) = omp_get_thread_num()
#else
#define RP_THREAD_ID(t) (void)(t)
#endif

double rp_softmax_xent_f32(int n, int c, const float *z, const int64_t *labels,
                           const float *targets, float *grad)
SOFTMAX_XENT(float)

double rp_softmax_xent_f64(int n, int c, const double *z, const int64_t *labels,
                           const double *targets, double *grad)
SOFTMAX_XENT(double)
