/* AVX2+FMA microkernels: 6x16 float32 and 6x8 float64, 12 accumulators each.
 * Compiled with -mavx2 -mfma; called only when the CPU reports both. */
#include <immintrin.h>
#include "gemm_internal.h"
#include "act_scalar.h"
#include "simd_avx2.h"

/* alpha * acc (+ beta * C) (+ bias), activation, store: the fused write-back. */
static inline void store_row_f32(float *c, __m256 acc, __m256 valpha, __m256 vbeta, int use_beta,
                                 const float *bias, rp_act act)
{
    __m256 v = _mm256_mul_ps(acc, valpha);
    if (use_beta) v = _mm256_fmadd_ps(vbeta, _mm256_loadu_ps(c), v);
    if (bias) v = _mm256_add_ps(v, _mm256_loadu_ps(bias));
    _mm256_storeu_ps(c, rp_act_f32x8(act, v));
}

void rp_ukernel_f32_avx2(int kc, const float *ap, const float *bp, long ldbp, float *c, int ldc,
                         float alpha, float beta, const float *bias, rp_act act)
{
    __m256 c00 = _mm256_setzero_ps(), c01 = _mm256_setzero_ps();
    __m256 c10 = _mm256_setzero_ps(), c11 = _mm256_setzero_ps();
    __m256 c20 = _mm256_setzero_ps(), c21 = _mm256_setzero_ps();
    __m256 c30 = _mm256_setzero_ps(), c31 = _mm256_setzero_ps();
    __m256 c40 = _mm256_setzero_ps(), c41 = _mm256_setzero_ps();
    __m256 c50 = _mm256_setzero_ps(), c51 = _mm256_setzero_ps();

    for (int p = 0; p < kc; ++p) {
        __m256 b0 = _mm256_loadu_ps(bp);
        __m256 b1 = _mm256_loadu_ps(bp + 8);
        __m256 a;
        a = _mm256_broadcast_ss(ap + 0); c00 = _mm256_fmadd_ps(a, b0, c00); c01 = _mm256_fmadd_ps(a, b1, c01);
        a = _mm256_broadcast_ss(ap + 1); c10 = _mm256_fmadd_ps(a, b0, c10); c11 = _mm256_fmadd_ps(a, b1, c11);
        a = _mm256_broadcast_ss(ap + 2); c20 = _mm256_fmadd_ps(a, b0, c20); c21 = _mm256_fmadd_ps(a, b1, c21);
        a = _mm256_broadcast_ss(ap + 3); c30 = _mm256_fmadd_ps(a, b0, c30); c31 = _mm256_fmadd_ps(a, b1, c31);
        a = _mm256_broadcast_ss(ap + 4); c40 = _mm256_fmadd_ps(a, b0, c40); c41 = _mm256_fmadd_ps(a, b1, c41);
        a = _mm256_broadcast_ss(ap + 5); c50 = _mm256_fmadd_ps(a, b0, c50); c51 = _mm256_fmadd_ps(a, b1, c51);
        ap += RP_MR_F32;
        bp += ldbp;
    }

    const __m256 valpha = _mm256_set1_ps(alpha), vbeta = _mm256_set1_ps(beta);
    const int use_beta = beta != 0.0f;
    const float *bias1 = bias ? bias + 8 : NULL;
    store_row_f32(c + 0 * (long)ldc, c00, valpha, vbeta, use_beta, bias, act);
    store_row_f32(c + 0 * (long)ldc + 8, c01, valpha, vbeta, use_beta, bias1, act);
    store_row_f32(c + 1 * (long)ldc, c10, valpha, vbeta, use_beta, bias, act);
    store_row_f32(c + 1 * (long)ldc + 8, c11, valpha, vbeta, use_beta, bias1, act);
    store_row_f32(c + 2 * (long)ldc, c20, valpha, vbeta, use_beta, bias, act);
    store_row_f32(c + 2 * (long)ldc + 8, c21, valpha, vbeta, use_beta, bias1, act);
    store_row_f32(c + 3 * (long)ldc, c30, valpha, vbeta, use_beta, bias, act);
    store_row_f32(c + 3 * (long)ldc + 8, c31, valpha, vbeta, use_beta, bias1, act);
    store_row_f32(c + 4 * (long)ldc, c40, valpha, vbeta, use_beta, bias, act);
    store_row_f32(c + 4 * (long)ldc + 8, c41, valpha, vbeta, use_beta, bias1, act);
    store_row_f32(c + 5 * (long)ldc, c50, valpha, vbeta, use_beta, bias, act);
    store_row_f32(c + 5 * (long)ldc + 8, c51, valpha, vbeta, use_beta, bias1, act);
}

/* float64: relu is vectorised; sigmoid and tanh go through libm per element
 * because float64 exists here for gradient checks, where accuracy rules. */
static inline void store_row_f64(double *c, __m256d acc, __m256d valpha, __m256d vbeta, int use_beta,
                                 const double *bias, rp_act act)
{
    __m256d v = _mm256_mul_pd(acc, valpha);
    if (use_beta) v = _mm256_fmadd_pd(vbeta, _mm256_loadu_pd(c), v);
    if (bias) v = _mm256_add_pd(v, _mm256_loadu_pd(bias));
    if (act == RP_ACT_RELU) v = _mm256_max_pd(v, _mm256_setzero_pd());
    _mm256_storeu_pd(c, v);
    if (act == RP_ACT_SIGMOID || act == RP_ACT_TANH)
        for (int j = 0; j < 4; ++j) c[j] = rp_act_scalar_f64(act, c[j]);
}

void rp_ukernel_f64_avx2(int kc, const double *ap, const double *bp, long ldbp, double *c, int ldc,
                         double alpha, double beta, const double *bias, rp_act act)
{
    __m256d c00 = _mm256_setzero_pd(), c01 = _mm256_setzero_pd();
    __m256d c10 = _mm256_setzero_pd(), c11 = _mm256_setzero_pd();
    __m256d c20 = _mm256_setzero_pd(), c21 = _mm256_setzero_pd();
    __m256d c30 = _mm256_setzero_pd(), c31 = _mm256_setzero_pd();
    __m256d c40 = _mm256_setzero_pd(), c41 = _mm256_setzero_pd();
    __m256d c50 = _mm256_setzero_pd(), c51 = _mm256_setzero_pd();

    for (int p = 0; p < kc; ++p) {
        __m256d b0 = _mm256_loadu_pd(bp);
        __m256d b1 = _mm256_loadu_pd(bp + 4);
        __m256d a;
        a = _mm256_broadcast_sd(ap + 0); c00 = _mm256_fmadd_pd(a, b0, c00); c01 = _mm256_fmadd_pd(a, b1, c01);
        a = _mm256_broadcast_sd(ap + 1); c10 = _mm256_fmadd_pd(a, b0, c10); c11 = _mm256_fmadd_pd(a, b1, c11);
        a = _mm256_broadcast_sd(ap + 2); c20 = _mm256_fmadd_pd(a, b0, c20); c21 = _mm256_fmadd_pd(a, b1, c21);
        a = _mm256_broadcast_sd(ap + 3); c30 = _mm256_fmadd_pd(a, b0, c30); c31 = _mm256_fmadd_pd(a, b1, c31);
        a = _mm256_broadcast_sd(ap + 4); c40 = _mm256_fmadd_pd(a, b0, c40); c41 = _mm256_fmadd_pd(a, b1, c41);
        a = _mm256_broadcast_sd(ap + 5); c50 = _mm256_fmadd_pd(a, b0, c50); c51 = _mm256_fmadd_pd(a, b1, c51);
        ap += RP_MR_F64;
        bp += ldbp;
    }

    const __m256d valpha = _mm256_set1_pd(alpha), vbeta = _mm256_set1_pd(beta);
    const int use_beta = beta != 0.0;
    const double *bias1 = bias ? bias + 4 : NULL;
    store_row_f64(c + 0 * (long)ldc, c00, valpha, vbeta, use_beta, bias, act);
    store_row_f64(c + 0 * (long)ldc + 4, c01, valpha, vbeta, use_beta, bias1, act);
    store_row_f64(c + 1 * (long)ldc, c10, valpha, vbeta, use_beta, bias, act);
    store_row_f64(c + 1 * (long)ldc + 4, c11, valpha, vbeta, use_beta, bias1, act);
    store_row_f64(c + 2 * (long)ldc, c20, valpha, vbeta, use_beta, bias, act);
    store_row_f64(c + 2 * (long)ldc + 4, c21, valpha, vbeta, use_beta, bias1, act);
    store_row_f64(c + 3 * (long)ldc, c30, valpha, vbeta, use_beta, bias, act);
    store_row_f64(c + 3 * (long)ldc + 4, c31, valpha, vbeta, use_beta, bias1, act);
    store_row_f64(c + 4 * (long)ldc, c40, valpha, vbeta, use_beta, bias, act);
    store_row_f64(c + 4 * (long)ldc + 4, c41, valpha, vbeta, use_beta, bias1, act);
    store_row_f64(c + 5 * (long)ldc, c50, valpha, vbeta, use_beta, bias, act);
    store_row_f64(c + 5 * (long)ldc + 4, c51, valpha, vbeta, use_beta, bias1, act);
}

/* One row of C from one row of op(A) and a row-major op(B) (unit column
 * stride): c = act(alpha * a B + beta * c + bias). This is the whole GEMM
 * when there are only a row or two (single-sample inference), where packing
 * B would cost as much as the multiply. Blocks of 32 columns keep four
 * accumulators in registers while the rows of B stream past. */
void rp_gemm_row_f32_avx2(int n, int k, float alpha, const float *a, long csa, const float *b,
                          long rsb, float beta, float *c, const float *bias, rp_act act)
{
    const __m256 valpha = _mm256_set1_ps(alpha), vbeta = _mm256_set1_ps(beta);
    const int use_beta = beta != 0.0f;
    int j = 0;
    for (; j + 32 <= n; j += 32) {
        __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
        __m256 acc2 = _mm256_setzero_ps(), acc3 = _mm256_setzero_ps();
        const float *bcol = b + j;
        for (int p = 0; p < k; ++p) {
            const __m256 av = _mm256_set1_ps(a[p * csa]);
            const float *brow = bcol + p * rsb;
            acc0 = _mm256_fmadd_ps(av, _mm256_loadu_ps(brow), acc0);
            acc1 = _mm256_fmadd_ps(av, _mm256_loadu_ps(brow + 8), acc1);
            acc2 = _mm256_fmadd_ps(av, _mm256_loadu_ps(brow + 16), acc2);
            acc3 = _mm256_fmadd_ps(av, _mm256_loadu_ps(brow + 24), acc3);
        }
        store_row_f32(c + j, acc0, valpha, vbeta, use_beta, bias ? bias + j : NULL, act);
        store_row_f32(c + j + 8, acc1, valpha, vbeta, use_beta, bias ? bias + j + 8 : NULL, act);
        store_row_f32(c + j + 16, acc2, valpha, vbeta, use_beta, bias ? bias + j + 16 : NULL, act);
        store_row_f32(c + j + 24, acc3, valpha, vbeta, use_beta, bias ? bias + j + 24 : NULL, act);
    }
    for (; j + 8 <= n; j += 8) {
        __m256 acc = _mm256_setzero_ps();
        for (int p = 0; p < k; ++p)
            acc = _mm256_fmadd_ps(_mm256_set1_ps(a[p * csa]), _mm256_loadu_ps(b + j + p * rsb), acc);
        store_row_f32(c + j, acc, valpha, vbeta, use_beta, bias ? bias + j : NULL, act);
    }
    for (; j < n; ++j) {
        float dot = 0.0f;
        for (int p = 0; p < k; ++p) dot += a[p * csa] * b[j + p * rsb];
        float v = alpha * dot + (use_beta ? beta * c[j] : 0.0f) + (bias ? bias[j] : 0.0f);
        c[j] = rp_act_scalar_f32(act, v);
    }
}
