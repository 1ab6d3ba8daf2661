/* Elementwise activations, forward and backward (see retroprop/act.h).
 * Large arrays are split in contiguous chunks over OpenMP threads; each
 * element is computed the same way whatever the split, so results do not
 * depend on the thread count. */
#include "retroprop/act.h"
#include "retroprop/runtime.h"
#include "act_internal.h"
#include "act_scalar.h"
#ifdef RETROPROP_HAVE_OPENMP
#include <omp.h>
#endif

int rp_act_derivative_needs_input(rp_act act) { return rp_act_needs_input(act); }

double rp_act_default_param(rp_act act) { return rp_act_param_default(act); }

#ifdef RETROPROP_HAVE_OPENMP
/* Chunk [begin, end) of n for thread t of nt, aligned to 64 elements so
 * SIMD loops see whole vectors except in the last chunk. */
static void chunk_bounds(size_t n, int t, int nt, size_t *begin, size_t *end)
{
    size_t per = (n + (size_t)nt - 1) / (size_t)nt;
    per = (per + 63) & ~(size_t)63;
    *begin = per * (size_t)t < n ? per * (size_t)t : n;
    *end = *begin + per < n ? *begin + per : n;
}
#endif

/* Loops that call libm per element are worth threads on smaller arrays. */
static int calls_libm(rp_act act, int backward)
{
    if (backward)
        return act == RP_ACT_SOFTPLUS || act == RP_ACT_GELU || act == RP_ACT_SWISH ||
               act == RP_ACT_MISH;
    return act != RP_ACT_LINEAR && act != RP_ACT_RELU && act != RP_ACT_STEP &&
           act != RP_ACT_LEAKY_RELU;
}

static int threads_for(size_t n, rp_act act, int backward)
{
    size_t min = calls_libm(act, backward) ? RP_ELEMENTWISE_PARALLEL_MIN_TRANSCENDENTAL
                                           : RP_ELEMENTWISE_PARALLEL_MIN;
    return n < min ? 1 : rp_get_num_threads();
}

/* Run RANGE_CALL (which reads b and e, the thread's [begin, end)) over n
 * elements on nt threads. */
#ifdef RETROPROP_HAVE_OPENMP
#define FOR_CHUNKS(n, nt, RANGE_CALL)                                 \
    if ((nt) > 1) {                                                   \
        _Pragma("omp parallel num_threads(nt)")                       \
        {                                                             \
            size_t b, e;                                              \
            chunk_bounds(n, omp_get_thread_num(), omp_get_num_threads(), &b, &e); \
            RANGE_CALL;                                               \
        }                                                             \
    } else { /* no region for one thread: it would cost ~0.5 us */    \
        size_t b = 0, e = n;                                          \
        RANGE_CALL;                                                   \
    }
#else
#define FOR_CHUNKS(n, nt, RANGE_CALL)                                 \
    {                                                                 \
        size_t b = 0, e = n;                                          \
        (void)nt;                                                     \
        RANGE_CALL;                                                   \
    }
#endif

/* ---------------------------------------------------------------- one thread's range */

static void forward_f32_range(rp_act act, float p, size_t n, const float *x, float *y)
{
#ifdef RETROPROP_HAVE_AVX2
    if (rp_simd_in_use() == RP_SIMD_AVX2 && rp_act_forward_has_avx2(act)) {
        rp_act_forward_f32_avx2(act, p, n, x, y);
        return;
    }
#endif
    for (size_t i = 0; i < n; ++i) y[i] = rp_act_apply_f32(act, p, x[i]);
}

static void forward_f64_range(rp_act act, double p, size_t n, const double *x, double *y)
{
    for (size_t i = 0; i < n; ++i) y[i] = rp_act_apply_f64(act, p, x[i]);
}

/* Step passes no gradient: write zeros rather than dy * 0, which would be
 * NaN for an infinite dy. */
static void backward_f32_range(rp_act act, float p, size_t n, const float *x, const float *y,
                               const float *dy, float *dx)
{
    if (rp_act_needs_input(act)) {
        for (size_t i = 0; i < n; ++i) dx[i] = dy[i] * rp_act_grad_input_f32(act, p, x[i]);
        return;
    }
#ifdef RETROPROP_HAVE_AVX2
    if (rp_simd_in_use() == RP_SIMD_AVX2 && rp_act_backward_has_avx2(act)) {
        rp_act_backward_f32_avx2(act, p, n, y, dy, dx);
        return;
    }
#endif
    if (act == RP_ACT_STEP) {
        for (size_t i = 0; i < n; ++i) dx[i] = 0.0f;
        return;
    }
    for (size_t i = 0; i < n; ++i) dx[i] = dy[i] * rp_act_grad_output_f32(act, p, y[i]);
}

static void backward_f64_range(rp_act act, double p, size_t n, const double *x, const double *y,
                               const double *dy, double *dx)
{
    if (rp_act_needs_input(act)) {
        for (size_t i = 0; i < n; ++i) dx[i] = dy[i] * rp_act_grad_input_f64(act, p, x[i]);
    } else if (act == RP_ACT_STEP) {
        for (size_t i = 0; i < n; ++i) dx[i] = 0.0;
    } else {
        for (size_t i = 0; i < n; ++i) dx[i] = dy[i] * rp_act_grad_output_f64(act, p, y[i]);
    }
}

/* ---------------------------------------------------------------- entry points */

void rp_act_forward_f32(rp_act act, double param, size_t n, const float *x, float *y)
{
    const int nt = threads_for(n, act, 0);
    const float p = (float)param;
    FOR_CHUNKS(n, nt, forward_f32_range(act, p, e - b, x + b, y + b))
}

void rp_act_forward_f64(rp_act act, double param, size_t n, const double *x, double *y)
{
    const int nt = threads_for(n, act, 0);
    FOR_CHUNKS(n, nt, forward_f64_range(act, param, e - b, x + b, y + b))
}

void rp_act_backward_f32(rp_act act, double param, size_t n, const float *x, const float *y,
                         const float *dy, float *dx)
{
    const int nt = threads_for(n, act, 1);
    const float p = (float)param;
    FOR_CHUNKS(n, nt, backward_f32_range(act, p, e - b, x ? x + b : NULL, y ? y + b : NULL,
                                         dy + b, dx + b))
}

void rp_act_backward_f64(rp_act act, double param, size_t n, const double *x, const double *y,
                         const double *dy, double *dx)
{
    const int nt = threads_for(n, act, 1);
    FOR_CHUNKS(n, nt, backward_f64_range(act, param, e - b, x ? x + b : NULL, y ? y + b : NULL,
                                         dy + b, dx + b))
}
