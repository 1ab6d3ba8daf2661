/* Max and average pooling over NHWC images. Channels are the innermost
 * loop everywhere, so each window cell is one contiguous run of c values.
 * Forward splits output rows over threads; backward splits images, because
 * overlapping windows of one image add into the same dx cells.
 *
 * The element-type dependent part is written once, below the #else, and
 * instantiated for float and double by including this file twice.
 */
#ifndef RP_POOL_TEMPLATE

#include <stdint.h>
#include <string.h>
#include "retroprop/pool.h"
#include "retroprop/runtime.h"
#include "act_internal.h"

static int threads_for(double elements)
{
    return elements < (double)RP_ELEMENTWISE_PARALLEL_MIN ? 1 : rp_get_num_threads();
}

/* The part [*lo, *hi) of window [start, start + size) that lies inside [0, limit).
 * start is in 64 bits: position * stride - padding of int sizes. */
static void clip_window(long start, int size, int limit, int *lo, int *hi)
{
    *lo = start < 0 ? 0 : (int)(start < limit ? start : limit);
    *hi = start + size > limit ? limit : (int)(start + size);
}

/* Whether every one of the count positions lies in [0, limit): the max
 * pooling backward scatters to them, so one outside would write out of
 * bounds. One pass that ORs the failures (it vectorises; no early exit). */
static int argmax_in_range(const int32_t *argmax, long count, long limit)
{
    /* as unsigned, a negative position is above any limit: one comparison */
    const uint32_t top = limit > (long)UINT32_MAX ? UINT32_MAX : (uint32_t)limit;
    uint32_t bad = 0;
    for (long i = 0; i < count; ++i) bad |= (uint32_t)argmax[i] >= top;
    return !bad;
}

#if defined(__GNUC__) && defined(__x86_64__) && defined(RETROPROP_HAVE_AVX2)
#include <immintrin.h>
#define RP_POOL_AVX2 1

/* Whole 2x2 windows of one output row, pixels [ox0, ox1), for c <= 8
 * channels: each cell is one masked vector of the c channels, so the
 * comparisons and selects cover every channel at once (the scalar channel
 * loop does not vectorise for c < 8). x00 is the top-left cell of pixel
 * ox0's window; windows are stride_w cells apart. Same rule as the scalar
 * loop: a later cell wins only when strictly greater, or NaN while the best
 * so far is not (so the first NaN wins). */
__attribute__((target("avx2,fma")))
static void maxpool_row_2x2_narrow_avx2_f32(const float *ximg, long x00, int w, int c,
                                            int stride_w, int ox0, int ox1, float *y,
                                            int32_t *argmax)
{
    const __m256i lanes = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    const __m256i mask = _mm256_cmpgt_epi32(_mm256_set1_epi32(c), lanes);
    /* Positions in 64 bits: the step after the last window may pass the
     * image; every cell read lies inside it, so fits an int32. */
    const long right = c, down = (long)w * c;
    for (int ox = ox0; ox < ox1; ++ox, x00 += (long)stride_w * c) {
        const int32_t cells[3] = {(int32_t)(x00 + right), (int32_t)(x00 + down),
                                  (int32_t)(x00 + down + right)};
        __m256 best = _mm256_maskload_ps(ximg + x00, mask);
        __m256i arg = _mm256_add_epi32(_mm256_set1_epi32((int32_t)x00), lanes);
        for (int k = 0; k < 3; ++k) {
            const __m256 v = _mm256_maskload_ps(ximg + cells[k], mask);
            /* greater, or a NaN where best is not yet one (the first NaN wins) */
            const __m256 greater = _mm256_or_ps(
                _mm256_cmp_ps(v, best, _CMP_GT_OQ),
                _mm256_andnot_ps(_mm256_cmp_ps(best, best, _CMP_UNORD_Q),
                                 _mm256_cmp_ps(v, v, _CMP_UNORD_Q)));
            best = _mm256_blendv_ps(best, v, greater);
            const __m256i at = _mm256_add_epi32(_mm256_set1_epi32(cells[k]), lanes);
            arg = _mm256_castps_si256(_mm256_blendv_ps(_mm256_castsi256_ps(arg),
                                                       _mm256_castsi256_ps(at), greater));
        }
        if ((long)ox * c + 8 <= (long)ox1 * c) {
            /* Whole vectors (masked stores are slow on some cores): the lanes
             * past c fall on later pixels of the range, which overwrite them. */
            _mm256_storeu_ps(y + (long)ox * c, best);
            _mm256_storeu_si256((__m256i *)(argmax + (long)ox * c), arg);
        } else {
            float yv[8];
            int32_t av[8];
            _mm256_storeu_ps(yv, best);
            _mm256_storeu_si256((__m256i *)av, arg);
            for (int ch = 0; ch < c; ++ch) {
                y[(long)ox * c + ch] = yv[ch];
                argmax[(long)ox * c + ch] = av[ch];
            }
        }
    }
}
#endif

#define RP_POOL_TEMPLATE 1
#define REAL float
#define FN(name) name##_f32
#include "pool.c"
#undef REAL
#undef FN

#define REAL double
#define FN(name) name##_f64
#include "pool.c"
#undef REAL
#undef FN

#else /* RP_POOL_TEMPLATE: the body, instantiated per element type */

void FN(rp_maxpool2d_forward)(const rp_pool2d_geom *g, const REAL *x, REAL *y, int32_t *argmax)
{
    const int c = g->c;
    const long image_size = (long)g->h * g->w * c;
    const long out_rows = (long)g->n * g->oh;
    const int nt = threads_for((double)out_rows * g->ow * c * g->ph * g->pw);
    (void)nt;
#ifdef RETROPROP_HAVE_OPENMP
#pragma omp parallel for schedule(static) num_threads(nt)
#endif
    for (long row = 0; row < out_rows; ++row) {
        const long img = row / g->oh;
        const int oy = (int)(row % g->oh);
        const REAL *ximg = x + img * image_size;
        int y_lo, y_hi;
        clip_window((long)oy * g->stride_h - g->pad_top, g->ph, g->h, &y_lo, &y_hi);
        /* pixels [ox_lo, ox_hi) of a row of whole 2x2 windows of few channels
         * go to the vector path (float32 with AVX2) */
#ifdef RP_POOL_AVX2
        int ox_lo = g->ow, ox_hi = g->ow;
        if (sizeof(REAL) == 4 && c <= 8 && g->ph == 2 && g->pw == 2 && y_hi - y_lo == 2 &&
            rp_simd_in_use() == RP_SIMD_AVX2) {
            /* whole windows: ox * stride_w - pad_left >= 0 and + 2 <= w. The
             * last bound is floor((w - 2 + pad_left) / stride_w); C's division
             * truncates towards zero, so a negative numerator (w = 1, no left
             * padding) means no whole window at all, not window 0, which
             * read the cell right of the row. In 64 bits: the sizes are ints. */
            const long last = (long)g->w - 2 + g->pad_left;
            const long lo = ((long)g->pad_left + g->stride_w - 1) / g->stride_w;
            const long hi = last < 0 ? 0 : last / g->stride_w + 1;
            ox_hi = hi < g->ow ? (int)hi : g->ow;
            ox_lo = lo < ox_hi ? (int)lo : ox_hi;
        }
#endif
        for (int ox = 0; ox < g->ow; ++ox) {
#ifdef RP_POOL_AVX2
            if (ox == ox_lo && ox_lo < ox_hi) {
                const long x00 = ((long)y_lo * g->w + (long)ox_lo * g->stride_w -
                                  g->pad_left) * c;
                maxpool_row_2x2_narrow_avx2_f32((const float *)ximg, x00, g->w, c, g->stride_w,
                                                ox_lo, ox_hi, (float *)(y + row * g->ow * c),
                                                argmax + row * g->ow * c);
                ox = ox_hi - 1;
                continue;
            }
#endif
            const long out = (row * g->ow + ox) * c;
            REAL *yp = y + out;
            int32_t *ap = argmax + out;
            int x_lo, x_hi;
            clip_window((long)ox * g->stride_w - g->pad_left, g->pw, g->w, &x_lo, &x_hi);
            /* The first real cell seeds the maximum; later cells replace it
             * only when strictly greater, so ties keep the first position,
             * or when NaN while the best so far is not, so the window's
             * first NaN is the maximum (as in
             * PyTorch and NumPy's argmax) instead of vanishing.
             * Channel by channel in registers, with selects rather than
             * branches: on real data the comparisons are unpredictable. */
            const int32_t first = (int32_t)(((long)y_lo * g->w + x_lo) * c);
            if (y_hi - y_lo == 2 && x_hi - x_lo == 2) {
                /* A whole 2x2 window (the usual pooling): four cells named
                 * outright, so the loop over channels vectorises. */
                const int32_t at01 = first + c, at10 = first + g->w * c, at11 = at10 + c;
                for (int ch = 0; ch < c; ++ch) {
                    REAL best = ximg[first + ch];
                    int32_t arg = first + ch;
                    REAL v = ximg[at01 + ch];
                    int greater = v > best || (v != v && best == best);
                    best = greater ? v : best;
                    arg = greater ? at01 + ch : arg;
                    v = ximg[at10 + ch];
                    greater = v > best || (v != v && best == best);
                    best = greater ? v : best;
                    arg = greater ? at10 + ch : arg;
                    v = ximg[at11 + ch];
                    greater = v > best || (v != v && best == best);
                    best = greater ? v : best;
                    arg = greater ? at11 + ch : arg;
                    yp[ch] = best;
                    ap[ch] = arg;
                }
                continue;
            }
            /* Any other window: cell by cell in row-major order, each cell's
             * channels in one vectorised pass over the output's running
             * maxima (a 1-D window of MaxPool1D took 5 ns an element with
             * the channels in the outer loop). */
            for (int ch = 0; ch < c; ++ch) {
                yp[ch] = ximg[first + ch];
                ap[ch] = first + ch;
            }
            for (int iy = y_lo; iy < y_hi; ++iy) {
                for (int ix = iy == y_lo ? x_lo + 1 : x_lo; ix < x_hi; ++ix) {
                    const int32_t at = (int32_t)(((long)iy * g->w + ix) * c);
                    const REAL *xp = ximg + at;
                    for (int ch = 0; ch < c; ++ch) {
                        const REAL v = xp[ch], best = yp[ch];
                        /* the first NaN of a window wins (NumPy argmax's rule) */
                        const int greater = v > best || (v != v && best == best);
                        yp[ch] = greater ? v : best;
                        ap[ch] = greater ? at + ch : ap[ch];
                    }
                }
            }
        }
    }
}

int FN(rp_maxpool2d_backward)(const rp_pool2d_geom *g, const int32_t *argmax, const REAL *dy, REAL *dx)
{
    const long image_size = (long)g->h * g->w * g->c;
    const long out_size = (long)g->oh * g->ow * g->c;
    if (!argmax_in_range(argmax, (long)g->n * out_size, image_size)) return -1;
    const int nt = g->n < 2 ? 1 : threads_for((double)g->n * (image_size + out_size));
    (void)nt;
#ifdef RETROPROP_HAVE_OPENMP
#pragma omp parallel for schedule(static) num_threads(nt)
#endif
    for (int img = 0; img < g->n; ++img) {
        REAL *dimg = dx + (long)img * image_size;
        const REAL *dyi = dy + (long)img * out_size;
        const int32_t *ai = argmax + (long)img * out_size;
        memset(dimg, 0, sizeof(REAL) * (size_t)image_size);
        for (long i = 0; i < out_size; ++i) dimg[ai[i]] += dyi[i];
    }
    return 0;
}

void FN(rp_avgpool2d_forward)(const rp_pool2d_geom *g, const REAL *x, REAL *y)
{
    const int c = g->c;
    const long image_size = (long)g->h * g->w * c;
    const long out_rows = (long)g->n * g->oh;
    const int nt = threads_for((double)out_rows * g->ow * c * g->ph * g->pw);
    (void)nt;
#ifdef RETROPROP_HAVE_OPENMP
#pragma omp parallel for schedule(static) num_threads(nt)
#endif
    for (long row = 0; row < out_rows; ++row) {
        const long img = row / g->oh;
        const int oy = (int)(row % g->oh);
        const REAL *ximg = x + img * image_size;
        int y_lo, y_hi;
        clip_window((long)oy * g->stride_h - g->pad_top, g->ph, g->h, &y_lo, &y_hi);
        for (int ox = 0; ox < g->ow; ++ox) {
            REAL *yp = y + (row * g->ow + ox) * c;
            int x_lo, x_hi;
            clip_window((long)ox * g->stride_w - g->pad_left, g->pw, g->w, &x_lo, &x_hi);
            for (int ch = 0; ch < c; ++ch) yp[ch] = (REAL)0;
            for (int iy = y_lo; iy < y_hi; ++iy)
                for (int ix = x_lo; ix < x_hi; ++ix) {
                    const REAL *xp = ximg + ((long)iy * g->w + ix) * c;
                    for (int ch = 0; ch < c; ++ch) yp[ch] += xp[ch];
                }
            /* Padding cells are not counted: the mean is over real cells only. */
            const REAL scale = (REAL)1 / (REAL)((y_hi - y_lo) * (x_hi - x_lo));
            for (int ch = 0; ch < c; ++ch) yp[ch] *= scale;
        }
    }
}

void FN(rp_avgpool2d_backward)(const rp_pool2d_geom *g, const REAL *dy, REAL *dx)
{
    const int c = g->c;
    const long image_size = (long)g->h * g->w * c;
    const long out_size = (long)g->oh * g->ow * c;
    const int nt = g->n < 2 ? 1 : threads_for((double)g->n * (image_size + out_size * g->ph * g->pw));
    (void)nt;
#ifdef RETROPROP_HAVE_OPENMP
#pragma omp parallel for schedule(static) num_threads(nt)
#endif
    for (int img = 0; img < g->n; ++img) {
        REAL *dimg = dx + (long)img * image_size;
        memset(dimg, 0, sizeof(REAL) * (size_t)image_size);
        for (int oy = 0; oy < g->oh; ++oy) {
            int y_lo, y_hi;
            clip_window((long)oy * g->stride_h - g->pad_top, g->ph, g->h, &y_lo, &y_hi);
            for (int ox = 0; ox < g->ow; ++ox) {
                const REAL *dyp = dy + (((long)img * g->oh + oy) * g->ow + ox) * c;
                int x_lo, x_hi;
                clip_window((long)ox * g->stride_w - g->pad_left, g->pw, g->w, &x_lo, &x_hi);
                const REAL scale = (REAL)1 / (REAL)((y_hi - y_lo) * (x_hi - x_lo));
                for (int iy = y_lo; iy < y_hi; ++iy)
                    for (int ix = x_lo; ix < x_hi; ++ix) {
                        REAL *dp = dimg + ((long)iy * g->w + ix) * c;
                        for (int ch = 0; ch < c; ++ch) dp[ch] += dyp[ch] * scale;
                    }
            }
        }
    }
}

#endif /* RP_POOL_TEMPLATE */
