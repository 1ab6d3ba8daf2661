/* AVX2 elementwise activation loops (float32) for the activations that are
 * a few vector instructions; the tail of each array goes through the scalar
 * formulas so every length is handled. */
#include "act_internal.h"
#include "act_scalar.h"
#include "simd_avx2.h"

int rp_act_forward_has_avx2(rp_act act)
{
    switch (act) {
    case RP_ACT_LINEAR: case RP_ACT_RELU: case RP_ACT_SIGMOID: case RP_ACT_TANH:
    case RP_ACT_STEP: case RP_ACT_LEAKY_RELU: case RP_ACT_SWISH:
        return 1;
    default:
        return 0;
    }
}

int rp_act_backward_has_avx2(rp_act act)
{
    return !rp_act_needs_input(act);
}

static inline __m256 forward_f32x8(rp_act act, __m256 p, __m256 z)
{
    const __m256 zero = _mm256_setzero_ps();
    switch (act) {
    case RP_ACT_RELU: return _mm256_max_ps(zero, z);   /* NaN stays NaN: max returns its second operand */
    case RP_ACT_SIGMOID: return rp_sigmoid_f32x8(_mm256_mul_ps(p, z));
    case RP_ACT_TANH: return rp_tanh_f32x8(z);
    case RP_ACT_STEP:   /* 1 where z >= 0, 0 where z < 0, NaN (all-ones bits) where z is NaN */
        return _mm256_or_ps(_mm256_and_ps(_mm256_cmp_ps(z, zero, _CMP_GE_OQ), _mm256_set1_ps(1.0f)),
                            _mm256_cmp_ps(z, z, _CMP_UNORD_Q));
    case RP_ACT_LEAKY_RELU:
        return _mm256_blendv_ps(_mm256_mul_ps(p, z), z, _mm256_cmp_ps(z, zero, _CMP_GT_OQ));
    case RP_ACT_SWISH: return _mm256_mul_ps(z, rp_sigmoid_f32x8(z));
    default: return z;
    }
}

void rp_act_forward_f32_avx2(rp_act act, float param, size_t n, const float *x, float *y)
{
    const __m256 p = _mm256_set1_ps(param);
    size_t i = 0;
    for (; i + 8 <= n; i += 8)
        _mm256_storeu_ps(y + i, forward_f32x8(act, p, _mm256_loadu_ps(x + i)));
    for (; i < n; ++i) y[i] = rp_act_apply_f32(act, param, x[i]);
}

void rp_act_backward_f32_avx2(rp_act act, float param, size_t n, const float *y, const float *dy,
                              float *dx)
{
    const __m256 one = _mm256_set1_ps(1.0f), zero = _mm256_setzero_ps();
    const __m256 p = _mm256_set1_ps(param);
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256 yv = _mm256_loadu_ps(y + i), g = _mm256_loadu_ps(dy + i);
        __m256 positive = _mm256_cmp_ps(yv, zero, _CMP_GT_OQ);
        switch (act) {
        case RP_ACT_RELU: g = _mm256_and_ps(g, positive); break;
        case RP_ACT_SIGMOID:
            g = _mm256_mul_ps(g, _mm256_mul_ps(p, _mm256_mul_ps(yv, _mm256_sub_ps(one, yv))));
            break;
        case RP_ACT_TANH: g = _mm256_mul_ps(g, _mm256_fnmadd_ps(yv, yv, one)); break;
        case RP_ACT_STEP: g = zero; break;
        case RP_ACT_LEAKY_RELU: g = _mm256_mul_ps(g, _mm256_blendv_ps(p, one, positive)); break;
        case RP_ACT_ELU:
            g = _mm256_mul_ps(g, _mm256_blendv_ps(_mm256_add_ps(yv, p), one, positive));
            break;
        default: break;
        }
        _mm256_storeu_ps(dx + i, g);
    }
    for (; i < n; ++i)
        dx[i] = act == RP_ACT_STEP ? 0.0f : dy[i] * rp_act_grad_output_f32(act, param, y[i]);
}
