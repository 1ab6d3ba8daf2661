/* AVX2+FMA microkernels: 6x16 float32 and 6x8 float64, 12 accumulators each.
 * Compiled with -mavx2 -mfma; called only when the CPU reports both. */
#include <immintrin.h>
#include "gemm_internal.h"
#include "act_scalar.h"
#include "simd_avx2.h"
#include "transpose_avx2.h"

/* alpha * acc (+ beta * C) (+ bias), activation, store: the fused write-back. */
static inline void store_row_f32(float *c, __m256 acc, __m256 valpha, __m256 vbeta, int use_beta,
                                 const float *bias, rp_act act)
{
    __m256 v = _mm256_mul_ps(acc, valpha);
    if (use_beta) v = _mm256_fmadd_ps(vbeta, _mm256_loadu_ps(c), v);
    if (bias) v = _mm256_add_ps(v, _mm256_loadu_ps(bias));
    _mm256_storeu_ps(c, rp_act_f32x8(act, v));
}

/* The 6x16 float32 tile in twelve registers, shared by the two kernels
 * below that differ only in where the six A values of a step come from. */
#define TILE_F32_ZERO                                                           \
    __m256 c00 = _mm256_setzero_ps(), c01 = _mm256_setzero_ps();                \
    __m256 c10 = _mm256_setzero_ps(), c11 = _mm256_setzero_ps();                \
    __m256 c20 = _mm256_setzero_ps(), c21 = _mm256_setzero_ps();                \
    __m256 c30 = _mm256_setzero_ps(), c31 = _mm256_setzero_ps();                \
    __m256 c40 = _mm256_setzero_ps(), c41 = _mm256_setzero_ps();                \
    __m256 c50 = _mm256_setzero_ps(), c51 = _mm256_setzero_ps();

/* tile += (a0..a5, pointers to the six A values) x one 16-wide row of B at bp. */
#define TILE_F32_STEP(A0, A1, A2, A3, A4, A5)                                   \
    {                                                                           \
        const __m256 b0 = _mm256_loadu_ps(bp), b1 = _mm256_loadu_ps(bp + 8);   \
        __m256 a;                                                               \
        a = _mm256_broadcast_ss(A0); c00 = _mm256_fmadd_ps(a, b0, c00); c01 = _mm256_fmadd_ps(a, b1, c01); \
        a = _mm256_broadcast_ss(A1); c10 = _mm256_fmadd_ps(a, b0, c10); c11 = _mm256_fmadd_ps(a, b1, c11); \
        a = _mm256_broadcast_ss(A2); c20 = _mm256_fmadd_ps(a, b0, c20); c21 = _mm256_fmadd_ps(a, b1, c21); \
        a = _mm256_broadcast_ss(A3); c30 = _mm256_fmadd_ps(a, b0, c30); c31 = _mm256_fmadd_ps(a, b1, c31); \
        a = _mm256_broadcast_ss(A4); c40 = _mm256_fmadd_ps(a, b0, c40); c41 = _mm256_fmadd_ps(a, b1, c41); \
        a = _mm256_broadcast_ss(A5); c50 = _mm256_fmadd_ps(a, b0, c50); c51 = _mm256_fmadd_ps(a, b1, c51); \
    }

/* Row I of the tile (registers C0 | C1, 16 columns) through the write-back. */
#define TILE_F32_STORE_ROW(I, C0, C1, VALPHA, VBETA, USE_BETA)                               \
    store_row_f32(c + (I) * (long)ldc, C0, VALPHA, VBETA, USE_BETA, bias, act);              \
    store_row_f32(c + (I) * (long)ldc + 8, C1, VALPHA, VBETA, USE_BETA, bias1, act);

/* ROW(i, left register, right register, ...) for each of the six rows. */
#define TILE_F32_FOR_EACH_ROW(ROW, ...)                                         \
    ROW(0, c00, c01, __VA_ARGS__)                                               \
    ROW(1, c10, c11, __VA_ARGS__)                                               \
    ROW(2, c20, c21, __VA_ARGS__)                                               \
    ROW(3, c30, c31, __VA_ARGS__)                                               \
    ROW(4, c40, c41, __VA_ARGS__)                                               \
    ROW(5, c50, c51, __VA_ARGS__)

#define TILE_F32_STORE(VALPHA, VBETA, USE_BETA)                                 \
    {                                                                           \
        const float *bias1 = bias ? bias + 8 : NULL;                            \
        TILE_F32_FOR_EACH_ROW(TILE_F32_STORE_ROW, VALPHA, VBETA, USE_BETA)      \
    }

/* The write-back of nearly every call: alpha 1, C overwritten or added to,
 * bias or not, relu or no activation. One branch picks the variant and the
 * twelve stores then run with no test between them, where the general one
 * re-tests beta, bias and the activation per store and spills the scale
 * vectors: measured ~3% of a kc = 256 call on its own. The sums are those of
 * the general write-back (fma(1, C, acc) == C + acc, one rounding each), so
 * results do not change. */
static inline __attribute__((always_inline)) void store_row_f32_simple(float *c, __m256 acc,
                                                                         int accumulate,
                                                                         const float *bias,
                                                                         int relu)
{
    __m256 v = acc;
    if (accumulate) v = _mm256_add_ps(_mm256_loadu_ps(c), v);
    if (bias) v = _mm256_add_ps(v, _mm256_loadu_ps(bias));
    if (relu) v = _mm256_max_ps(_mm256_setzero_ps(), v);   /* NaN stays NaN */
    _mm256_storeu_ps(c, v);
}

/* The bias of the right half of a row; a function, not "(BIAS) ? (BIAS) + 8 : NULL",
 * because BIAS is a literal NULL in two variants and clang warns about
 * arithmetic on it in the branch never taken (-Wnull-pointer-arithmetic). */
static inline __attribute__((always_inline)) const float *bias_right_half(const float *bias)
{
    return bias ? bias + 8 : NULL;
}

#define TILE_F32_STORE_SIMPLE_ROW(I, C0, C1, ACCUMULATE, BIAS, RELU)                      \
    store_row_f32_simple(c + (I) * (long)ldc, C0, ACCUMULATE, BIAS, RELU);                 \
    store_row_f32_simple(c + (I) * (long)ldc + 8, C1, ACCUMULATE, bias_right_half(BIAS), RELU);

#define TILE_F32_STORE_SIMPLE(ACCUMULATE, BIAS, RELU)                                    \
    {                                                                                    \
        TILE_F32_FOR_EACH_ROW(TILE_F32_STORE_SIMPLE_ROW, ACCUMULATE, BIAS, RELU)         \
    }

/* The four simple variants for one ACCUMULATE: bias and relu become
 * constants inside each branch, so each compiles to straight-line code. */
#define TILE_F32_STORE_SIMPLE_PICK(ACCUMULATE, RELU_TILE)                                  \
    if (!bias && !(RELU_TILE)) TILE_F32_STORE_SIMPLE(ACCUMULATE, (const float *)NULL, 0)   \
    else if (!bias) TILE_F32_STORE_SIMPLE(ACCUMULATE, (const float *)NULL, 1)              \
    else if (!(RELU_TILE)) TILE_F32_STORE_SIMPLE(ACCUMULATE, bias, 0)                      \
    else TILE_F32_STORE_SIMPLE(ACCUMULATE, bias, 1)

/* The whole write-back: a simple variant when one applies, else the general
 * one. */
#define TILE_F32_WRITE_BACK(ALPHA, BETA)                                                   \
    if ((ALPHA) == 1.0f && ((BETA) == 0.0f || (BETA) == 1.0f) &&                          \
        (act == RP_ACT_LINEAR || act == RP_ACT_RELU)) {                                   \
        const int relu_tile = act == RP_ACT_RELU;                                         \
        if ((BETA) == 0.0f) {                                                             \
            TILE_F32_STORE_SIMPLE_PICK(0, relu_tile)                                      \
        } else {                                                                          \
            TILE_F32_STORE_SIMPLE_PICK(1, relu_tile)                                      \
        }                                                                                 \
    } else {                                                                              \
        const __m256 valpha = _mm256_set1_ps(ALPHA), vbeta = _mm256_set1_ps(BETA);        \
        TILE_F32_STORE(valpha, vbeta, (BETA) != 0.0f)                                     \
    }

void rp_ukernel_f32_avx2(int kc, const float *ap, const float *bp, long ldbp, float *c, int ldc,
                         float alpha, float beta, const float *bias, rp_act act)
{
    /* The tile of C is written (and, for later depth blocks, read) after
     * the loop: asking for its lines now hides that miss behind the FMAs
     * (measured +2-3% at 1024^3, neutral on the layer shapes). */
    for (int i = 0; i < RP_MR_F32; ++i) _mm_prefetch((const char *)(c + (long)i * ldc), _MM_HINT_T0);
    TILE_F32_ZERO
    /* Unrolled by 4: +1-3% on every shape measured (GCC does not unroll at -O3). */
#pragma GCC unroll 4
    for (int p = 0; p < kc; ++p) {
        TILE_F32_STEP(ap + 0, ap + 1, ap + 2, ap + 3, ap + 4, ap + 5)
        ap += RP_MR_F32;
        bp += ldbp;
    }
    TILE_F32_WRITE_BACK(alpha, beta)
}

/* The 6x16 kernel with A read in place: six rows of a row-major A, rsa
 * apart, instead of a packed panel. A layer's forward reads its input, a
 * batch of a few hundred rows, this way: the six row pieces of a tile
 * (6 x kc values, a few KB) come into L1 with its first tile and stay for
 * the rest of the row of tiles, as a packed panel would, so nothing is
 * copied first. The sums are those of rp_ukernel_f32_avx2 on the packed
 * panel (the same products, in the same order). */
void rp_ukernel_f32_avx2_rows(int kc, const float *a, long rsa, const float *bp, long ldbp,
                              float *c, int ldc, float alpha, float beta, const float *bias,
                              rp_act act)
{
    for (int i = 0; i < RP_MR_F32; ++i) _mm_prefetch((const char *)(c + (long)i * ldc), _MM_HINT_T0);
    TILE_F32_ZERO
    /* (the step macro's broadcast register is called a) */
    const float *r0 = a, *r1 = r0 + rsa, *r2 = r1 + rsa, *r3 = r2 + rsa, *r4 = r3 + rsa,
                *r5 = r4 + rsa;
#pragma GCC unroll 4
    for (int p = 0; p < kc; ++p) {
        TILE_F32_STEP(r0 + p, r1 + p, r2 + p, r3 + p, r4 + p, r5 + p)
        bp += ldbp;
    }
    TILE_F32_WRITE_BACK(alpha, beta)
}

/* The 6x16 kernel with A read in place from a convolution's input instead
 * of a packed panel: A(i, p) = x[i * pixel_stride + offsets[p]], the six
 * pixels pixel_stride apart and patch entry p at offsets[p] from a pixel's
 * window. The six values of one p sit within a few lines of the input,
 * which stay in L1, so this costs no more per step than reading a packed
 * panel and saves gathering one, which cost as much as the multiply for
 * LeNet's second layer (150 x 16 per pixel). C is written with beta = 0. */
void rp_ukernel_f32_avx2_gather(int kc, const float *x, long pixel_stride, const int *offsets,
                                const float *bp, long ldbp, float *c, int ldc, const float *bias,
                                rp_act act)
{
    TILE_F32_ZERO
    const float *x1 = x + pixel_stride, *x2 = x1 + pixel_stride, *x3 = x2 + pixel_stride;
    const float *x4 = x3 + pixel_stride, *x5 = x4 + pixel_stride;
#pragma GCC unroll 4
    for (int p = 0; p < kc; ++p) {
        const int o = offsets[p];
        TILE_F32_STEP(x + o, x1 + o, x2 + o, x3 + o, x4 + o, x5 + o)
        bp += ldbp;
    }
    TILE_F32_WRITE_BACK(1.0f, 0.0f)
}

/* The transposed use of the same idea, for a convolution's dW: the 6x16
 * tile of C = sum over pixels of A(i, p) B(p, :), where pixel p is pixel ox
 * of line l, A(i, p) = line_x[l][ox * pixel_stride + offsets[i]] (six patch
 * entries read in place from the input) and B(p, :) = bp[p * ldbp ..] (dz,
 * the block's pixels in order). The depth is every pixel of `lines` lines
 * of ow pixels; C is written (beta = 0, no bias, no activation). */
void rp_ukernel_f32_avx2_gather_t(int lines, const float *const *line_x, int ow,
                                  long pixel_stride, const int *offsets, const float *bp,
                                  long ldbp, float *c, int ldc)
{
    TILE_F32_ZERO
    const int o0 = offsets[0], o1 = offsets[1], o2 = offsets[2];
    const int o3 = offsets[3], o4 = offsets[4], o5 = offsets[5];
    for (int l = 0; l < lines; ++l) {
        const float *xp = line_x[l];
#pragma GCC unroll 4
        for (int ox = 0; ox < ow; ++ox) {
            TILE_F32_STEP(xp + o0, xp + o1, xp + o2, xp + o3, xp + o4, xp + o5)
            xp += pixel_stride;
            bp += ldbp;
        }
    }
    TILE_F32_STORE_SIMPLE(0, (const float *)NULL, 0)
}

/* float64: relu is vectorised; sigmoid and tanh go through libm per element
 * because float64 exists here for gradient checks, where accuracy rules. */
static inline void store_row_f64(double *c, __m256d acc, __m256d valpha, __m256d vbeta, int use_beta,
                                 const double *bias, rp_act act)
{
    __m256d v = _mm256_mul_pd(acc, valpha);
    if (use_beta) v = _mm256_fmadd_pd(vbeta, _mm256_loadu_pd(c), v);
    if (bias) v = _mm256_add_pd(v, _mm256_loadu_pd(bias));
    if (act == RP_ACT_RELU) v = _mm256_max_pd(_mm256_setzero_pd(), v);   /* NaN stays NaN */
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
 * B would cost as much as the multiply.
 *
 * The rows of B stream past eight accumulators (64 columns): eight
 * independent FMA chains hide the FMA latency, and each row of B is read
 * 256 bytes at a time. The rows are rsb apart; prefetching the row
 * ROW_PREFETCH ahead measured ~5% faster on 784x256 (Zen 3), more distance
 * was slower. Narrower leftovers use one accumulator per 8 columns and a masked
 * load for the last 1..7 columns, so no column falls back to scalar code. */
#define ROW_PREFETCH 4

static inline __m256i tail_mask(int cols)
{
    return _mm256_cmpgt_epi32(_mm256_set1_epi32(cols), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}

void rp_gemm_row_f32_avx2(int n, int k, float alpha, const float *a, long csa, const float *b,
                          long rsb, float beta, float *c, const float *bias, rp_act act)
{
    const __m256 valpha = _mm256_set1_ps(alpha), vbeta = _mm256_set1_ps(beta);
    const int use_beta = beta != 0.0f;
    int j = 0;
    for (; j + 64 <= n; j += 64) {
        __m256 acc[8];
        for (int q = 0; q < 8; ++q) acc[q] = _mm256_setzero_ps();
        const float *bcol = b + j;
        for (int p = 0; p < k; ++p) {
            const __m256 av = _mm256_set1_ps(a[p * csa]);
            const float *brow = bcol + p * rsb;
#if ROW_PREFETCH > 0
            if (p + ROW_PREFETCH < k) {
                const char *ahead = (const char *)(brow + ROW_PREFETCH * rsb);
                _mm_prefetch(ahead, _MM_HINT_T0);
                _mm_prefetch(ahead + 64, _MM_HINT_T0);
                _mm_prefetch(ahead + 128, _MM_HINT_T0);
                _mm_prefetch(ahead + 192, _MM_HINT_T0);
            }
#endif
            for (int q = 0; q < 8; ++q)
                acc[q] = _mm256_fmadd_ps(av, _mm256_loadu_ps(brow + 8 * q), acc[q]);
        }
        for (int q = 0; q < 8; ++q)
            store_row_f32(c + j + 8 * q, acc[q], valpha, vbeta, use_beta,
                          bias ? bias + j + 8 * q : NULL, act);
    }
    /* 1..63 columns left: 8-column groups plus a masked group. Four partial
     * sums over k (p mod 4) keep four FMA chains going even for one group. */
    for (; j < n; j += 8) {
        const int cols = n - j < 8 ? n - j : 8;
        const __m256i mask = tail_mask(cols);
        __m256 s0 = _mm256_setzero_ps(), s1 = _mm256_setzero_ps();
        __m256 s2 = _mm256_setzero_ps(), s3 = _mm256_setzero_ps();
        const float *bcol = b + j;
        int p = 0;
        for (; p + 4 <= k; p += 4) {
            s0 = _mm256_fmadd_ps(_mm256_set1_ps(a[p * csa]), _mm256_maskload_ps(bcol + p * rsb, mask), s0);
            s1 = _mm256_fmadd_ps(_mm256_set1_ps(a[(p + 1) * csa]),
                                 _mm256_maskload_ps(bcol + (p + 1) * rsb, mask), s1);
            s2 = _mm256_fmadd_ps(_mm256_set1_ps(a[(p + 2) * csa]),
                                 _mm256_maskload_ps(bcol + (p + 2) * rsb, mask), s2);
            s3 = _mm256_fmadd_ps(_mm256_set1_ps(a[(p + 3) * csa]),
                                 _mm256_maskload_ps(bcol + (p + 3) * rsb, mask), s3);
        }
        for (; p < k; ++p)
            s0 = _mm256_fmadd_ps(_mm256_set1_ps(a[p * csa]), _mm256_maskload_ps(bcol + p * rsb, mask), s0);
        const __m256 acc = _mm256_add_ps(_mm256_add_ps(s0, s1), _mm256_add_ps(s2, s3));
        if (cols == 8) {
            store_row_f32(c + j, acc, valpha, vbeta, use_beta, bias ? bias + j : NULL, act);
        } else {
            __m256 v = _mm256_mul_ps(acc, valpha);
            if (use_beta) v = _mm256_fmadd_ps(vbeta, _mm256_maskload_ps(c + j, mask), v);
            if (bias) v = _mm256_add_ps(v, _mm256_maskload_ps(bias + j, mask));
            _mm256_maskstore_ps(c + j, mask, rp_act_f32x8(act, v));
        }
    }
}

/* The packed A panel of six rows of a row-major A: ap[p * 6 + i] = row i's
 * value p, for p < kc. Eight steps at a time: six row vectors (and two
 * zero ones) transposed in registers into eight columns, each stored as
 * eight floats whose last two are overwritten by the next column's store;
 * the panel's very last column is stored as exactly six, so nothing is
 * written past the panel (the next one may belong to another thread). */
void rp_pack_a_rows6_f32_avx2(int kc, const float *a, long rsa, float *ap)
{
    int p0 = 0;
    for (; p0 + 8 <= kc; p0 += 8) {
        __m256 row[8], col[8];
        for (int i = 0; i < 6; ++i) row[i] = _mm256_loadu_ps(a + i * rsa + p0);
        row[6] = row[7] = _mm256_setzero_ps();
        rp_transpose_8x8_ps(row, col);
        float *dst = ap + (long)p0 * 6;
        for (int p = 0; p < 7; ++p) _mm256_storeu_ps(dst + p * 6, col[p]);
        if (p0 + 8 < kc) {
            _mm256_storeu_ps(dst + 42, col[7]);
        } else {
            _mm_storeu_ps(dst + 42, _mm256_castps256_ps128(col[7]));
            _mm_storel_pi((__m64 *)(dst + 46), _mm256_extractf128_ps(col[7], 1));
        }
    }
    for (; p0 < kc; ++p0)
        for (int i = 0; i < 6; ++i) ap[(long)p0 * 6 + i] = a[i * rsa + p0];
}
