/* AVX2 float32 rows of softmax and of the fused softmax + cross-entropy,
 * picked by loss.c at run time. A row of c classes is read as whole vectors
 * of 8 plus one masked vector for the rest, so every c works and nothing is
 * read or written past the row (masked loads; the masked part of a store
 * goes through a small buffer, as VMASKMOVPS stores are slow on AMD cores);
 * e^x is rp_exp_f32x8 instead of libm's expf per element. */
#include <math.h>
#include "loss_internal.h"
#include "simd_avx2.h"

/* Lanes [0, count) set, count in 1..8. */
static inline __m256i first_lanes(int count)
{
    return _mm256_cmpgt_epi32(_mm256_set1_epi32(count), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}

/* Store lanes [0, count) of v at dst, count in 1..7. */
static inline void store_first(float *dst, __m256 v, int count)
{
    float lanes[8];
    _mm256_storeu_ps(lanes, v);
    for (int k = 0; k < count; ++k) dst[k] = lanes[k];
}

static inline float horizontal_max(__m256 v)
{
    __m128 m = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    m = _mm_max_ps(m, _mm_movehl_ps(m, m));
    m = _mm_max_ss(m, _mm_shuffle_ps(m, m, 1));
    return _mm_cvtss_f32(m);
}

static inline double horizontal_sum_pd(__m256d v)
{
    __m128d s = _mm_add_pd(_mm256_castpd256_pd128(v), _mm256_extractf128_pd(v, 1));
    return _mm_cvtsd_f64(_mm_add_sd(s, _mm_unpackhi_pd(s, s)));
}

/* The row's largest value. A NaN in the row may or may not become the
 * maximum; either way z - max is NaN in its lane and the row's results are
 * NaN, as with the scalar loop. */
static float row_max(int c, const float *z)
{
    const __m256 minus_inf = _mm256_set1_ps(-INFINITY);
    __m256 m = minus_inf;
    int j = 0;
    for (; j + 8 <= c; j += 8) m = _mm256_max_ps(m, _mm256_loadu_ps(z + j));
    if (j < c) {
        const __m256i mask = first_lanes(c - j);
        m = _mm256_max_ps(m, _mm256_blendv_ps(minus_inf, _mm256_maskload_ps(z + j, mask),
                                              _mm256_castsi256_ps(mask)));
    }
    return horizontal_max(m);
}

/* e[j] = e^(z[j] - max) for the row; returns their sum (in double). */
static double row_exp(int c, const float *z, float max, float *e)
{
    const __m256 shift = _mm256_set1_ps(max);
    __m256d sum_lo = _mm256_setzero_pd(), sum_hi = _mm256_setzero_pd();
    int j = 0;
    for (; j + 8 <= c; j += 8) {
        const __m256 v = rp_exp_f32x8(_mm256_sub_ps(_mm256_loadu_ps(z + j), shift));
        _mm256_storeu_ps(e + j, v);
        sum_lo = _mm256_add_pd(sum_lo, _mm256_cvtps_pd(_mm256_castps256_ps128(v)));
        sum_hi = _mm256_add_pd(sum_hi, _mm256_cvtps_pd(_mm256_extractf128_ps(v, 1)));
    }
    if (j < c) {
        const __m256i mask = first_lanes(c - j);
        __m256 v = rp_exp_f32x8(_mm256_sub_ps(_mm256_maskload_ps(z + j, mask), shift));
        v = _mm256_and_ps(v, _mm256_castsi256_ps(mask));
        store_first(e + j, v, c - j);
        sum_lo = _mm256_add_pd(sum_lo, _mm256_cvtps_pd(_mm256_castps256_ps128(v)));
        sum_hi = _mm256_add_pd(sum_hi, _mm256_cvtps_pd(_mm256_extractf128_ps(v, 1)));
    }
    return horizontal_sum_pd(_mm256_add_pd(sum_lo, sum_hi));
}

void rp_softmax_rows_f32_avx2(int lo, int hi, int c, const float *x, float *out)
{
    for (int i = lo; i < hi; ++i) {
        const float *z = x + (long)i * c;
        float *o = out + (long)i * c;
        const float max = row_max(c, z);
        const __m256 inv = _mm256_set1_ps((float)(1.0 / row_exp(c, z, max, o)));
        int j = 0;
        for (; j + 8 <= c; j += 8) _mm256_storeu_ps(o + j, _mm256_mul_ps(_mm256_loadu_ps(o + j), inv));
        if (j < c) {
            const __m256i mask = first_lanes(c - j);
            store_first(o + j, _mm256_mul_ps(_mm256_maskload_ps(o + j, mask), inv), c - j);
        }
    }
}

/* grad = (e * inv_s - t) * inv_n over the row, where grad holds e on entry
 * and t is the one-hot row of `label` (label >= 0) or the row `targets`. */
static void row_grad(int c, float *grad, float inv_s, long label, const float *targets, float inv_n)
{
    const __m256 scale = _mm256_set1_ps(inv_s), mean = _mm256_set1_ps(inv_n);
    const __m256 one = _mm256_set1_ps(1.0f);
    const __m256i step = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    for (int j = 0; j < c; j += 8) {
        const __m256i mask = j + 8 <= c ? _mm256_set1_epi32(-1) : first_lanes(c - j);
        __m256 t;
        if (targets) {
            t = _mm256_maskload_ps(targets + j, mask);
        } else {
            const __m256i column = _mm256_add_epi32(_mm256_set1_epi32(j), step);
            t = _mm256_and_ps(one, _mm256_castsi256_ps(
                                       _mm256_cmpeq_epi32(column, _mm256_set1_epi32((int)label))));
        }
        const __m256 e = _mm256_maskload_ps(grad + j, mask);
        const __m256 g = _mm256_mul_ps(_mm256_fmsub_ps(e, scale, t), mean);
        if (j + 8 <= c) _mm256_storeu_ps(grad + j, g);
        else store_first(grad + j, g, c - j);
    }
}

double rp_softmax_xent_rows_f32_avx2(int lo, int hi, int c, const float *z, const int64_t *labels,
                                     const float *targets, float *grad, float inv_n)
{
    double total = 0;
    for (int i = lo; i < hi; ++i) {
        const float *zi = z + (long)i * c;
        const float *ti = targets ? targets + (long)i * c : NULL;
        /* The target term first: grad may be the logits' own memory. */
        double target_dot = 0;
        if (labels) {
            target_dot = (double)zi[labels[i]];
        } else {
            for (int j = 0; j < c; ++j) target_dot += (double)ti[j] * (double)zi[j];
        }
        const float max = row_max(c, zi);
        double s;
        if (grad) {
            s = row_exp(c, zi, max, grad + (long)i * c);
        } else {
            /* The loss alone: the exponentials go through a small buffer. */
            float e[64];
            s = 0;
            for (int j = 0; j < c; j += 64) s += row_exp(c - j < 64 ? c - j : 64, zi + j, max, e);
        }
        const double lse = (double)max + log(s);
        if (grad) row_grad(c, grad + (long)i * c, (float)(1.0 / s), labels ? (long)labels[i] : -1, ti,
                           inv_n);
        total += lse - target_dot;
    }
    return total;
}
