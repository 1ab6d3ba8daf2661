/* Elementwise activations, forward and backward (derivative from the output).
 * Large arrays are split in contiguous chunks over OpenMP threads. */
#include "retroprop/act.h"
#include "retroprop/runtime.h"
#include "act_internal.h"
#include "act_scalar.h"
#ifdef RETROPROP_HAVE_OPENMP
#include <omp.h>
#endif

/* Chunk [begin, end) of n for thread t of nt, aligned to 64 elements so
 * SIMD loops see whole vectors except in the last chunk. */
static void chunk_bounds(size_t n, int t, int nt, size_t *begin, size_t *end)
{
    size_t per = (n + (size_t)nt - 1) / (size_t)nt;
    per = (per + 63) & ~(size_t)63;
    *begin = per * (size_t)t < n ? per * (size_t)t : n;
    *end = *begin + per < n ? *begin + per : n;
}

static int threads_for(size_t n)
{
    return n < RP_ELEMENTWISE_PARALLEL_MIN ? 1 : rp_get_num_threads();
}

static void forward_f32_range(rp_act act, size_t n, const float *x, float *y)
{
#ifdef RETROPROP_HAVE_AVX2
    if (rp_simd_in_use() == RP_SIMD_AVX2) { rp_act_forward_f32_avx2(act, n, x, y); return; }
#endif
    for (size_t i = 0; i < n; ++i) y[i] = rp_act_scalar_f32(act, x[i]);
}

static void backward_f32_range(rp_act act, size_t n, const float *y, const float *dy, float *dx)
{
#ifdef RETROPROP_HAVE_AVX2
    if (rp_simd_in_use() == RP_SIMD_AVX2) { rp_act_backward_f32_avx2(act, n, y, dy, dx); return; }
#endif
    for (size_t i = 0; i < n; ++i) dx[i] = dy[i] * rp_act_grad_from_output_f32(act, y[i]);
}

void rp_act_forward_f32(rp_act act, size_t n, const float *x, float *y)
{
    const int nt = threads_for(n);
#ifdef RETROPROP_HAVE_OPENMP
#pragma omp parallel num_threads(nt)
#endif
    {
        int t = 0, count = 1;
#ifdef RETROPROP_HAVE_OPENMP
        t = omp_get_thread_num(); count = omp_get_num_threads();
#endif
        size_t b, e;
        chunk_bounds(n, t, count, &b, &e);
        forward_f32_range(act, e - b, x + b, y + b);
    }
    (void)nt;
}

void rp_act_backward_f32(rp_act act, size_t n, const float *y, const float *dy, float *dx)
{
    const int nt = threads_for(n);
#ifdef RETROPROP_HAVE_OPENMP
#pragma omp parallel num_threads(nt)
#endif
    {
        int t = 0, count = 1;
#ifdef RETROPROP_HAVE_OPENMP
        t = omp_get_thread_num(); count = omp_get_num_threads();
#endif
        size_t b, e;
        chunk_bounds(n, t, count, &b, &e);
        backward_f32_range(act, e - b, y + b, dy + b, dx + b);
    }
    (void)nt;
}

void rp_act_forward_f64(rp_act act, size_t n, const double *x, double *y)
{
    const long count = (long)n;
#ifdef RETROPROP_HAVE_OPENMP
#pragma omp parallel for schedule(static) num_threads(threads_for(n))
#endif
    for (long i = 0; i < count; ++i) y[i] = rp_act_scalar_f64(act, x[i]);
}

void rp_act_backward_f64(rp_act act, size_t n, const double *y, const double *dy, double *dx)
{
    const long count = (long)n;
#ifdef RETROPROP_HAVE_OPENMP
#pragma omp parallel for schedule(static) num_threads(threads_for(n))
#endif
    for (long i = 0; i < count; ++i) dx[i] = dy[i] * rp_act_grad_from_output_f64(act, y[i]);
}
