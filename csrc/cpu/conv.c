/* 2-D convolution over NHWC images: im2col into a caller-supplied workspace,
 * then the blocked GEMM with bias + activation fused into its write-back.
 * Backward recomputes the column matrix (chunk by chunk) instead of keeping
 * it from the forward pass: one workspace then serves every layer, at the
 * price of one extra memory-bound gather per backward. Every result is
 * independent of the thread count: im2col and dz are elementwise, col2im
 * gives each thread whole images, db is summed serially, and dW is reduced
 * in a fixed number of row blocks.
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

/* Below RP_ELEMENTWISE_PARALLEL_MIN elements a parallel region costs more than it saves. */
static int threads_for(double elements)
{
    return elements < (double)RP_ELEMENTWISE_PARALLEL_MIN ? 1 : rp_get_num_threads();
}

#define RP_CONV_TEMPLATE 1
#define REAL float
#define FN(name) name##_f32
#define GEMM rp_gemm_f32
#define GRAD_FROM_OUTPUT rp_act_grad_from_output_f32
#include "conv.c"
#undef REAL
#undef FN
#undef GEMM
#undef GRAD_FROM_OUTPUT

#define REAL double
#define FN(name) name##_f64
#define GEMM rp_gemm_f64
#define GRAD_FROM_OUTPUT rp_act_grad_from_output_f64
#include "conv.c"
#undef REAL
#undef FN
#undef GEMM
#undef GRAD_FROM_OUTPUT

#else /* RP_CONV_TEMPLATE: the body, instantiated per element type */

RP_INLINE_COPIES
void FN(rp_im2col_nhwc)(const rp_conv2d_geom *g, int first, int count, const REAL *x, REAL *col)
{
    const int c = g->c, kw = g->kw;
    const long run = (long)kw * c;                 /* one kernel row of one patch */
    const long row_len = (long)g->kh * run;
    const long out_rows = (long)count * g->oh;     /* (image, oy) pairs */
    const long image_size = (long)g->h * g->w * c;
    const int nt = threads_for((double)out_rows * g->ow * row_len);
    (void)nt;
#ifdef RETROPROP_HAVE_OPENMP
#pragma omp parallel for schedule(static) num_threads(nt)
#endif
    for (long img_oy = 0; img_oy < out_rows; ++img_oy) {
        const long img = first + img_oy / g->oh;
        const int oy = (int)(img_oy % g->oh);
        const REAL *ximg = x + img * image_size;
        const int iy0 = oy * g->stride_h - g->pad_top;
        REAL *dst = col + img_oy * g->ow * row_len;
        for (int ox = 0; ox < g->ow; ++ox) {
            const int ix0 = ox * g->stride_w - g->pad_left;
            /* With no dilation and the whole window row inside the image, the
             * kw * c values of one kernel row are one contiguous run of x. */
            const int row_inside = g->dilation_w == 1 && ix0 >= 0 && ix0 + kw <= g->w;
            for (int ky = 0; ky < g->kh; ++ky) {
                const int iy = iy0 + ky * g->dilation_h;
                if (iy < 0 || iy >= g->h) {
                    for (long j = 0; j < run; ++j) dst[j] = (REAL)0;
                } else if (row_inside) {
                    const REAL *src = ximg + ((long)iy * g->w + ix0) * c;
                    for (long j = 0; j < run; ++j) dst[j] = src[j];
                } else {
                    const REAL *xrow = ximg + (long)iy * g->w * c;
                    for (int kx = 0; kx < kw; ++kx) {
                        const int ix = ix0 + kx * g->dilation_w;
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
}

void FN(rp_col2im_nhwc_add)(const rp_conv2d_geom *g, int first, int count, const REAL *col, REAL *dx)
{
    const int c = g->c, kw = g->kw;
    const long row_len = (long)g->kh * kw * c;
    const long rows_per_image = (long)g->oh * g->ow;
    const long image_size = (long)g->h * g->w * c;
    const int nt = count < 2 ? 1 : threads_for((double)count * rows_per_image * row_len);
    (void)nt;
    /* One image per iteration: windows overlap only within an image, so each
     * element of dx has one writer and is summed in a fixed order. */
#ifdef RETROPROP_HAVE_OPENMP
#pragma omp parallel for schedule(static) num_threads(nt)
#endif
    for (int i = 0; i < count; ++i) {
        REAL *dimg = dx + (long)(first + i) * image_size;
        const REAL *src = col + (long)i * rows_per_image * row_len;
        for (int oy = 0; oy < g->oh; ++oy) {
            for (int ox = 0; ox < g->ow; ++ox) {
                const int iy0 = oy * g->stride_h - g->pad_top;
                const int ix0 = ox * g->stride_w - g->pad_left;
                for (int ky = 0; ky < g->kh; ++ky) {
                    const int iy = iy0 + ky * g->dilation_h;
                    if (iy < 0 || iy >= g->h) {
                        src += (long)kw * c;
                        continue;
                    }
                    REAL *drow = dimg + (long)iy * g->w * c;
                    for (int kx = 0; kx < kw; ++kx, src += c) {
                        const int ix = ix0 + kx * g->dilation_w;
                        if (ix < 0 || ix >= g->w) continue;
                        REAL *dst = drow + (long)ix * c;
                        for (int ci = 0; ci < c; ++ci) dst[ci] += src[ci];
                    }
                }
            }
        }
    }
}

/* Per calling thread, grown on demand and kept (as the GEMM's packing
 * buffers): the per-block partial sums of dW. */
static __thread REAL *FN(dw_partials) = NULL;
static __thread size_t FN(dw_partials_capacity) = 0;

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
    if (blocks > 1 && FN(dw_partials_capacity) < per_block * (size_t)blocks) {
        free(FN(dw_partials));
        FN(dw_partials) = malloc(sizeof(REAL) * per_block * (size_t)blocks);
        FN(dw_partials_capacity) = FN(dw_partials) ? per_block * (size_t)blocks : 0;
        if (!FN(dw_partials)) blocks = 1;   /* out of memory: the plain GEMM needs no scratch */
    }
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
#pragma omp for schedule(static)
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

void FN(rp_conv2d_forward)(const rp_conv2d_geom *g, const REAL *x, const REAL *w,
                           const REAL *b, rp_act act, int chunk, REAL *col, REAL *y)
{
    const int patch = g->kh * g->kw * g->c;
    const long rows_per_image = (long)g->oh * g->ow;
    if (rp_conv2d_is_pointwise(g)) {
        /* x viewed as (n*h*w, c) already is the column matrix. */
        GEMM(0, 0, (int)(g->n * rows_per_image), g->filters, g->c, (REAL)1, x, g->c,
             w, g->filters, (REAL)0, y, g->filters, b, act);
        return;
    }
    if (chunk < 1) chunk = 1;
    for (int first = 0; first < g->n; first += chunk) {
        const int count = g->n - first < chunk ? g->n - first : chunk;
        FN(rp_im2col_nhwc)(g, first, count, x, col);
        GEMM(0, 0, (int)(count * rows_per_image), g->filters, patch, (REAL)1, col, patch,
             w, g->filters, (REAL)0, y + first * rows_per_image * g->filters, g->filters, b, act);
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
