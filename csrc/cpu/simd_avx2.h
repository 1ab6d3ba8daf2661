/* AVX2+FMA vector math shared by the AVX2 kernels. Include only from files
 * compiled with -mavx2 -mfma. */
#ifndef RETROPROP_SIMD_AVX2_H
#define RETROPROP_SIMD_AVX2_H

#include <immintrin.h>
#include "retroprop/act.h"

/* e^x for float32 lanes. The range reduction runs on x clamped to
 * [-87, ln FLT_MAX]: x = n ln2 + r, e^r from its Taylor series to r^7 and
 * 2^n built directly in the exponent bits. n stops at 127 (the largest
 * normal exponent), so |r| <= ln2/2 (truncation error < 1e-8 relative)
 * except just below ln FLT_MAX, where r reaches 0.7 (< 3e-6). Below -87 the
 * result is 0 (the true value is under 1.7e-38); above ln FLT_MAX it is
 * +inf, as libm's expf, so sigmoid(-inf) is exactly 0 on every path. NaN
 * lanes stay NaN: max/min would otherwise replace them by the clamp bound
 * and hide them. */
static inline __m256 rp_exp_f32x8(__m256 x)
{
    const __m256 low = _mm256_set1_ps(-87.0f), high = _mm256_set1_ps(88.72283f);
    __m256 xc = _mm256_min_ps(_mm256_max_ps(x, low), high);
    __m256 n = _mm256_round_ps(_mm256_mul_ps(xc, _mm256_set1_ps(1.44269504088896341f)),
                               _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    n = _mm256_min_ps(n, _mm256_set1_ps(127.0f));
    /* ln2 split in a short high part and a correction so n*ln2_hi is exact. */
    __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), xc);
    r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
    __m256 p = _mm256_set1_ps(1.0f / 5040.0f);
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 720.0f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 120.0f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 24.0f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 6.0f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(0.5f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f));
    __m256i bits = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
    __m256 e = _mm256_mul_ps(p, _mm256_castsi256_ps(bits));
    e = _mm256_andnot_ps(_mm256_cmp_ps(x, low, _CMP_LT_OQ), e);
    e = _mm256_blendv_ps(e, _mm256_set1_ps(__builtin_inff()), _mm256_cmp_ps(x, high, _CMP_GT_OQ));
    return _mm256_or_ps(e, _mm256_cmp_ps(x, x, _CMP_UNORD_Q));    /* all-ones bits: NaN */
}

static inline __m256 rp_sigmoid_f32x8(__m256 z)
{
    __m256 one = _mm256_set1_ps(1.0f);
    return _mm256_div_ps(one, _mm256_add_ps(one, rp_exp_f32x8(_mm256_sub_ps(_mm256_setzero_ps(), z))));
}

/* tanh z = sign(z) (1 - e) / (1 + e), e = e^{-2|z|}; near 0 that difference
 * cancels, so |z| < 0.1 uses the odd Taylor series to z^9 instead. */
static inline __m256 rp_tanh_f32x8(__m256 z)
{
    const __m256 sign_mask = _mm256_set1_ps(-0.0f);
    __m256 az = _mm256_andnot_ps(sign_mask, z);
    __m256 e = rp_exp_f32x8(_mm256_mul_ps(az, _mm256_set1_ps(-2.0f)));
    __m256 one = _mm256_set1_ps(1.0f);
    __m256 big = _mm256_div_ps(_mm256_sub_ps(one, e), _mm256_add_ps(one, e));
    __m256 z2 = _mm256_mul_ps(az, az);
    __m256 q = _mm256_set1_ps(62.0f / 2835.0f);
    q = _mm256_fmadd_ps(q, z2, _mm256_set1_ps(-17.0f / 315.0f));
    q = _mm256_fmadd_ps(q, z2, _mm256_set1_ps(2.0f / 15.0f));
    q = _mm256_fmadd_ps(q, z2, _mm256_set1_ps(-1.0f / 3.0f));
    q = _mm256_fmadd_ps(q, z2, one);
    __m256 small = _mm256_mul_ps(q, az);
    __m256 is_small = _mm256_cmp_ps(az, _mm256_set1_ps(0.1f), _CMP_LT_OQ);
    __m256 t = _mm256_blendv_ps(big, small, is_small);
    return _mm256_or_ps(t, _mm256_and_ps(z, sign_mask));
}

static inline __m256 rp_act_f32x8(rp_act act, __m256 z)
{
    switch (act) {
    case RP_ACT_RELU: return _mm256_max_ps(_mm256_setzero_ps(), z);   /* NaN stays NaN */
    case RP_ACT_SIGMOID: return rp_sigmoid_f32x8(z);
    case RP_ACT_TANH: return rp_tanh_f32x8(z);
    default: return z;
    }
}

#endif
