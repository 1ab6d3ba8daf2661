/* 2-D convolution over NHWC images: im2col into a caller-supplied workspace,
 * then the blocked GEMM with bias + activation fused into its write-back.
 * Backward recomputes the column matrix (chunk by chunk) instead of keeping
 * it from the forward pass: one workspace then serves every layer, at the
 * price of one extra memory-bound gather per backward.
 *
 * When a batch has enough output lines, forward and backward run as one
 * parallel region over blocks of lines: each block is gathered and
 * multiplied by one-thread GEMMs while it is in cache, and dW/db are summed
 * per block, then added in block order. Otherwise im2col, the threaded GEMM
 * and col2im run one after another. Every result is independent of the
 * thread count: blocks depend on the geometry and batch only, im2col and dz
 * are elementwise, col2im gives each thread whole images, and the sums run
 * in a fixed order.
 *
 * The element-type dependent part is written once, below the #else, and
 * this file includes itself twice to instantiate it for float and double
 * (the same scheme as gemm.c + gemm_driver.inc, kept in one file).
 */
#ifndef RP_CONV_TEMPLATE

#include <stdlib.h>
#include <string.h>
#include "retroprop/conv.h"
#include "retroprop/gemm.h"
#include "retroprop/runtime.h"
#include "act_internal.h"
#include "act_scalar.h"
#include "gemm_internal.h"
#include "conv_internal.h"
#ifdef RETROPROP_HAVE_OPENMP
#include <omp.h>
#endif

int rp_conv2d_is_pointwise(const rp_conv2d_geom *g)
{
    return g->kh == 1 && g->kw == 1 && g->stride_h == 1 && g->stride_w == 1 &&
           g->pad_top == 0 && g->pad_left == 0 && g->oh == g->h && g->ow == g->w;
}

/* The runs im2col copies are short (often 3 to 15 values); GCC would
 * turn those copy loops into memcpy calls, which cost more than the copy. */
#if defined(__GNUC__) && !defined(__clang__)
#define RP_INLINE_COPIES __attribute__((optimize("no-tree-loop-distribute-patterns")))
#else
#define RP_INLINE_COPIES
#endif

/* dW is reduced in this many row blocks (see conv_weight_grad). */
#define RP_CONV_DW_BLOCKS 16

/* The fused loops (conv_forward_blocks, conv_backward_blocks) cut a chunk
 * into blocks of whole output lines of about RP_CONV_BLOCK_ROWS column-matrix
 * rows (a block's columns then stay in L2 between im2col and its GEMMs), at
 * most RP_CONV_MAX_BLOCKS blocks, and are used when there are at least
 * RP_CONV_MIN_BLOCKS; the backward partial sums (a dW and db per block of
 * the largest chunk) are bounded by RP_CONV_PARTIALS_MAX values. */
#define RP_CONV_BLOCK_ROWS 512
#define RP_CONV_MAX_BLOCKS 64
#define RP_CONV_MIN_BLOCKS 8
#define RP_CONV_PARTIALS_MAX ((size_t)1 << 20)
#define RP_CONV_BLOCK_MULTIPLE 8   /* divides RP_CONV_MAX_BLOCKS */

/* Output lines (image, oy) per block of the fused loops, or 0 when the chunk
 * of count images gives fewer than RP_CONV_MIN_BLOCKS blocks (the threaded
 * GEMM over the whole chunk then splits the work better). */
static long lines_per_block(const rp_conv2d_geom *g, int count)
{
    const long lines = (long)count * g->oh;
    long lpb = (RP_CONV_BLOCK_ROWS + (long)g->ow - 1) / g->ow;
    const long min_lpb = (lines + RP_CONV_MAX_BLOCKS - 1) / RP_CONV_MAX_BLOCKS;
    if (lpb < min_lpb) lpb = min_lpb;
    const long blocks = (lines + lpb - 1) / lpb;
    if (blocks < RP_CONV_MIN_BLOCKS) return 0;
    /* Then equal blocks, a multiple of RP_CONV_BLOCK_MULTIPLE of them, so
     * that 2, 4 or 8 threads get the same work: LeNet's second layer was
     * 12 blocks of 52 lines and one of 16, 7 blocks against 6 on two
     * threads, one thread idle for a quarter of the layer. (The block count
     * never depends on the thread count, so neither do the results.) */
    const long even = (blocks + RP_CONV_BLOCK_MULTIPLE - 1) / RP_CONV_BLOCK_MULTIPLE
                      * RP_CONV_BLOCK_MULTIPLE;
    return (lines + even - 1) / even;
}

/* A buffer of the calling thread, grown on demand and kept between calls
 * (as the GEMM's packing buffers): room for `bytes`, or NULL if out of memory. */
static void *reserve_thread_buffer(void **buffer, size_t *capacity, size_t bytes)
{
    if (*capacity < bytes) {
        free(*buffer);
        *buffer = malloc(bytes);
        *capacity = *buffer ? bytes : 0;
    }
    return *buffer;
}

/* Below RP_ELEMENTWISE_PARALLEL_MIN elements a parallel region costs more than it saves. */
static int threads_for(double elements)
{
    return elements < (double)RP_ELEMENTWISE_PARALLEL_MIN ? 1 : rp_get_num_threads();
}

/* Direct path for convolutions with few filters and a short patch (LeNet's
 * first layer: 1 channel, 5x5, 6 filters). There the im2col GEMM is a poor
 * fit: the 16-wide microkernel would be mostly padding for 6 filters, and
 * the dW GEMM (patch x filters, both tiny) spends its time packing. Instead
 * a block's column matrix is gathered transposed (one row of pixels per
 * patch tap, contiguous for stride 1), and the kernels below vectorise over
 * pixels. Taken for filters <= RP_DIRECT_FILTERS and patch <= RP_DIRECT_PATCH
 * (RP_CONV_ALGO_DIRECT, conv_select.c). */

/* The direct kernels' bodies are inlined twice: into a wrapper compiled for
 * AVX2+FMA, taken when the runtime uses AVX2 (as the GEMM microkernels), and
 * into a baseline one. */
#if defined(__GNUC__) && defined(__x86_64__) && defined(RETROPROP_HAVE_AVX2)
#define RP_DIRECT_AVX2 1
#define RP_TARGET_AVX2 __attribute__((target("avx2,fma")))
#endif
#define RP_ALWAYS_INLINE static inline __attribute__((always_inline))

/* 16-byte vectors of GCC/Clang (SSE2, NEON, ...) for the direct forward of
 * builds and CPUs without AVX2 (conv_forward_direct_vec). */
#if defined(__GNUC__) || defined(__clang__)
#define RP_CONV_VECTORS 1
typedef float rp_conv_v4f __attribute__((vector_size(16)));
typedef double rp_conv_v2d __attribute__((vector_size(16)));
#endif

#ifdef RP_DIRECT_AVX2
#include <immintrin.h>
#include "transpose_avx2.h"

/* acc[f] += w[f] * column for the 8 (zero-padded) filters: 8 pixels of one
 * tap times each filter's weight of that tap. */
RP_TARGET_AVX2 RP_ALWAYS_INLINE
void fma_8_filters(__m256 acc[8], const float *w, __m256 column)
{
    for (int f = 0; f < 8; ++f)
        acc[f] = _mm256_fmadd_ps(_mm256_broadcast_ss(w + f), column, acc[f]);
}

/* Writes the first nj pixels of an 8 pixels x 8 filters tile of sums (acc[f]
 * holds filter f) as NHWC rows of `filters` channels at y, with the
 * activation: relu in registers, the others through the scalar function. */
RP_TARGET_AVX2 RP_ALWAYS_INLINE
void store_pixels_8x8(__m256 acc[8], rp_act act, int nj, int filters, float *y)
{
    float out[8][8] __attribute__((aligned(32)));
    for (int f = 0; f < 8; ++f) {
        const __m256 v = act == RP_ACT_RELU ? _mm256_max_ps(_mm256_setzero_ps(), acc[f]) : acc[f];
        _mm256_store_ps(out[f], v);
    }
    if (act == RP_ACT_LINEAR || act == RP_ACT_RELU) {
        for (int j = 0; j < nj; ++j)
            for (int f = 0; f < filters; ++f) y[j * filters + f] = out[f][j];
    } else {
        for (int j = 0; j < nj; ++j)
            for (int f = 0; f < filters; ++f)
                y[j * filters + f] = rp_act_scalar_f32(act, out[f][j]);
    }
}

/* float32 direct forward: 8 pixels x 8 filters of sums in 8 registers; the
 * last partial group of pixels is copied, zero-padded, to a local buffer. */
RP_TARGET_AVX2
static void direct_forward_avx2_f32(int patch, int filters, long rows, const float *colT,
                                    const float *w, const float *b, rp_act act, float *y)
{
    float wpad[RP_DIRECT_PATCH * 8], tail[RP_DIRECT_PATCH * 8], bpad[8];
    for (int k = 0; k < patch; ++k)
        for (int f = 0; f < 8; ++f) wpad[k * 8 + f] = f < filters ? w[k * filters + f] : 0.0f;
    for (int f = 0; f < 8; ++f) bpad[f] = b && f < filters ? b[f] : 0.0f;
    for (long p0 = 0; p0 < rows; p0 += 8) {
        const int nj = rows - p0 < 8 ? (int)(rows - p0) : 8;
        const float *src = colT + p0;
        long ld = rows;
        if (nj < 8) {
            for (int k = 0; k < patch; ++k)
                for (int j = 0; j < 8; ++j) tail[k * 8 + j] = j < nj ? src[k * rows + j] : 0.0f;
            src = tail;
            ld = 8;
        }
        __m256 acc[8];
        for (int f = 0; f < 8; ++f) acc[f] = _mm256_set1_ps(bpad[f]);
        for (int k = 0; k < patch; ++k) {
            fma_8_filters(acc, wpad + k * 8, _mm256_loadu_ps(src + k * ld));
        }
        store_pixels_8x8(acc, act, nj, filters, y + p0 * filters);
    }
}

/* Single-channel, unit-stride-along-width, undilated-along-width float32
 * convolutions (LeNet's first layer) skip the transposed column matrix too:
 * for each output line the kh input rows it reads are copied, zero-padded,
 * into a small buffer, and 8 consecutive output pixels of tap (ky, kx) are
 * one unaligned load from row ky at offset ox + kx. RP_ROWS_MAX bounds that
 * buffer (kept on the stack). */
#define RP_ROWS_MAX 8192
/* The first layer's dW gathers this many floats of rows and dz per pass. */
#define RP_LINES_BUF 16384

static int use_direct_rows(const rp_conv2d_geom *g)
{
    return g->c == 1 && g->stride_w == 1 && g->dilation_w == 1 &&
           (long)g->kh * ((long)g->ow + g->kw + 8) <= RP_ROWS_MAX &&
           8L * ((long)g->ow + 8) <= RP_ROWS_MAX && rp_simd_in_use() == RP_SIMD_AVX2;
}

/* rows[ky * rw + t] = x(img, iy0 + ky * dilation_h, t - pad_left), 0 outside the image. */
static void direct_line_rows_f32(const rp_conv2d_geom *g, const float *x, long img, int oy,
                                 long rw, float *rows)
{
    const float *ximg = x + img * ((long)g->h * g->w);
    const long iy0 = (long)oy * g->stride_h - g->pad_top;
    for (int ky = 0; ky < g->kh; ++ky) {
        const long iy = iy0 + (long)ky * g->dilation_h;
        float *r = rows + ky * rw;
        if (iy < 0 || iy >= g->h) {
            for (long t = 0; t < rw; ++t) r[t] = 0.0f;
            continue;
        }
        /* t in [pad_left, pad_left + w) holds the image row, the rest zeros */
        const float *xrow = ximg + (long)iy * g->w;
        const long lo = g->pad_left < rw ? g->pad_left : rw;
        const long hi = g->pad_left + g->w < rw ? g->pad_left + g->w : rw;
        for (long t = 0; t < lo; ++t) r[t] = 0.0f;
        for (long t = lo; t < hi; ++t) r[t] = xrow[t - g->pad_left];
        for (long t = hi; t < rw; ++t) r[t] = 0.0f;
    }
}

/* 16 pixels from ox0 of one output line, for nf <= 6 filters (a constant
 * where inlined): each filter's weight, broadcast once, serves two vectors
 * of pixels, so a tap costs 2 + nf loads for 2 * nf FMAs (the 8-pixel loop
 * below needs 9 loads for 8). */
RP_TARGET_AVX2 RP_ALWAYS_INLINE
void direct_line_forward_16_avx2_f32(const rp_conv2d_geom *g, const float *rows, long rw,
                                     const float *wpad, const float *bpad, rp_act act, int ox0,
                                     int nf, float *y)
{
    __m256 lo[6], hi[6];
    for (int f = 0; f < nf; ++f) lo[f] = hi[f] = _mm256_set1_ps(bpad[f]);
    const float *wk = wpad;
    for (int ky = 0; ky < g->kh; ++ky) {
        const float *r = rows + ky * rw + ox0;
        for (int kx = 0; kx < g->kw; ++kx, wk += 8) {
            const __m256 v0 = _mm256_loadu_ps(r + kx), v1 = _mm256_loadu_ps(r + kx + 8);
#pragma GCC unroll 6
            for (int f = 0; f < nf; ++f) {
                const __m256 wf = _mm256_broadcast_ss(wk + f);
                lo[f] = _mm256_fmadd_ps(wf, v0, lo[f]);
                hi[f] = _mm256_fmadd_ps(wf, v1, hi[f]);
            }
        }
    }
    const int nj = g->ow - ox0 < 16 ? g->ow - ox0 : 16;
    __m256 acc[8];
    for (int f = 0; f < 8; ++f) acc[f] = f < nf ? lo[f] : _mm256_setzero_ps();
    store_pixels_8x8(acc, act, 8, nf, y + (long)ox0 * nf);
    for (int f = 0; f < 8; ++f) acc[f] = f < nf ? hi[f] : _mm256_setzero_ps();
    store_pixels_8x8(acc, act, nj - 8, nf, y + (long)(ox0 + 8) * nf);
}

/* One output line of act(conv + b): 8 pixels x 8 filters of sums in registers
 * (16 pixels at a time for up to 6 filters, while more than 8 remain: the
 * 16-pixel kernel then reads at most ow + kw + 6 values of a row, within rw). */
RP_TARGET_AVX2
static void direct_line_forward_avx2_f32(const rp_conv2d_geom *g, const float *rows, long rw,
                                         const float *wpad, const float *bpad, rp_act act,
                                         float *y)
{
    const int filters = g->filters, ow = g->ow;
    int ox0 = 0;
    if (filters <= 6) {
        for (; ow - ox0 > 8; ox0 += 16) {
            switch (filters) {
            case 1: direct_line_forward_16_avx2_f32(g, rows, rw, wpad, bpad, act, ox0, 1, y); break;
            case 2: direct_line_forward_16_avx2_f32(g, rows, rw, wpad, bpad, act, ox0, 2, y); break;
            case 3: direct_line_forward_16_avx2_f32(g, rows, rw, wpad, bpad, act, ox0, 3, y); break;
            case 4: direct_line_forward_16_avx2_f32(g, rows, rw, wpad, bpad, act, ox0, 4, y); break;
            case 5: direct_line_forward_16_avx2_f32(g, rows, rw, wpad, bpad, act, ox0, 5, y); break;
            default: direct_line_forward_16_avx2_f32(g, rows, rw, wpad, bpad, act, ox0, 6, y); break;
            }
        }
    }
    for (; ox0 < ow; ox0 += 8) {
        __m256 acc[8];
        for (int f = 0; f < 8; ++f) acc[f] = _mm256_set1_ps(bpad[f]);
        const float *wk = wpad;
        for (int ky = 0; ky < g->kh; ++ky) {
            const float *r = rows + ky * rw + ox0;
            for (int kx = 0; kx < g->kw; ++kx, wk += 8) {
                fma_8_filters(acc, wk, _mm256_loadu_ps(r + kx));
            }
        }
        const int nj = ow - ox0 < 8 ? ow - ox0 : 8;
        store_pixels_8x8(acc, act, nj, filters, y + (long)ox0 * filters);
    }
}

/* dzT[f * owp + ox] = dz[ox * filters + f] for one line of ow pixels of
 * filters <= 8 values each, and zeros for ox in [ow, owp): 8 pixels at a
 * time, loaded as 8 rows (masked to the filters), transposed in registers. */
RP_TARGET_AVX2
static void transpose_line_avx2_f32(const float *dz, int ow, int filters, int owp, float *dzT)
{
    const __m256i mask = _mm256_cmpgt_epi32(_mm256_set1_epi32(filters),
                                            _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
    for (int ox0 = 0; ox0 < owp; ox0 += 8) {
        __m256 r[8];
        for (int j = 0; j < 8; ++j)
            r[j] = ox0 + j < ow ? _mm256_maskload_ps(dz + (long)(ox0 + j) * filters, mask)
                                : _mm256_setzero_ps();
        __m256 c[8];
        rp_transpose_8x8_ps(r, c);
        for (int f = 0; f < filters; ++f) _mm256_store_ps(dzT + (long)f * owp + ox0, c[f]);
    }
}

/* Sum of the 8 lanes of v, in a fixed order. */
RP_TARGET_AVX2 RP_ALWAYS_INLINE
float sum_lanes(__m256 v)
{
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

/* Two taps (k0, k0 + 1; one when k1 is 0) x nf filters (a constant where
 * inlined) of the single-channel dW below: 2 * nf sums of 8 pixel lanes. */
RP_TARGET_AVX2 RP_ALWAYS_INLINE
void lines_weight_grad_taps_avx2_f32(const float *rows, long rows_stride, long off0, long off1,
                                     int lines, const float *dzT, long dzT_stride, int owp,
                                     int nf, int two, float *acc0, float *acc1)
{
    __m256 a0[8], a1[8];
    for (int f = 0; f < nf; ++f) a0[f] = a1[f] = _mm256_setzero_ps();
    for (int l = 0; l < lines; ++l) {
        const float *r0 = rows + l * rows_stride + off0, *r1 = rows + l * rows_stride + off1;
        const float *d = dzT + l * dzT_stride;
        for (int ox = 0; ox < owp; ox += 8) {
            const __m256 v0 = _mm256_loadu_ps(r0 + ox);
            const __m256 v1 = two ? _mm256_loadu_ps(r1 + ox) : v0;
#pragma GCC unroll 8
            for (int f = 0; f < nf; ++f) {
                const __m256 dz = _mm256_load_ps(d + (long)f * owp + ox);
                a0[f] = _mm256_fmadd_ps(v0, dz, a0[f]);
                if (two) a1[f] = _mm256_fmadd_ps(v1, dz, a1[f]);
            }
        }
    }
    for (int f = 0; f < nf; ++f) acc0[f] += sum_lanes(a0[f]);
    if (two)
        for (int f = 0; f < nf; ++f) acc1[f] += sum_lanes(a1[f]);
}

/* dW and db of a single-channel layer over `lines` output lines, vectorised
 * over pixels: acc[k * 8 + f] += sum over the lines' pixels of the input
 * value under tap k times dz of filter f, dbacc[f] += sum of dz of f. Line
 * l's kh input rows start at rows + l * rows_stride (rw apart, zero padded)
 * and its dz at dzT + l * dzT_stride, transposed: filter f's owp (ow rounded
 * up to 8, zeros past ow) values at f * owp, 32-byte aligned. Eight pixels
 * of a tap are one unaligned load from its row, so a pass over two taps
 * costs 2 + filters loads for 2 * filters FMAs, all in registers until the
 * lines are done. */
RP_TARGET_AVX2
static void direct_lines_weight_grad_avx2_f32(const rp_conv2d_geom *g, const float *rows, long rw,
                                              long rows_stride, int lines, const float *dzT,
                                              long dzT_stride, int owp, float *acc, float *dbacc)
{
    const int taps = g->kh * g->kw, filters = g->filters;
    int step;
    for (int k0 = 0; k0 < taps; k0 += step) {
        /* two taps a pass while their 2 x filters sums fit in registers */
        const int two = k0 + 1 < taps && filters <= 6;
        step = two ? 2 : 1;
        const long off0 = (k0 / g->kw) * rw + k0 % g->kw;
        const long off1 = two ? ((k0 + 1) / g->kw) * rw + (k0 + 1) % g->kw : off0;
        float *acc0 = acc + (long)k0 * 8, *acc1 = acc + (long)(k0 + 1) * 8;
        switch (filters) {
#define RP_TAPS_CASE(nf)                                                                   \
        case nf:                                                                           \
            if (two)                                                                       \
                lines_weight_grad_taps_avx2_f32(rows, rows_stride, off0, off1, lines, dzT,  \
                                                dzT_stride, owp, nf, 1, acc0, acc1);        \
            else                                                                           \
                lines_weight_grad_taps_avx2_f32(rows, rows_stride, off0, off1, lines, dzT,  \
                                                dzT_stride, owp, nf, 0, acc0, acc1);        \
            break;
        RP_TAPS_CASE(1) RP_TAPS_CASE(2) RP_TAPS_CASE(3) RP_TAPS_CASE(4)
        RP_TAPS_CASE(5) RP_TAPS_CASE(6) RP_TAPS_CASE(7)
        default: RP_TAPS_CASE(8)
#undef RP_TAPS_CASE
        }
    }
    for (int f = 0; f < filters; ++f) {
        __m256 s = _mm256_setzero_ps();
        for (int l = 0; l < lines; ++l) {
            const float *d = dzT + l * dzT_stride + (long)f * owp;
            for (int ox = 0; ox < owp; ox += 8) s = _mm256_add_ps(s, _mm256_load_ps(d + ox));
        }
        dbacc[f] += sum_lanes(s);
    }
}

/* float32 forward with filters a multiple of the microkernel width and a
 * patch of at most RP_PACKED_PATCH_MAX (LeNet's second layer: 150 x 16; a
 * 3x3 layer on up to 128 channels, whose panel of W, up to 72 KiB, streams
 * from L2 without the GEMM's depth blocking: measured 5-10% faster than the
 * GEMM path on 3x3 layers of 64 channels): the
 * column matrix is gathered straight into the microkernel's packed-A layout,
 * six pixels at a time, and W is read in place as B. This skips both the
 * column matrix and the GEMM's own packing copy of it. Taken as
 * RP_CONV_ALGO_IMPLICIT (conv_select.c, rp_conv_implicit_fits). */
static int use_packed_forward(const rp_conv2d_geom *g)
{
    return rp_conv_implicit_fits(g, (int)sizeof(float));
}

/* ap[p * RP_MR_F32] = column-matrix entry p of pixel (img, oy, ox). */
static void packed_pixel_f32(const rp_conv2d_geom *g, const float *x, long img, int oy, int ox,
                             float *ap)
{
    const int c = g->c, kw = g->kw;
    const long run = (long)kw * c;
    const float *ximg = x + img * ((long)g->h * g->w * c);
    const long iy0 = (long)oy * g->stride_h - g->pad_top, ix0 = (long)ox * g->stride_w - g->pad_left;
    const int row_inside = g->dilation_w == 1 && ix0 >= 0 && ix0 + kw <= g->w;
    for (int ky = 0; ky < g->kh; ++ky, ap += run * RP_MR_F32) {
        const long iy = iy0 + (long)ky * g->dilation_h;
        if (iy < 0 || iy >= g->h) {
            for (long j = 0; j < run; ++j) ap[j * RP_MR_F32] = 0.0f;
        } else if (row_inside) {
            const float *src = ximg + ((long)iy * g->w + ix0) * c;
            for (long j = 0; j < run; ++j) ap[j * RP_MR_F32] = src[j];
        } else {
            const float *xrow = ximg + (long)iy * g->w * c;
            for (int kx = 0; kx < kw; ++kx) {
                const long ix = ix0 + (long)kx * g->dilation_w;
                float *d = ap + (long)kx * c * RP_MR_F32;
                for (int ci = 0; ci < c; ++ci)
                    d[ci * RP_MR_F32] = ix < 0 || ix >= g->w ? 0.0f : xrow[(long)ix * c + ci];
            }
        }
    }
}

/* act(col W + b) for the rows pixels of output lines from l0 of the chunk at `first`. */
static void packed_forward_block_f32(const rp_conv2d_geom *g, const float *x, int first, long l0,
                                     long rows, const float *w, const float *b, rp_act act,
                                     float *y)
{
    const int patch = g->kh * g->kw * g->c, filters = g->filters;
    const long base = l0 * g->ow;       /* the block's first pixel within the chunk */
    float ap[RP_PACKED_PATCH_MAX * RP_MR_F32] __attribute__((aligned(32)));
    float acc[RP_MR_F32 * RP_NR_F32] __attribute__((aligned(32)));
    for (long r = 0; r < rows; r += RP_MR_F32) {
        const int nrow = rows - r < RP_MR_F32 ? (int)(rows - r) : RP_MR_F32;
        for (int i = 0; i < nrow; ++i) {
            const long pix = base + r + i, line = pix / g->ow;
            packed_pixel_f32(g, x, first + line / g->oh, (int)(line % g->oh),
                             (int)(pix % g->ow), ap + i);
        }
        for (int i = nrow; i < RP_MR_F32; ++i)
            for (int p = 0; p < patch; ++p) ap[p * RP_MR_F32 + i] = 0.0f;
        for (int j0 = 0; j0 < filters; j0 += RP_NR_F32) {
            const float *bias = b ? b + j0 : NULL;
            float *yt = y + r * filters + j0;
            if (nrow == RP_MR_F32) {
                rp_ukernel_f32_avx2(patch, ap, w + j0, filters, yt, filters, 1.0f, 0.0f, bias, act);
            } else {
                rp_ukernel_f32_avx2(patch, ap, w + j0, filters, acc, RP_NR_F32, 1.0f, 0.0f, bias,
                                    act);
                for (int i = 0; i < nrow; ++i)
                    for (int j = 0; j < RP_NR_F32; ++j) yt[i * filters + j] = acc[i * RP_NR_F32 + j];
            }
        }
    }
}

/* The packed forward's case where each output line's windows lie inside the
 * image horizontally (no left/right padding): then six pixels of a line are
 * read in place by rp_ukernel_f32_avx2_gather, with no packing at all.
 * Lines whose windows cross the top or bottom edge take the packed path. */
static int use_gather_forward(const rp_conv2d_geom *g)
{
    return use_packed_forward(g) && g->pad_left == 0 && g->ow >= RP_MR_F32 &&
           (long)(g->ow - 1) * g->stride_w + (long)(g->kw - 1) * g->dilation_w < g->w;
}

/* offsets[p] = position of patch entry p = (ky, kx, ci) from a window's first value. */
static void gather_offsets(const rp_conv2d_geom *g, int *offsets)
{
    int p = 0;
    for (int ky = 0; ky < g->kh; ++ky)
        for (int kx = 0; kx < g->kw; ++kx)
            for (int ci = 0; ci < g->c; ++ci)
                offsets[p++] = (int)(((long)ky * g->dilation_h * g->w + (long)kx * g->dilation_w) * g->c + ci);
}

/* act(conv + b) for output line (img, oy) into yline, or 0 when the line's
 * windows cross the top or bottom edge (the caller then packs). Six pixels
 * at a time; a last group of fewer is computed as the six pixels ending the
 * line, of which only the new ones are stored. */
static int gather_forward_line_f32(const rp_conv2d_geom *g, const float *x, long img, int oy,
                                   const int *offsets, const float *w, const float *b,
                                   rp_act act, float *yline)
{
    const long iy0 = (long)oy * g->stride_h - g->pad_top;
    if (iy0 < 0 || iy0 + (long)(g->kh - 1) * g->dilation_h >= g->h) return 0;
    const int patch = g->kh * g->kw * g->c, filters = g->filters, c = g->c;
    const long pixel_stride = (long)g->stride_w * c;
    const float *xline = x + img * ((long)g->h * g->w * c) + (long)iy0 * g->w * c;
    float acc[RP_MR_F32 * RP_NR_F32] __attribute__((aligned(32)));
    for (int ox0 = 0; ox0 < g->ow; ox0 += RP_MR_F32) {
        const int start = ox0 + RP_MR_F32 <= g->ow ? ox0 : g->ow - RP_MR_F32;
        const int skip = ox0 - start;          /* rows already stored by the last group */
        const float *xs = xline + start * pixel_stride;
        for (int j0 = 0; j0 < filters; j0 += RP_NR_F32) {
            const float *bias = b ? b + j0 : NULL;
            float *yt = yline + (long)start * filters + j0;
            if (skip == 0) {
                rp_ukernel_f32_avx2_gather(patch, xs, pixel_stride, offsets, w + j0, filters, yt,
                                           filters, bias, act);
            } else {
                rp_ukernel_f32_avx2_gather(patch, xs, pixel_stride, offsets, w + j0, filters, acc,
                                           RP_NR_F32, bias, act);
                for (int i = skip; i < RP_MR_F32; ++i)
                    memcpy(yt + (long)i * filters, acc + i * RP_NR_F32, RP_NR_F32 * sizeof(float));
            }
        }
    }
    return 1;
}

/* dW without a column matrix, for valid convolutions (every window inside
 * the image) with filters a multiple of 16 and a patch of at most RP_PACKED_PATCH_MAX
 * (LeNet's second layer): each 6 x 16 tile of dW reads its six patch
 * entries in place from the input, over all the block's pixels. */
#define RP_GATHER_LINES_MAX 1024
static int use_gather_weight_grad(const rp_conv2d_geom *g)
{
    return use_packed_forward(g) && g->pad_top == 0 && g->pad_left == 0 &&
           (long)(g->oh - 1) * g->stride_h + (long)(g->kh - 1) * g->dilation_h < g->h &&
           (long)(g->ow - 1) * g->stride_w + (long)(g->kw - 1) * g->dilation_w < g->w;
}

/* Zero padding keeps the in-place kernels above off: windows at the edges
 * of a line would read outside it. For the convolutions of the packed path
 * ("same" 3x3 layers with 16k filters: the usual CNN layer), a copy of a
 * chunk of images with the padding written out as zeros lets every line
 * take them anyway: the forward then packs no patch (a copy ~kh*kw times
 * smaller than the patches it replaces), and dW needs no column matrix. */
static int use_padded_copy(const rp_conv2d_geom *g)
{
    return use_packed_forward(g) && (g->pad_top > 0 || g->pad_left > 0 ||
           (long)(g->oh - 1) * g->stride_h + (long)(g->kh - 1) * g->dilation_h >= g->h ||
           (long)(g->ow - 1) * g->stride_w + (long)(g->kw - 1) * g->dilation_w >= g->w) &&
           g->ow >= RP_MR_F32;
}

/* The geometry of count images of g with their padding made part of them:
 * every window inside, no padding; the output size is unchanged. */
static rp_conv2d_geom padded_geometry(const rp_conv2d_geom *g, int count)
{
    rp_conv2d_geom p = *g;
    const long need_h = (long)(g->oh - 1) * g->stride_h + (long)(g->kh - 1) * g->dilation_h + 1;
    const long need_w = (long)(g->ow - 1) * g->stride_w + (long)(g->kw - 1) * g->dilation_w + 1;
    p.n = count;
    p.h = (int)(need_h > (long)g->pad_top + g->h ? need_h : (long)g->pad_top + g->h);
    p.w = (int)(need_w > (long)g->pad_left + g->w ? need_w : (long)g->pad_left + g->w);
    p.pad_top = p.pad_left = 0;
    return p;
}

static __thread void *padded_buffer = NULL;
static __thread size_t padded_capacity = 0;     /* bytes */

/* Images [first, first + count) of x copied into the thread's buffer with
 * their zero padding (geometry *gp from padded_geometry), or NULL when the
 * buffer cannot be had (the caller then takes the unpadded path). */
static const float *padded_images_f32(const rp_conv2d_geom *g, const float *x, int first,
                                      int count, rp_conv2d_geom *gp)
{
    *gp = padded_geometry(g, count);
    const long row = (long)gp->w * g->c, image = (long)gp->h * row;
    const size_t need = (size_t)count * (size_t)image;
    if (need > ((size_t)1 << 28)) return NULL;      /* over 1 GiB: not worth a copy */
    float *xp = (float *)reserve_thread_buffer(&padded_buffer, &padded_capacity,
                                               need * sizeof(float));
    if (!xp) return NULL;
    const long in_row = (long)g->w * g->c, in_image = (long)g->h * in_row;
    const long left = (long)g->pad_left * g->c, right = row - left - in_row;
    const int nt = threads_for((double)need);
    (void)nt;
#ifdef RETROPROP_HAVE_OPENMP
#pragma omp parallel for schedule(static) num_threads(nt)
#endif
    for (long r = 0; r < (long)count * gp->h; ++r) {
        const long img = r / gp->h, iy = r % gp->h - g->pad_top;
        float *dst = xp + img * image + (r % gp->h) * row;
        if (iy < 0 || iy >= g->h) {
            memset(dst, 0, sizeof(float) * (size_t)row);
            continue;
        }
        memset(dst, 0, sizeof(float) * (size_t)left);
        memcpy(dst + left, x + (first + img) * in_image + iy * in_row, sizeof(float) * (size_t)in_row);
        memset(dst + left + in_row, 0, sizeof(float) * (size_t)right);
    }
    return xp;
}

/* dx of a stride-1 convolution is itself a convolution: of dz, padded by
 * the kernel's extent less the forward's padding, with W turned by 180
 * degrees and its two channel axes swapped. Where that convolution takes
 * the padded in-place path, dx skips the column-gradient GEMM (of depth
 * `filters` only: a tile write-back every few steps) and col2im. Sets *gt
 * and returns 1 when it applies. */
static int transposed_geometry(const rp_conv2d_geom *g, rp_conv2d_geom *gt)
{
    if (g->stride_h != 1 || g->stride_w != 1) return 0;
    const long top = (long)(g->kh - 1) * g->dilation_h - g->pad_top;
    const long left = (long)(g->kw - 1) * g->dilation_w - g->pad_left;
    if (top < 0 || left < 0 || top > 0x7fffffffL || left > 0x7fffffffL) return 0;
    *gt = *g;
    gt->h = g->oh;
    gt->w = g->ow;
    gt->c = g->filters;
    gt->filters = g->c;
    gt->pad_top = (int)top;
    gt->pad_left = (int)left;
    gt->oh = g->h;
    gt->ow = g->w;
    /* (the forward of gt then takes the implicit path on a padded copy, or
     * Winograd: neither needs the column workspace) */
    const int algo = rp_conv2d_select(gt, (int)sizeof(float), RP_ACT_LINEAR);
    return algo == RP_CONV_ALGO_WINOGRAD ||
           (algo == RP_CONV_ALGO_IMPLICIT && use_padded_copy(gt) && lines_per_block(gt, g->n) > 0);
}

/* wt (kh, kw, filters, c) = w (kh, kw, c, filters) turned by 180 degrees,
 * channel axes swapped: the weights of the convolution above. */
static void transposed_weights_f32(const rp_conv2d_geom *g, const float *w, float *wt)
{
    const int c = g->c, filters = g->filters, taps = g->kh * g->kw;
    for (int t = 0; t < taps; ++t) {
        const float *src = w + (long)t * c * filters;
        float *dst = wt + (long)(taps - 1 - t) * filters * c;
        for (int ci = 0; ci < c; ++ci)
            for (int f = 0; f < filters; ++f) dst[(long)f * c + ci] = src[(long)ci * filters + f];
    }
}

/* pw (patch x filters, natural layout) = sum over lines [l0, l1) of the
 * chunk at `first` of col^T dz, with dz the block's (rows x filters). */
static void gather_weight_grad_block_f32(const rp_conv2d_geom *g, const float *x, int first,
                                         long l0, long l1, const int *offsets, const float *dz,
                                         float *pw)
{
    const int patch = g->kh * g->kw * g->c, filters = g->filters, c = g->c;
    const float *line_x[RP_GATHER_LINES_MAX];
    for (long l = l0; l < l1; ++l) {
        const long img = first + l / g->oh;
        const long iy0 = (l % g->oh) * g->stride_h;
        line_x[l - l0] = x + img * ((long)g->h * g->w * c) + (long)iy0 * g->w * c;
    }
    const long pixel_stride = (long)g->stride_w * c;
    float acc[RP_MR_F32 * RP_NR_F32] __attribute__((aligned(32)));
    for (int i0 = 0; i0 < patch; i0 += RP_MR_F32) {
        const int rows = patch - i0 < RP_MR_F32 ? patch - i0 : RP_MR_F32;
        int off6[RP_MR_F32];
        for (int r = 0; r < RP_MR_F32; ++r) off6[r] = offsets[i0 + (r < rows ? r : 0)];
        for (int j0 = 0; j0 < filters; j0 += RP_NR_F32) {
            float *ct = pw + (long)i0 * filters + j0;
            if (rows == RP_MR_F32) {
                rp_ukernel_f32_avx2_gather_t((int)(l1 - l0), line_x, g->ow, pixel_stride, off6,
                                             dz + j0, filters, ct, filters);
            } else {
                rp_ukernel_f32_avx2_gather_t((int)(l1 - l0), line_x, g->ow, pixel_stride, off6,
                                             dz + j0, filters, acc, RP_NR_F32);
                for (int r = 0; r < rows; ++r)
                    memcpy(ct + (long)r * filters, acc + r * RP_NR_F32, RP_NR_F32 * sizeof(float));
            }
        }
    }
}

/* float32 direct dW: per (tap, 4 filters), 4 sums of 8 lanes over the
 * pixels, each reduced in lane order, then the last rows % 8 pixels. */
RP_TARGET_AVX2
static void direct_weight_grad_avx2_f32(int patch, int filters, long rows, const float *colT,
                                        const float *dzT, float *dw)
{
    const long full = rows - rows % 8;
    float lanes[4][8] __attribute__((aligned(32)));
    for (int k = 0; k < patch; ++k) {
        const float *cv = colT + (long)k * rows;
        for (int f0 = 0; f0 < filters; f0 += 4) {
            const float *d[4];
            for (int i = 0; i < 4; ++i)
                d[i] = dzT + (long)(f0 + i < filters ? f0 + i : filters - 1) * rows;
            __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps();
            __m256 a2 = _mm256_setzero_ps(), a3 = _mm256_setzero_ps();
            for (long p = 0; p < full; p += 8) {
                const __m256 c = _mm256_loadu_ps(cv + p);
                a0 = _mm256_fmadd_ps(c, _mm256_loadu_ps(d[0] + p), a0);
                a1 = _mm256_fmadd_ps(c, _mm256_loadu_ps(d[1] + p), a1);
                a2 = _mm256_fmadd_ps(c, _mm256_loadu_ps(d[2] + p), a2);
                a3 = _mm256_fmadd_ps(c, _mm256_loadu_ps(d[3] + p), a3);
            }
            _mm256_store_ps(lanes[0], a0); _mm256_store_ps(lanes[1], a1);
            _mm256_store_ps(lanes[2], a2); _mm256_store_ps(lanes[3], a3);
            for (int i = 0; i < 4 && f0 + i < filters; ++i) {
                float sum = 0.0f;
                for (int j = 0; j < 8; ++j) sum += lanes[i][j];
                for (long p = full; p < rows; ++p) sum += cv[p] * d[i][p];
                dw[k * filters + f0 + i] = sum;
            }
        }
    }
}
#endif

#define RP_CONV_TEMPLATE 1
#define REAL float
#define REAL_IS_F32 1
#define FN(name) name##_f32
#ifdef RP_DIRECT_AVX2
#define DIRECT_AVX2_F32 1
#endif
#define GEMM rp_gemm_f32
#define GRAD_FROM_OUTPUT rp_act_grad_from_output_f32
#define ACT_SCALAR rp_act_scalar_f32
#define VEC rp_conv_v4f
#include "conv.c"
#undef VEC
#undef REAL
#undef REAL_IS_F32
#undef FN
#undef GEMM
#undef GRAD_FROM_OUTPUT
#undef ACT_SCALAR
#undef DIRECT_AVX2_F32

#define REAL double
#define FN(name) name##_f64
#define GEMM rp_gemm_f64
#define GRAD_FROM_OUTPUT rp_act_grad_from_output_f64
#define ACT_SCALAR rp_act_scalar_f64
#define VEC rp_conv_v2d
#include "conv.c"
#undef VEC
#undef REAL
#undef FN
#undef GEMM
#undef GRAD_FROM_OUTPUT
#undef ACT_SCALAR

#else /* RP_CONV_TEMPLATE: the body, instantiated per element type */

/* The column-matrix rows of output line (img, oy): ow rows of kh*kw*c values. */
RP_INLINE_COPIES
static void FN(im2col_line)(const rp_conv2d_geom *g, const REAL *x, long img, int oy, REAL *dst)
{
    const int c = g->c, kw = g->kw;
    const long run = (long)kw * c;                 /* one kernel row of one patch */
    const REAL *ximg = x + img * ((long)g->h * g->w * c);
    const long iy0 = (long)oy * g->stride_h - g->pad_top;
    for (int ox = 0; ox < g->ow; ++ox) {
        const long ix0 = (long)ox * g->stride_w - g->pad_left;
        /* With no dilation and the whole window row inside the image, the
         * kw * c values of one kernel row are one contiguous run of x. */
        const int row_inside = g->dilation_w == 1 && ix0 >= 0 && ix0 + kw <= g->w;
        for (int ky = 0; ky < g->kh; ++ky) {
            const long iy = iy0 + (long)ky * g->dilation_h;
            if (iy < 0 || iy >= g->h) {
                for (long j = 0; j < run; ++j) dst[j] = (REAL)0;
            } else if (row_inside) {
                const REAL *src = ximg + ((long)iy * g->w + ix0) * c;
                for (long j = 0; j < run; ++j) dst[j] = src[j];
            } else {
                const REAL *xrow = ximg + (long)iy * g->w * c;
                for (int kx = 0; kx < kw; ++kx) {
                    const long ix = ix0 + (long)kx * g->dilation_w;
                    REAL *d = dst + (long)kx * c;
                    if (ix < 0 || ix >= g->w) {
                        for (int ci = 0; ci < c; ++ci) d[ci] = (REAL)0;
                    } else {
                        const REAL *src = xrow + (long)ix * c;
                        for (int ci = 0; ci < c; ++ci) d[ci] = src[ci];
                    }
                }
            }
            dst += run;
        }
    }
}

void FN(rp_im2col_nhwc)(const rp_conv2d_geom *g, int first, int count, const REAL *x, REAL *col)
{
    const long row_len = (long)g->kh * g->kw * g->c;
    const long out_rows = (long)count * g->oh;     /* (image, oy) pairs */
    const int nt = threads_for((double)out_rows * g->ow * row_len);
    (void)nt;
#ifdef RETROPROP_HAVE_OPENMP
#pragma omp parallel for schedule(static) num_threads(nt)
#endif
    for (long img_oy = 0; img_oy < out_rows; ++img_oy)
        FN(im2col_line)(g, x, first + img_oy / g->oh, (int)(img_oy % g->oh),
                        col + img_oy * g->ow * row_len);
}

/* dimg (one image) += the scatter of its oh*ow column-matrix rows src. */
static void FN(col2im_image_add)(const rp_conv2d_geom *g, const REAL *src, REAL *dimg)
{
    const int c = g->c, kw = g->kw;
    for (int oy = 0; oy < g->oh; ++oy) {
        for (int ox = 0; ox < g->ow; ++ox) {
            const long iy0 = (long)oy * g->stride_h - g->pad_top;
            const long ix0 = (long)ox * g->stride_w - g->pad_left;
            /* as in im2col: a window row inside the image is one contiguous run */
            const int row_inside = g->dilation_w == 1 && ix0 >= 0 && ix0 + kw <= g->w;
            for (int ky = 0; ky < g->kh; ++ky) {
                const long iy = iy0 + (long)ky * g->dilation_h;
                if (iy < 0 || iy >= g->h) {
                    src += (long)kw * c;
                    continue;
                }
                REAL *drow = dimg + (long)iy * g->w * c;
                if (row_inside) {
                    REAL *dst = drow + (long)ix0 * c;
                    const long run = (long)kw * c;
                    for (long j = 0; j < run; ++j) dst[j] += src[j];
                    src += run;
                    continue;
                }
                for (int kx = 0; kx < kw; ++kx, src += c) {
                    const long ix = ix0 + (long)kx * g->dilation_w;
                    if (ix < 0 || ix >= g->w) continue;
                    REAL *dst = drow + (long)ix * c;
                    for (int ci = 0; ci < c; ++ci) dst[ci] += src[ci];
                }
            }
        }
    }
}

void FN(rp_col2im_nhwc_add)(const rp_conv2d_geom *g, int first, int count, const REAL *col, REAL *dx)
{
    const long row_len = (long)g->kh * g->kw * g->c;
    const long rows_per_image = (long)g->oh * g->ow;
    const long image_size = (long)g->h * g->w * g->c;
    const int nt = count < 2 ? 1 : threads_for((double)count * rows_per_image * row_len);
    (void)nt;
    /* One image per iteration: windows overlap only within an image, so each
     * element of dx has one writer and is summed in a fixed order. */
#ifdef RETROPROP_HAVE_OPENMP
#pragma omp parallel for schedule(static) num_threads(nt)
#endif
    for (int i = 0; i < count; ++i)
        FN(col2im_image_add)(g, col + (long)i * rows_per_image * row_len,
                             dx + (long)(first + i) * image_size);
}

/* Pixels per register block of the direct kernels: one 32-byte vector. */
#define PIX ((int)(32 / sizeof(REAL)))

/* colT[k * rows + r] = column-matrix entry (r, k) for the rows = (l1 - l0) * ow
 * pixels of output lines [l0, l1) of the chunk starting at image `first`. */
static void FN(im2colT_block)(const rp_conv2d_geom *g, const REAL *x, int first, long l0,
                              long l1, REAL *colT)
{
    const int c = g->c, ow = g->ow;
    const long rows = (l1 - l0) * ow;
    for (long l = l0; l < l1; ++l) {
        const long img = first + l / g->oh;
        const int oy = (int)(l % g->oh);
        const REAL *ximg = x + img * ((long)g->h * g->w * c);
        const long iy0 = (long)oy * g->stride_h - g->pad_top;
        REAL *base = colT + (l - l0) * ow;
        for (int ky = 0; ky < g->kh; ++ky) {
            const long iy = iy0 + (long)ky * g->dilation_h;
            const int row_inside = iy >= 0 && iy < g->h;
            for (int kx = 0; kx < g->kw; ++kx) {
                const long off = (long)kx * g->dilation_w - g->pad_left;
                /* ox range whose input column ix = ox * sw + off lies inside [0, w) */
                int lo = 0, hi = ow;
                while (lo < ow && (long)lo * g->stride_w + off < 0) ++lo;
                while (hi > lo && (long)(hi - 1) * g->stride_w + off >= g->w) --hi;
                for (int ci = 0; ci < c; ++ci) {
                    REAL *dst = base + ((long)(ky * g->kw + kx) * c + ci) * rows;
                    if (!row_inside) {
                        for (int ox = 0; ox < ow; ++ox) dst[ox] = (REAL)0;
                        continue;
                    }
                    const REAL *src = ximg + (long)iy * g->w * c + ci;
                    for (int ox = 0; ox < lo; ++ox) dst[ox] = (REAL)0;
                    if (g->stride_w == 1 && c == 1) {
                        /* the common case: a shifted copy of one input row */
                        const REAL *s = src + off;
                        for (int ox = lo; ox < hi; ++ox) dst[ox] = s[ox];
                    } else {
                        for (int ox = lo; ox < hi; ++ox)
                            dst[ox] = src[((long)ox * g->stride_w + off) * c];
                    }
                    for (int ox = hi; ox < ow; ++ox) dst[ox] = (REAL)0;
                }
            }
        }
    }
}

/* w (patch x filters) and b as RP_DIRECT_FILTERS columns, the unused ones
 * zero (b may be NULL): what the direct forward kernels multiply by. */
static inline void FN(pad_direct_weights)(int patch, int filters, const REAL *w, const REAL *b,
                                          REAL *wpad, REAL *bpad)
{
    for (int k = 0; k < patch; ++k)
        for (int f = 0; f < RP_DIRECT_FILTERS; ++f)
            wpad[k * RP_DIRECT_FILTERS + f] = f < filters ? w[k * filters + f] : (REAL)0;
    for (int f = 0; f < RP_DIRECT_FILTERS; ++f)
        bpad[f] = b && f < filters ? b[f] : (REAL)0;
}

/* y (rows x filters) = act(colT^T w + b) for one block; filters <= RP_DIRECT_FILTERS.
 * Registers hold RP_DIRECT_FILTERS x PIX sums; unused filters compute zeros. */
RP_ALWAYS_INLINE void FN(conv_forward_direct_body)(int patch, int filters, long rows, long ld,
                                                   const REAL *colT, const REAL *w,
                                                   const REAL *b, rp_act act, REAL *y)
{
    REAL wpad[RP_DIRECT_PATCH * RP_DIRECT_FILTERS], bpad[RP_DIRECT_FILTERS];
    FN(pad_direct_weights)(patch, filters, w, b, wpad, bpad);
    for (long p0 = 0; p0 < rows; p0 += PIX) {
        REAL acc[RP_DIRECT_FILTERS][PIX];
        for (int f = 0; f < RP_DIRECT_FILTERS; ++f)
            for (int j = 0; j < PIX; ++j) acc[f][j] = bpad[f];
        if (p0 + PIX <= rows) {
            for (int k = 0; k < patch; ++k) {
                const REAL *cv = colT + (long)k * ld + p0;
                const REAL *wk = wpad + k * RP_DIRECT_FILTERS;
                for (int f = 0; f < RP_DIRECT_FILTERS; ++f)
                    for (int j = 0; j < PIX; ++j) acc[f][j] += wk[f] * cv[j];
            }
        } else {
            const int nj = (int)(rows - p0);
            for (int k = 0; k < patch; ++k) {
                const REAL *cv = colT + (long)k * ld + p0;
                const REAL *wk = wpad + k * RP_DIRECT_FILTERS;
                for (int f = 0; f < RP_DIRECT_FILTERS; ++f)
                    for (int j = 0; j < nj; ++j) acc[f][j] += wk[f] * cv[j];
            }
        }
        const int nj = rows - p0 < PIX ? (int)(rows - p0) : PIX;
        REAL *yp = y + p0 * filters;
        if (act == RP_ACT_LINEAR) {
            for (int j = 0; j < nj; ++j)
                for (int f = 0; f < filters; ++f) yp[j * filters + f] = acc[f][j];
        } else if (act == RP_ACT_RELU) {
            for (int j = 0; j < nj; ++j)
                for (int f = 0; f < filters; ++f)
                    yp[j * filters + f] = acc[f][j] < (REAL)0 ? (REAL)0 : acc[f][j];
        } else {
            for (int j = 0; j < nj; ++j)
                for (int f = 0; f < filters; ++f) yp[j * filters + f] = ACT_SCALAR(act, acc[f][j]);
        }
    }
}

/* dw (patch x filters) = colT dzT^T for one block: dzT holds dz transposed
 * (filters rows of `rows` values). Each (tap, 4 filters) pair is one run over
 * the pixels with PIX-lane sums, reduced in lane order at the end. */
RP_ALWAYS_INLINE void FN(conv_weight_grad_direct_body)(int patch, int filters, long rows,
                                                       const REAL *colT, const REAL *dzT,
                                                       REAL *dw)
{
    const long full = rows - rows % PIX;
    for (int k = 0; k < patch; ++k) {
        const REAL *cv = colT + (long)k * rows;
        for (int f0 = 0; f0 < filters; f0 += 4) {
            const REAL *d[4];
            for (int i = 0; i < 4; ++i)
                d[i] = dzT + (long)(f0 + i < filters ? f0 + i : filters - 1) * rows;
            REAL acc[4][PIX];
            for (int i = 0; i < 4; ++i)
                for (int j = 0; j < PIX; ++j) acc[i][j] = (REAL)0;
            for (long p = 0; p < full; p += PIX)
                for (int i = 0; i < 4; ++i)
                    for (int j = 0; j < PIX; ++j) acc[i][j] += cv[p + j] * d[i][p + j];
            for (int i = 0; i < 4 && f0 + i < filters; ++i) {
                REAL sum = (REAL)0;
                for (int j = 0; j < PIX; ++j) sum += acc[i][j];
                for (long p = full; p < rows; ++p) sum += cv[p] * d[i][p];
                dw[k * filters + f0 + i] = sum;
            }
        }
    }
}

#ifdef RP_DIRECT_AVX2
/* The AVX2 wrappers: for double the generic bodies compiled for AVX2; for
 * float hand-written kernels (GCC keeps the generic body's sums in memory). */
RP_TARGET_AVX2
static void FN(conv_forward_direct_avx2)(int patch, int filters, long rows, const REAL *colT,
                                         const REAL *w, const REAL *b, rp_act act, REAL *y)
{
#ifdef DIRECT_AVX2_F32
    direct_forward_avx2_f32(patch, filters, rows, colT, w, b, act, y);
#else
    FN(conv_forward_direct_body)(patch, filters, rows, rows, colT, w, b, act, y);
#endif
}

RP_TARGET_AVX2
static void FN(conv_weight_grad_direct_avx2)(int patch, int filters, long rows,
                                             const REAL *colT, const REAL *dzT, REAL *dw)
{
#ifdef DIRECT_AVX2_F32
    direct_weight_grad_avx2_f32(patch, filters, rows, colT, dzT, dw);
#else
    FN(conv_weight_grad_direct_body)(patch, filters, rows, colT, dzT, dw);
#endif
}
#endif

#ifdef RP_CONV_VECTORS
/* conv_forward_direct_body for targets without AVX2, in 16-byte vectors: a
 * block of PIX pixels is two vectors, and the filters go four at a time
 * (eight accumulators). The body's block of 8 filters x PIX pixels needs 16
 * such registers, all SSE2 has, and GCC kept it in memory. Pixels past the
 * last whole block go through the body. */
static void FN(conv_forward_direct_vec)(int patch, int filters, long rows, const REAL *colT,
                                        const REAL *w, const REAL *b, rp_act act, REAL *y)
{
    enum { LANES = (int)(16 / sizeof(REAL)) };   /* PIX == 2 * LANES */
    REAL wpad[RP_DIRECT_PATCH * RP_DIRECT_FILTERS], bpad[RP_DIRECT_FILTERS];
    FN(pad_direct_weights)(patch, filters, w, b, wpad, bpad);
    const long full = rows - rows % PIX;
    for (long p0 = 0; p0 < full; p0 += PIX) {
        REAL sums[RP_DIRECT_FILTERS][PIX];
        for (int f0 = 0; f0 < filters; f0 += 4) {
            VEC s00 = (VEC){0} + bpad[f0], s01 = s00, s10 = (VEC){0} + bpad[f0 + 1], s11 = s10;
            VEC s20 = (VEC){0} + bpad[f0 + 2], s21 = s20, s30 = (VEC){0} + bpad[f0 + 3], s31 = s30;
            for (int k = 0; k < patch; ++k) {
                VEC c0, c1;
                memcpy(&c0, colT + (long)k * rows + p0, sizeof c0);
                memcpy(&c1, colT + (long)k * rows + p0 + LANES, sizeof c1);
                const REAL *wk = wpad + k * RP_DIRECT_FILTERS + f0;
                VEC wf;
                wf = (VEC){0} + wk[0]; s00 += wf * c0; s01 += wf * c1;
                wf = (VEC){0} + wk[1]; s10 += wf * c0; s11 += wf * c1;
                wf = (VEC){0} + wk[2]; s20 += wf * c0; s21 += wf * c1;
                wf = (VEC){0} + wk[3]; s30 += wf * c0; s31 += wf * c1;
            }
            const VEC block[4][2] = {{s00, s01}, {s10, s11}, {s20, s21}, {s30, s31}};
            memcpy(sums[f0], block, sizeof block);
        }
        REAL *yp = y + p0 * filters;
        for (int j = 0; j < PIX; ++j)
            for (int f = 0; f < filters; ++f) {
                const REAL v = sums[f][j];
                yp[j * filters + f] = act == RP_ACT_LINEAR ? v
                                      : act == RP_ACT_RELU ? ACT_SCALAR(RP_ACT_RELU, v)
                                                           : ACT_SCALAR(act, v);
            }
    }
    if (full < rows)
        FN(conv_forward_direct_body)(patch, filters, rows - full, rows, colT + full, w, b, act,
                                     y + full * filters);
}
#endif

static void FN(conv_forward_direct)(int patch, int filters, long rows, const REAL *colT,
                                    const REAL *w, const REAL *b, rp_act act, REAL *y)
{
#ifdef RP_DIRECT_AVX2
    if (rp_simd_in_use() == RP_SIMD_AVX2) {
        FN(conv_forward_direct_avx2)(patch, filters, rows, colT, w, b, act, y);
        return;
    }
#endif
#ifdef RP_CONV_VECTORS
    FN(conv_forward_direct_vec)(patch, filters, rows, colT, w, b, act, y);
#else
    FN(conv_forward_direct_body)(patch, filters, rows, rows, colT, w, b, act, y);
#endif
}

static void FN(conv_weight_grad_direct)(int patch, int filters, long rows, const REAL *colT,
                                        const REAL *dzT, REAL *dw)
{
#ifdef RP_DIRECT_AVX2
    if (rp_simd_in_use() == RP_SIMD_AVX2) {
        FN(conv_weight_grad_direct_avx2)(patch, filters, rows, colT, dzT, dw);
        return;
    }
#endif
    FN(conv_weight_grad_direct_body)(patch, filters, rows, colT, dzT, dw);
}

#undef PIX

/* Per calling thread, grown on demand and kept (as the GEMM's packing
 * buffers): the per-block partial sums of dW. */
static __thread void *FN(dw_partials) = NULL;
static __thread size_t FN(dw_partials_capacity) = 0;     /* bytes */

/* The calling thread's partial-sum buffer with room for count values (NULL if out of memory). */
static REAL *FN(reserve_partials)(size_t count)
{
    return (REAL *)reserve_thread_buffer(&FN(dw_partials), &FN(dw_partials_capacity),
                                         sizeof(REAL) * count);
}

/* dw = beta * dw + col^T dz over `rows` rows. This is a long, thin
 * reduction (rows in the tens of thousands, patch x filters small), which
 * the GEMM driver would walk KC rows at a time with a thread barrier at each
 * step. Instead the rows are cut into a fixed number of contiguous blocks,
 * the threads share the blocks, each block is reduced by a one-thread GEMM
 * (a GEMM called inside a parallel region runs on the calling thread, as
 * nested parallelism is off by default), and
 * the block partials are added in block order. The number of blocks does
 * not depend on the thread count, so neither does the result. */
static void FN(conv_weight_grad)(int rows, int patch, int filters, const REAL *col,
                                 const REAL *dz, REAL beta, REAL *dw)
{
    const size_t per_block = (size_t)patch * filters;
    int blocks = RP_CONV_DW_BLOCKS;
    if (rows < RP_CONV_DW_BLOCKS * 256 || per_block > 65536) blocks = 1;
    if (blocks > 1 && !FN(reserve_partials)(per_block * (size_t)blocks))
        blocks = 1;   /* out of memory: the plain GEMM needs no scratch */
    if (blocks == 1) {
        GEMM(1, 0, patch, filters, rows, (REAL)1, col, patch, dz, filters, beta, dw, filters,
             NULL, RP_ACT_LINEAR);
        return;
    }
    REAL *partials = FN(dw_partials);
    const int nt = rp_get_num_threads();
    (void)nt;
#ifdef RETROPROP_HAVE_OPENMP
#pragma omp parallel num_threads(nt)
#endif
    {
#ifdef RETROPROP_HAVE_OPENMP
#pragma omp for schedule(dynamic, 1)
#endif
        for (int blk = 0; blk < blocks; ++blk) {
            const long r0 = (long)rows * blk / blocks, r1 = (long)rows * (blk + 1) / blocks;
            GEMM(1, 0, patch, filters, (int)(r1 - r0), (REAL)1, col + r0 * patch, patch,
                 dz + r0 * filters, filters, (REAL)0, partials + per_block * blk, filters,
                 NULL, RP_ACT_LINEAR);
        }
#ifdef RETROPROP_HAVE_OPENMP
#pragma omp for schedule(static)
#endif
        for (long i = 0; i < (long)per_block; ++i) {
            REAL sum = beta == (REAL)0 ? (REAL)0 : beta * dw[i];
            for (int blk = 0; blk < blocks; ++blk) sum += partials[per_block * blk + i];
            dw[i] = sum;
        }
    }
}

/* Fused forward of one chunk: each block of output lines is gathered by
 * im2col and multiplied at once by a one-thread GEMM, while its columns are
 * still in the core's cache; the threads share the blocks in one parallel
 * region (no barrier per GEMM cache block, which matters on a busy machine).
 * Blocks are handed out one at a time (schedule(dynamic)), here and in the
 * backward: no result depends on which thread runs a block, and a static
 * split left the faster core idle while the other finished, a LeNet epoch
 * 5-20% slower on a VM whose cores' speeds vary. */
static void FN(conv_forward_blocks)(const rp_conv2d_geom *g, int algo, int first, int count,
                                    long lpb, const REAL *x, const REAL *w, const REAL *b,
                                    rp_act act, REAL *col, REAL *y)
{
    const int patch = g->kh * g->kw * g->c;
    const long lines = (long)count * g->oh;
    const long blocks = (lines + lpb - 1) / lpb;
    REAL *ychunk = y + (long)first * g->oh * g->ow * g->filters;
    const int direct = algo == RP_CONV_ALGO_DIRECT;
#ifdef DIRECT_AVX2_F32
    /* the row-buffer kernels' padded weights and bias, shared by the threads */
    const int rows_path = direct && use_direct_rows(g);
    /* (the selector checked that the microkernel applies the activation) */
    const int packed = algo == RP_CONV_ALGO_IMPLICIT;
    const int gather = packed && use_gather_forward(g);
    int offsets[RP_PACKED_PATCH_MAX];   /* use_packed_forward: patch <= RP_PACKED_PATCH_MAX */
    if (gather) gather_offsets(g, offsets);
    const long rw = g->ow + g->kw + 8;
    float wpad[RP_DIRECT_PATCH * 8], bpad[8];
    if (rows_path) {
        for (int k = 0; k < patch; ++k)
            for (int f = 0; f < 8; ++f)
                wpad[k * 8 + f] = f < g->filters ? w[k * g->filters + f] : 0.0f;
        for (int f = 0; f < 8; ++f) bpad[f] = b && f < g->filters ? b[f] : 0.0f;
    }
#endif
    const int nt = rp_get_num_threads();
    (void)nt;
#ifdef RETROPROP_HAVE_OPENMP
#pragma omp parallel for schedule(dynamic, 1) num_threads(nt)
#endif
    for (long blk = 0; blk < blocks; ++blk) {
        const long l0 = blk * lpb, l1 = l0 + lpb < lines ? l0 + lpb : lines;
        REAL *cblk = col + l0 * g->ow * patch;
#ifdef DIRECT_AVX2_F32
        if (gather) {
            for (long l = l0; l < l1; ++l) {
                float *yline = ychunk + l * g->ow * g->filters;
                if (!gather_forward_line_f32(g, x, first + l / g->oh, (int)(l % g->oh), offsets,
                                             w, b, act, yline))
                    packed_forward_block_f32(g, x, first, l, g->ow, w, b, act, yline);
            }
            continue;
        }
        if (packed) {
            packed_forward_block_f32(g, x, first, l0, (l1 - l0) * g->ow, w, b, act,
                                     ychunk + l0 * g->ow * g->filters);
            continue;
        }
        if (rows_path) {
            float rowbuf[RP_ROWS_MAX];
            for (long l = l0; l < l1; ++l) {
                direct_line_rows_f32(g, x, first + l / g->oh, (int)(l % g->oh), rw, rowbuf);
                direct_line_forward_avx2_f32(g, rowbuf, rw, wpad, bpad, act,
                                             ychunk + l * g->ow * g->filters);
            }
            continue;
        }
#endif
        if (direct) {
            FN(im2colT_block)(g, x, first, l0, l1, cblk);
            FN(conv_forward_direct)(patch, g->filters, (l1 - l0) * g->ow, cblk, w, b, act,
                                    ychunk + l0 * g->ow * g->filters);
            continue;
        }
        for (long l = l0; l < l1; ++l)
            FN(im2col_line)(g, x, first + l / g->oh, (int)(l % g->oh),
                            col + l * g->ow * patch);
        GEMM(0, 0, (int)((l1 - l0) * g->ow), g->filters, patch, (REAL)1, cblk, patch,
             w, g->filters, (REAL)0, ychunk + l0 * g->ow * g->filters, g->filters, b, act);
    }
}

void FN(rp_conv2d_forward)(const rp_conv2d_geom *g, const REAL *x, const REAL *w,
                           const REAL *b, rp_act act, int chunk, REAL *col, REAL *y)
{
    const int patch = g->kh * g->kw * g->c;
    const long rows_per_image = (long)g->oh * g->ow;
    const int algo = rp_conv2d_select(g, (int)sizeof(REAL), act);
#ifdef REAL_IS_F32
    if (algo == RP_CONV_ALGO_WINOGRAD && rp_conv2d_winograd_forward_f32(g, x, w, b, act, y) == 0)
        return;   /* (out of memory: the paths below) */
#endif
    if (rp_conv2d_is_pointwise(g)) {
        /* x viewed as (n*h*w, c) already is the column matrix. */
        GEMM(0, 0, (int)(g->n * rows_per_image), g->filters, g->c, (REAL)1, x, g->c,
             w, g->filters, (REAL)0, y, g->filters, b, act);
        return;
    }
    if (chunk < 1) chunk = 1;
    for (int first = 0; first < g->n; first += chunk) {
        const int count = g->n - first < chunk ? g->n - first : chunk;
        const long lpb = lines_per_block(g, count);
#ifdef DIRECT_AVX2_F32
        if (lpb > 0 && algo == RP_CONV_ALGO_IMPLICIT && use_padded_copy(g)) {
            /* the chunk's images with their padding: every line read in place */
            rp_conv2d_geom gp;
            const float *xp = padded_images_f32(g, x, first, count, &gp);
            if (xp) {
                /* (the same output lines, so the same blocks) */
                FN(conv_forward_blocks)(&gp, algo, 0, count, lpb, xp, w, b, act, col,
                                        y + (long)first * rows_per_image * g->filters);
                continue;
            }
        }
#endif
        if (lpb > 0) {
            FN(conv_forward_blocks)(g, algo, first, count, lpb, x, w, b, act, col, y);
            continue;
        }
        FN(rp_im2col_nhwc)(g, first, count, x, col);
        GEMM(0, 0, (int)(count * rows_per_image), g->filters, patch, (REAL)1, col, patch,
             w, g->filters, (REAL)0, y + first * rows_per_image * g->filters, g->filters, b, act);
    }
}

/* Fused backward of one chunk, in three phases of one parallel region.
 * 1. Per block of output lines: dz = dy * act'(y), the block's db and dW
 *    partial sums (into the per-block partials), im2col, then the block's
 *    column gradient dz W^T written over its columns.
 * 2. Per image (whole images, so each dx element has one writer): col2im.
 * 3. dW (and db) = beta * old + the partials added in block order.
 * Blocks depend on the geometry and chunk only, so the result does not
 * depend on the thread count. */
static void FN(conv_backward_blocks)(const rp_conv2d_geom *g, int algo, int first, int count,
                                     long lpb,
                                     const REAL *x, const REAL *w, const REAL *y,
                                     const REAL *dy, rp_act act, REAL *col, REAL *dz,
                                     REAL *partials, REAL beta, REAL *dw, REAL *db, REAL *dx,
                                     int keep_dz, const rp_conv2d_geom *gx, const REAL *xg,
                                     int xg_first)
{
    const int patch = g->kh * g->kw * g->c, filters = g->filters;
    const long rows_per_image = (long)g->oh * g->ow;
    const long image_size = (long)g->h * g->w * g->c;
    const long lines = (long)count * g->oh;
    const long blocks = (lines + lpb - 1) / lpb;
    const long per_block = (long)patch * filters + filters;   /* dW partial, then db partial */
    const long row0 = (long)first * rows_per_image;
    /* The direct kernels compute dW only, and leave dz transposed or not at
     * all: dx, by the column-gradient GEMM here or as a convolution of dz
     * afterwards (keep_dz), needs the other path. */
    const int direct = !dx && !keep_dz && algo == RP_CONV_ALGO_DIRECT;
#ifdef DIRECT_AVX2_F32
    /* dW read from the input in place (its partials then in natural layout) */
    const int gather_dw = !direct && algo == RP_CONV_ALGO_IMPLICIT && use_gather_weight_grad(gx) &&
                          lpb <= RP_GATHER_LINES_MAX;
    int offsets[RP_PACKED_PATCH_MAX];   /* use_packed_forward: patch <= RP_PACKED_PATCH_MAX */
    if (gather_dw) gather_offsets(gx, offsets);
#else
    const int gather_dw = 0;
    (void)gx, (void)xg, (void)xg_first;
#endif
    const int nt = rp_get_num_threads();
    /* When blocks are whole images, each block scatters its own column
     * gradient into dx (no other block writes those images) right after
     * computing it, in a column-matrix space of its thread's that is reused
     * block after block and so stays in cache. Otherwise the whole chunk's
     * column gradient is kept and scattered per image afterwards. */
    const int scatter_in_block = dx && lpb % g->oh == 0 && (long)nt * lpb <= lines;
    const long block_col = lpb * g->ow * patch;
#ifdef RETROPROP_HAVE_OPENMP
#pragma omp parallel num_threads(nt)
#endif
    {
#ifdef RETROPROP_HAVE_OPENMP
        const int tid = omp_get_thread_num();
#pragma omp for schedule(dynamic, 1)
#else
        const int tid = 0;
#endif
        for (long blk = 0; blk < blocks; ++blk) {
            const long l0 = blk * lpb, l1 = l0 + lpb < lines ? l0 + lpb : lines;
            const long r0 = l0 * g->ow, rows = (l1 - l0) * g->ow;
            REAL *cblk = scatter_in_block ? col + tid * block_col : col + r0 * patch;
            REAL *dzb = dz + (row0 + r0) * filters;
            const REAL *yb = y + (row0 + r0) * filters, *dyb = dy + (row0 + r0) * filters;
            REAL *pw = partials + blk * per_block, *pb = pw + (long)patch * filters;
            for (int f = 0; f < filters; ++f) pb[f] = (REAL)0;
#ifdef DIRECT_AVX2_F32
            if (direct && use_direct_rows(g)) {
                const long rw = g->ow + g->kw + 8;
                /* Up to `span` lines at a time: their zero-padded input rows,
                 * then their dz transposed (per filter, ow rounded up to 8
                 * values, zeros past ow), in one buffer; then one pass of the
                 * dW kernel over them. */
                const int owp = (g->ow + 7) / 8 * 8;
                const long rows_stride = (long)g->kh * rw, dz_stride = (long)owp * filters;
                const long line_floats = rows_stride + dz_stride;
                const long span = RP_LINES_BUF / line_floats > 0 ? RP_LINES_BUF / line_floats : 1;
                /* + 8: dz's start rounded up to a 32-byte boundary */
                float lines_buf[RP_LINES_BUF + 8] __attribute__((aligned(32)));
                float *rows_all = lines_buf;
                float *dz_all = lines_buf + (span * rows_stride + 7) / 8 * 8;
                /* taps x 8 filters */
                float acc[RP_DIRECT_PATCH * 8];
                float dbacc[8] = {0};
                for (int i = 0; i < patch * 8; ++i) acc[i] = 0.0f;
                for (long s0 = l0; s0 < l1; s0 += span) {
                    const long s1 = s0 + span < l1 ? s0 + span : l1;
                    for (long l = s0; l < s1; ++l) {
                        const long lr = (l - l0) * g->ow;   /* the line's first row in the block */
                        const float *dyl = dyb + lr * filters, *yl = yb + lr * filters;
                        float *dzl = dz_all + (l - s0) * dz_stride;
                        /* dz in natural layout first (a vectorisable pass, relu as a
                         * blend), then transposed */
                        float dz_line[RP_ROWS_MAX];
                        const long count = (long)g->ow * filters;
                        if (act == RP_ACT_RELU) {
                            for (long i = 0; i < count; ++i) {
                                const float d = dyl[i];   /* loaded unconditionally: a blend */
                                dz_line[i] = yl[i] > 0.0f ? d : 0.0f;
                            }
                        } else {
                            for (long i = 0; i < count; ++i)
                                dz_line[i] = dyl[i] * GRAD_FROM_OUTPUT(act, yl[i]);
                        }
                        transpose_line_avx2_f32(dz_line, g->ow, filters, owp, dzl);
                        direct_line_rows_f32(g, x, first + l / g->oh, (int)(l % g->oh), rw,
                                             rows_all + (l - s0) * rows_stride);
                    }
                    direct_lines_weight_grad_avx2_f32(g, rows_all, rw, rows_stride, (int)(s1 - s0),
                                                      dz_all, dz_stride, owp, acc, dbacc);
                }
                for (int k = 0; k < patch; ++k)
                    for (int f = 0; f < filters; ++f) pw[k * filters + f] = acc[k * 8 + f];
                for (int f = 0; f < filters; ++f) pb[f] = dbacc[f];
                continue;
            }
#endif
            if (direct) {
                /* dz goes into its block's space transposed (filters rows of
                 * `rows` values), as the direct dW kernel reads it. */
                for (long r = 0; r < rows; ++r) {
                    for (int f = 0; f < filters; ++f) {
                        const long i = r * filters + f;
                        const REAL d = dyb[i] * GRAD_FROM_OUTPUT(act, yb[i]);
                        dzb[(long)f * rows + r] = d;
                        pb[f] += d;
                    }
                }
                FN(im2colT_block)(g, x, first, l0, l1, cblk);
                FN(conv_weight_grad_direct)(patch, filters, rows, cblk, dzb, pw);
                continue;
            }
            /* dz first (a vectorisable pass, relu as a select), then db's
             * partial, per filter in row order. */
            const long count = rows * filters;
            if (act == RP_ACT_RELU) {
                for (long i = 0; i < count; ++i) {
                    /* dy loaded unconditionally, so the select compiles to a
                     * blend: a branch on relu's sign mispredicts half the time */
                    const REAL d = dyb[i];
                    dzb[i] = yb[i] > (REAL)0 ? d : (REAL)0;
                }
            } else {
                for (long i = 0; i < count; ++i) dzb[i] = dyb[i] * GRAD_FROM_OUTPUT(act, yb[i]);
            }
            /* row by row, all filters at once (a vector add, not a serial chain
             * per filter); each filter's sum is still taken in row order */
            for (long r = 0; r < rows; ++r) {
                const REAL *dzr = dzb + r * filters;
                for (int f = 0; f < filters; ++f) pb[f] += dzr[f];
            }
#ifdef DIRECT_AVX2_F32
            if (gather_dw) {
                gather_weight_grad_block_f32(gx, xg, xg_first, l0, l1, offsets, dzb, pw);
            } else
#endif
            {
                /* into the block's own space, which the GEMMs below read: with
                 * scatter_in_block that is its thread's, not its place in col */
                for (long l = l0; l < l1; ++l)
                    FN(im2col_line)(g, x, first + l / g->oh, (int)(l % g->oh),
                                    cblk + (l - l0) * g->ow * patch);
                /* The block's dW is computed transposed, dW^T = dz^T col: then
                 * the GEMM packs only dz (filters wide) and reads the column
                 * matrix in place, instead of packing all of it as A. */
                GEMM(1, 0, filters, patch, (int)rows, (REAL)1, dzb, filters, cblk, patch, (REAL)0,
                     pw, patch, NULL, RP_ACT_LINEAR);
            }
            if (dx)
                GEMM(0, 1, (int)rows, patch, filters, (REAL)1, dzb, filters, w, filters, (REAL)0,
                     cblk, patch, NULL, RP_ACT_LINEAR);
            if (scatter_in_block) {
                for (long img = l0 / g->oh; img < l1 / g->oh; ++img) {
                    REAL *dimg = dx + (first + img) * image_size;
                    memset(dimg, 0, sizeof(REAL) * (size_t)image_size);
                    FN(col2im_image_add)(g, cblk + (img - l0 / g->oh) * rows_per_image * patch, dimg);
                }
            }
        }
        if (dx && !scatter_in_block) {
#ifdef RETROPROP_HAVE_OPENMP
#pragma omp for schedule(static)
#endif
            for (int i = 0; i < count; ++i) {
                REAL *dimg = dx + (long)(first + i) * image_size;
                memset(dimg, 0, sizeof(REAL) * (size_t)image_size);
                FN(col2im_image_add)(g, col + (long)i * rows_per_image * patch, dimg);
            }
        }
#ifdef RETROPROP_HAVE_OPENMP
#pragma omp for schedule(static)
#endif
        for (long i = 0; i < per_block; ++i) {
            const int is_db = i >= (long)patch * filters;
            if (is_db && !db) continue;
            REAL *target = is_db ? db + (i - (long)patch * filters) : dw + i;
            /* GEMM partials of dW are transposed (filters x patch), the direct and
             * gathered ones not */
            const long src = is_db || direct || gather_dw ? i : (i % filters) * patch + i / filters;
            REAL sum = beta == (REAL)0 ? (REAL)0 : beta * *target;
            for (long blk = 0; blk < blocks; ++blk) sum += partials[blk * per_block + src];
            *target = sum;
        }
    }
}

void FN(rp_conv2d_backward)(const rp_conv2d_geom *g, const REAL *x, const REAL *w,
                            const REAL *y, const REAL *dy, rp_act act, int chunk,
                            REAL *col, REAL *dz, REAL *dw, REAL *db, REAL *dx)
{
    const int patch = g->kh * g->kw * g->c, filters = g->filters;
    const long rows_per_image = (long)g->oh * g->ow;
    const long rows = g->n * rows_per_image;
    const long image_size = (long)g->h * g->w * g->c;
    const int algo = rp_conv2d_select(g, (int)sizeof(REAL), RP_ACT_LINEAR);
#ifdef REAL_IS_F32
    if (algo == RP_CONV_ALGO_WINOGRAD &&
        rp_conv2d_winograd_backward_f32(g, x, w, y, dy, act, dz, dw, db, dx) == 0)
        return;   /* (out of memory: the paths below) */
#endif

    if (!rp_conv2d_is_pointwise(g)) {
        if (chunk < 1) chunk = 1;
        /* The fused path needs per-block partial sums of dW and db. It is
         * taken for all chunks or for none, as the geometry and the batch
         * decide (never the thread count); a last chunk too small to split
         * is then one block. */
        const size_t per_block = (size_t)patch * filters + filters;
        REAL *partials = NULL;
        /* room for the blocks of the largest chunk: chunks have at most two
         * sizes, the full one and the rest */
        const int count0 = chunk < g->n ? chunk : g->n;
        const long lpb0 = lines_per_block(g, count0);
        size_t max_blocks = 0;
        if (lpb0 > 0) {
            const int last = g->n % count0 ? g->n % count0 : count0;
            const long lpb_last = lines_per_block(g, last);
            const long blocks0 = ((long)count0 * g->oh + lpb0 - 1) / lpb0;
            const long blocks_last = lpb_last > 0 ? ((long)last * g->oh + lpb_last - 1) / lpb_last : 1;
            max_blocks = (size_t)(blocks0 > blocks_last ? blocks0 : blocks_last);
        }
        if (lpb0 > 0 && per_block * max_blocks <= RP_CONV_PARTIALS_MAX)
            partials = FN(reserve_partials)(per_block * max_blocks);
        if (partials) {
            /* dx as a convolution of dz (float32, see transposed_geometry),
             * after the blocks have written all of dz; else by the blocks */
            REAL *dx_blocks = dx;
#ifdef DIRECT_AVX2_F32
            rp_conv2d_geom gt;
            float *wt = NULL;
            if (dx && transposed_geometry(g, &gt))
                wt = (float *)malloc(sizeof(float) * (size_t)patch * filters);
            if (wt) dx_blocks = NULL;
#endif
            for (int first = 0; first < g->n; first += chunk) {
                const int count = g->n - first < chunk ? g->n - first : chunk;
                long lpb = lines_per_block(g, count);
                if (lpb <= 0) lpb = (long)count * g->oh;   /* one block: still valid */
                /* dW reads x in place when every window is inside it, or
                 * else (float32, see use_padded_copy) a padded copy of it */
                const rp_conv2d_geom *gx = g;
                const REAL *xg = x;
                int xg_first = first;
#ifdef DIRECT_AVX2_F32
                rp_conv2d_geom gp;
                if (algo == RP_CONV_ALGO_IMPLICIT && use_padded_copy(g) &&
                    lpb <= RP_GATHER_LINES_MAX) {
                    const float *xp = padded_images_f32(g, x, first, count, &gp);
                    if (xp) {
                        gx = &gp;
                        xg = xp;
                        xg_first = 0;
                    }
                }
#endif
                FN(conv_backward_blocks)(g, algo, first, count, lpb, x, w, y, dy, act, col, dz,
                                         partials, first == 0 ? (REAL)0 : (REAL)1, dw, db,
                                         dx_blocks, dx != dx_blocks, gx, xg, xg_first);
            }
#ifdef DIRECT_AVX2_F32
            if (wt) {
                /* one chunk: transposed_geometry checked that it is cut in
                 * blocks, so this forward never needs the column workspace */
                transposed_weights_f32(g, w, wt);
                FN(rp_conv2d_forward)(&gt, dz, wt, NULL, RP_ACT_LINEAR, g->n, col, dx);
                free(wt);
            }
#endif
            return;
        }
    }

    /* dz = dy * act'(y): elementwise, any split of the rows is deterministic. */
    const long total = rows * filters;
    const int nt = threads_for((double)total);
    (void)nt;
#ifdef RETROPROP_HAVE_OPENMP
#pragma omp parallel for schedule(static) num_threads(nt)
#endif
    for (long i = 0; i < total; ++i) dz[i] = dy[i] * GRAD_FROM_OUTPUT(act, y[i]);

    /* db: one pass in row order, so the sum does not depend on the thread count. */
    if (db) {
        for (int f = 0; f < filters; ++f) db[f] = (REAL)0;
        for (long r = 0; r < rows; ++r) {
            const REAL *dzr = dz + r * filters;
            for (int f = 0; f < filters; ++f) db[f] += dzr[f];
        }
    }

    if (rp_conv2d_is_pointwise(g)) {
        FN(conv_weight_grad)((int)rows, g->c, filters, x, dz, (REAL)0, dw);
        if (dx)
            GEMM(0, 1, (int)rows, g->c, filters, (REAL)1, dz, filters, w, filters, (REAL)0,
                 dx, g->c, NULL, RP_ACT_LINEAR);
        return;
    }

    if (chunk < 1) chunk = 1;
    for (int first = 0; first < g->n; first += chunk) {
        const int count = g->n - first < chunk ? g->n - first : chunk;
        const int chunk_rows = (int)(count * rows_per_image);
        const REAL *dz_chunk = dz + first * rows_per_image * filters;
        FN(rp_im2col_nhwc)(g, first, count, x, col);
        /* dW = sum over chunks of col^T dz, accumulated in chunk order. */
        FN(conv_weight_grad)(chunk_rows, patch, filters, col, dz_chunk,
                             first == 0 ? (REAL)0 : (REAL)1, dw);
        if (dx) {
            /* The column matrix is no longer needed: its gradient reuses the space. */
            GEMM(0, 1, chunk_rows, patch, filters, (REAL)1, dz_chunk, filters, w, filters,
                 (REAL)0, col, patch, NULL, RP_ACT_LINEAR);
            memset(dx + first * image_size, 0, sizeof(REAL) * (size_t)count * image_size);
            FN(rp_col2im_nhwc_add)(g, first, count, col, dx);
        }
    }
}

#endif /* RP_CONV_TEMPLATE */
