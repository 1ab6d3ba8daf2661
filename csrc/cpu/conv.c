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
 * RP_CONV_MIN_BLOCKS; the backward partial sums are bounded by
 * RP_CONV_PARTIALS_MAX values. */
#define RP_CONV_BLOCK_ROWS 512
#define RP_CONV_MAX_BLOCKS 64
#define RP_CONV_MIN_BLOCKS 8
#define RP_CONV_PARTIALS_MAX ((size_t)1 << 20)

/* Output lines (image, oy) per block of the fused loops, or 0 when the chunk
 * of count images gives fewer than RP_CONV_MIN_BLOCKS blocks (the threaded
 * GEMM over the whole chunk then splits the work better). */
static long lines_per_block(const rp_conv2d_geom *g, int count)
{
    const long lines = (long)count * g->oh;
    long lpb = (RP_CONV_BLOCK_ROWS + g->ow - 1) / g->ow;
    const long min_lpb = (lines + RP_CONV_MAX_BLOCKS - 1) / RP_CONV_MAX_BLOCKS;
    if (lpb < min_lpb) lpb = min_lpb;
    return (lines + lpb - 1) / lpb >= RP_CONV_MIN_BLOCKS ? lpb : 0;
}

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

/* The column-matrix rows of output line (img, oy): ow rows of kh*kw*c values. */
RP_INLINE_COPIES
static void FN(im2col_line)(const rp_conv2d_geom *g, const REAL *x, long img, int oy, REAL *dst)
{
    const int c = g->c, kw = g->kw;
    const long run = (long)kw * c;                 /* one kernel row of one patch */
    const REAL *ximg = x + img * ((long)g->h * g->w * c);
    const int iy0 = oy * g->stride_h - g->pad_top;
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

/* Per calling thread, grown on demand and kept (as the GEMM's packing
 * buffers): the per-block partial sums of dW. */
static __thread REAL *FN(dw_partials) = NULL;
static __thread size_t FN(dw_partials_capacity) = 0;

/* The calling thread's partial-sum buffer with room for count values (NULL if out of memory). */
static REAL *FN(reserve_partials)(size_t count)
{
    if (FN(dw_partials_capacity) < count) {
        free(FN(dw_partials));
        FN(dw_partials) = malloc(sizeof(REAL) * count);
        FN(dw_partials_capacity) = FN(dw_partials) ? count : 0;
    }
    return FN(dw_partials);
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

/* Fused forward of one chunk: each block of output lines is gathered by
 * im2col and multiplied at once by a one-thread GEMM, while its columns are
 * still in the core's cache; the threads share the blocks in one parallel
 * region (no barrier per GEMM cache block, which matters on a busy machine). */
static void FN(conv_forward_blocks)(const rp_conv2d_geom *g, int first, int count, long lpb,
                                    const REAL *x, const REAL *w, const REAL *b, rp_act act,
                                    REAL *col, REAL *y)
{
    const int patch = g->kh * g->kw * g->c;
    const long lines = (long)count * g->oh;
    const long blocks = (lines + lpb - 1) / lpb;
    REAL *ychunk = y + (long)first * g->oh * g->ow * g->filters;
    const int nt = rp_get_num_threads();
    (void)nt;
#ifdef RETROPROP_HAVE_OPENMP
#pragma omp parallel for schedule(static) num_threads(nt)
#endif
    for (long blk = 0; blk < blocks; ++blk) {
        const long l0 = blk * lpb, l1 = l0 + lpb < lines ? l0 + lpb : lines;
        REAL *cblk = col + l0 * g->ow * patch;
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
        if (lpb > 0) {
            FN(conv_forward_blocks)(g, first, count, lpb, x, w, b, act, col, y);
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
static void FN(conv_backward_blocks)(const rp_conv2d_geom *g, int first, int count, long lpb,
                                     const REAL *x, const REAL *w, const REAL *y,
                                     const REAL *dy, rp_act act, REAL *col, REAL *dz,
                                     REAL *partials, REAL beta, REAL *dw, REAL *db, REAL *dx)
{
    const int patch = g->kh * g->kw * g->c, filters = g->filters;
    const long rows_per_image = (long)g->oh * g->ow;
    const long image_size = (long)g->h * g->w * g->c;
    const long lines = (long)count * g->oh;
    const long blocks = (lines + lpb - 1) / lpb;
    const long per_block = (long)patch * filters + filters;   /* dW partial, then db partial */
    const long row0 = (long)first * rows_per_image;
    const int nt = rp_get_num_threads();
    (void)nt;
#ifdef RETROPROP_HAVE_OPENMP
#pragma omp parallel num_threads(nt)
#endif
    {
#ifdef RETROPROP_HAVE_OPENMP
#pragma omp for schedule(static)
#endif
        for (long blk = 0; blk < blocks; ++blk) {
            const long l0 = blk * lpb, l1 = l0 + lpb < lines ? l0 + lpb : lines;
            const long r0 = l0 * g->ow, rows = (l1 - l0) * g->ow;
            REAL *cblk = col + r0 * patch;
            REAL *dzb = dz + (row0 + r0) * filters;
            const REAL *yb = y + (row0 + r0) * filters, *dyb = dy + (row0 + r0) * filters;
            REAL *pw = partials + blk * per_block, *pb = pw + (long)patch * filters;
            for (int f = 0; f < filters; ++f) pb[f] = (REAL)0;
            for (long r = 0; r < rows; ++r) {
                for (int f = 0; f < filters; ++f) {
                    const long i = r * filters + f;
                    dzb[i] = dyb[i] * GRAD_FROM_OUTPUT(act, yb[i]);
                    pb[f] += dzb[i];
                }
            }
            for (long l = l0; l < l1; ++l)
                FN(im2col_line)(g, x, first + l / g->oh, (int)(l % g->oh),
                                col + l * g->ow * patch);
            GEMM(1, 0, patch, filters, (int)rows, (REAL)1, cblk, patch, dzb, filters, (REAL)0,
                 pw, filters, NULL, RP_ACT_LINEAR);
            if (dx)
                GEMM(0, 1, (int)rows, patch, filters, (REAL)1, dzb, filters, w, filters, (REAL)0,
                     cblk, patch, NULL, RP_ACT_LINEAR);
        }
        if (dx) {
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
            REAL sum = beta == (REAL)0 ? (REAL)0 : beta * *target;
            for (long blk = 0; blk < blocks; ++blk) sum += partials[blk * per_block + i];
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

    if (!rp_conv2d_is_pointwise(g)) {
        if (chunk < 1) chunk = 1;
        /* The fused path needs per-block partial sums of dW and db. It is
         * taken for all chunks or for none, as the geometry and the batch
         * decide (never the thread count); a last chunk too small to split
         * is then one block. */
        const size_t per_block = (size_t)patch * filters + filters;
        REAL *partials = NULL;
        if (lines_per_block(g, chunk < g->n ? chunk : g->n) > 0 &&
            per_block * RP_CONV_MAX_BLOCKS <= RP_CONV_PARTIALS_MAX)
            partials = FN(reserve_partials)(per_block * RP_CONV_MAX_BLOCKS);
        if (partials) {
            for (int first = 0; first < g->n; first += chunk) {
                const int count = g->n - first < chunk ? g->n - first : chunk;
                long lpb = lines_per_block(g, count);
                if (lpb <= 0) lpb = (long)count * g->oh;   /* one block: still valid */
                FN(conv_backward_blocks)(g, first, count, lpb, x, w, y, dy, act, col, dz,
                                         partials, first == 0 ? (REAL)0 : (REAL)1, dw, db, dx);
            }
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
