/* AVX2 elementwise activation loops (float32); the tail of each array goes
 * through the scalar formulas so every length is handled. */
#include "act_internal.h"
#include "act_scalar.h"
#include "simd_avx2.h"

void rp_act_forward_f32_avx2(rp_act act, size_t n, const float *x, float *y)
{
    size_t i = 0;
    for (; i + 8 <= n; i += 8)
        _mm256_storeu_ps(y + i, rp_act_f32x8(act, _mm256_loadu_ps(x + i)));
    for (; i < n; ++i) y[i] = rp_act_scalar_f32(act, x[i]);
}

void rp_act_backward_f32_avx2(rp_act act, size_t n, const float *y, const float *dy, float *dx)
{
    const __m256 one = _mm256_set1_ps(1.0f), zero = _mm256_setzero_ps();
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256 yv = _mm256_loadu_ps(y + i), g = _mm256_loadu_ps(dy + i);
        switch (act) {
        case RP_ACT_RELU: g = _mm256_and_ps(g, _mm256_cmp_ps(yv, zero, _CMP_GT_OQ)); break;
        case RP_ACT_SIGMOID: g = _mm256_mul_ps(g, _mm256_mul_ps(yv, _mm256_sub_ps(one, yv))); break;
        case RP_ACT_TANH: g = _mm256_mul_ps(g, _mm256_fnmadd_ps(yv, yv, one)); break;
        default: break;
        }
        _mm256_storeu_ps(dx + i, g);
    }
    for (; i < n; ++i) dx[i] = dy[i] * rp_act_grad_from_output_f32(act, y[i]);
}
