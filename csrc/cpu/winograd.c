/* Winograd F(4x4, 3x3) convolution, float32 (see winograd_internal.h for the
 * algebra and the buffer layouts): the driver. It cuts the output tiles into
 * blocks, hands the blocks to the threads, and runs the instruction set's
 * kernels on each block while its buffers are in the core's L2:
 *
 *   forward      per block: input transform -> 36 products -> output transform
 *   weight grad  per group of blocks: input and dy transforms -> 36 products
 *                added into the group's dU -> dW partial; partials added in
 *                group order
 *   input grad   the forward of dz with the turned, transposed kernel
 *
 * Results do not depend on the thread count: a forward block's outputs are
 * computed by one thread from its own tiles, and the weight gradient's
 * groups depend on the geometry alone and are summed in a fixed order.
 *
 * Error: the transforms multiply by up to 8 and 5 and divide by 24, so the
 * float32 result is less exact than a direct sum: tests/test_conv_algorithms.py
 * bounds |y - exact| by 2e-5 * (|x| conv |w|) (measured ~3e-6 at 16-128
 * channels), against ~1e-6 for the direct sum. float64 never takes this path.
 */
#include <stdlib.h>
#include <string.h>
#include "retroprop/conv.h"
#include "retroprop/runtime.h"
#include "act_internal.h"
#include "act_scalar.h"
#include "conv_internal.h"
#include "winograd_internal.h"
#ifdef RETROPROP_HAVE_OPENMP
#include <omp.h>
#endif

/* At most this many weight-gradient groups (each keeps a partial dW of
 * 9 * c * filters values until the final ordered sum). */
#define RP_WINO_MAX_GROUPS 64
#define RP_WINO_PARTIALS_MAX (4L << 20)

static const rp_wino_kernels *kernels(void)
{
#ifdef RETROPROP_HAVE_AVX2
    if (rp_simd_in_use() == RP_SIMD_AVX2) return &rp_wino_kernels_avx2;
#endif
    return &rp_wino_kernels_generic;
}

/* Grown on demand and kept per thread, as the GEMM's packing buffers: the
 * transformed weights (caller), a block's V and M (each worker), a group's
 * dU (each worker). NULL when out of memory. */
static __thread float *u_buffer = NULL, *block_buffer = NULL, *du_buffer = NULL;
static __thread size_t u_capacity = 0, block_capacity = 0, du_capacity = 0;

static float *reserve(float **buffer, size_t *capacity, size_t count)
{
    if (*capacity < count) {
        free(*buffer);
        *buffer = NULL;
        *capacity = 0;
        void *p = NULL;
        if (posix_memalign(&p, 64, count * sizeof(float)) != 0) return NULL;
        *buffer = (float *)p;
        *capacity = count;
    }
    return *buffer;
}

static long round_up(long v, long m)
{
    return (v + m - 1) / m * m;
}

/* The tiling of g with blocks of `block` tiles (0: as the table's L2 budget allows). */
static void tiling(const rp_conv2d_geom *g, const rp_wino_kernels *kr, long block,
                   rp_wino_geom *wg)
{
    wg->g = g;
    wg->tiles_h = (g->oh + RP_WINO_M - 1) / RP_WINO_M;
    wg->tiles_w = (g->ow + RP_WINO_M - 1) / RP_WINO_M;
    wg->tiles = (long)g->n * wg->tiles_h * wg->tiles_w;
    wg->cp = (int)round_up(g->c, kr->vlen);
    wg->kp = (int)round_up(g->filters, kr->nr);
    if (block <= 0) {
        /* V and M of a block within the budget, in whole microkernel rows */
        block = kr->block_bytes / ((long)RP_WINO_P * (wg->cp + wg->kp) * (long)sizeof(float));
        block = block / 6 * 6;
        if (block < 6) block = 6;
    }
    wg->block = block < wg->tiles ? block : wg->tiles;
    wg->v_pos = wg->cp;
    wg->v_tile = RP_WINO_P * wg->cp;
    wg->m_pos = wg->kp;
    wg->m_tile = RP_WINO_P * wg->kp;
}

int rp_conv2d_winograd_forward_f32(const rp_conv2d_geom *g, const float *x, const float *w,
                                   const float *b, rp_act act, float *y)
{
    const rp_wino_kernels *kr = kernels();
    rp_wino_geom wg;
    tiling(g, kr, 0, &wg);
    float *u = reserve(&u_buffer, &u_capacity, (size_t)RP_WINO_P * wg.cp * wg.kp);
    if (!u) return -1;
    kr->transform_weights(g->c, g->filters, w, wg.cp, wg.kp, u);
    const long blocks = (wg.tiles + wg.block - 1) / wg.block;
    const size_t per_block = (size_t)RP_WINO_P * wg.block * (wg.cp + wg.kp);
    int failed = 0;
    const int nt = blocks > 1 ? rp_get_num_threads() : 1;
    (void)nt;
#ifdef RETROPROP_HAVE_OPENMP
#pragma omp parallel num_threads(nt)
#endif
    {
        float *v = reserve(&block_buffer, &block_capacity, per_block);
        float *m = v ? v + (size_t)RP_WINO_P * wg.block * wg.cp : NULL;
        if (!v) {
#ifdef RETROPROP_HAVE_OPENMP
#pragma omp atomic write
#endif
            failed = 1;
        }
#ifdef RETROPROP_HAVE_OPENMP
#pragma omp for schedule(dynamic, 1)
#endif
        for (long blk = 0; blk < blocks; ++blk) {
            if (!v) continue;
            const long t0 = blk * wg.block;
            const int count = (int)(wg.tiles - t0 < wg.block ? wg.tiles - t0 : wg.block);
            kr->input_tiles(&wg, x, t0, count, v);
            kr->multiply(&wg, count, v, u, m);
            kr->output_tiles(&wg, m, t0, count, b, act, y);
        }
    }
    return failed ? -1 : 0;
}

/* dw = sum over tiles of the weight gradient, from x and dz (its geometry g). */
static int weight_grad(const rp_conv2d_geom *g, const float *x, const float *dz, float *dw)
{
    const rp_wino_kernels *kr = kernels();
    rp_wino_geom wg;
    tiling(g, kr, kr->grad_block, &wg);
    const long blocks = (wg.tiles + wg.block - 1) / wg.block;
    /* groups of consecutive blocks, at most RP_WINO_MAX_GROUPS (the geometry decides) */
    const long dw_size = 9L * g->c * g->filters;
    long per_group = (blocks + RP_WINO_MAX_GROUPS - 1) / RP_WINO_MAX_GROUPS;
    /* and at most RP_WINO_PARTIALS_MAX values of partials */
    if (per_group * RP_WINO_PARTIALS_MAX < blocks * dw_size)
        per_group = (blocks * dw_size + RP_WINO_PARTIALS_MAX - 1) / RP_WINO_PARTIALS_MAX;
    const long groups = (blocks + per_group - 1) / per_group;
    float *partials = (float *)malloc(sizeof(float) * (size_t)(groups * dw_size));
    if (!partials) return -1;
    const size_t per_block = (size_t)RP_WINO_P * wg.block * (wg.cp + wg.kp);
    const size_t du_size = (size_t)RP_WINO_P * wg.cp * wg.kp;
    int failed = 0;
    const int nt = groups > 1 ? rp_get_num_threads() : 1;
    (void)nt;
#ifdef RETROPROP_HAVE_OPENMP
#pragma omp parallel num_threads(nt)
#endif
    {
        float *v = reserve(&block_buffer, &block_capacity, per_block);
        float *dm = v ? v + (size_t)RP_WINO_P * wg.block * wg.cp : NULL;
        float *du = reserve(&du_buffer, &du_capacity, du_size);
        if (!v || !du) {
#ifdef RETROPROP_HAVE_OPENMP
#pragma omp atomic write
#endif
            failed = 1;
        }
#ifdef RETROPROP_HAVE_OPENMP
#pragma omp for schedule(dynamic, 1)
#endif
        for (long grp = 0; grp < groups; ++grp) {
            if (!v || !du) continue;
            const long b1 = (grp + 1) * per_group < blocks ? (grp + 1) * per_group : blocks;
            for (long blk = grp * per_group; blk < b1; ++blk) {
                const long t0 = blk * wg.block;
                const int count = (int)(wg.tiles - t0 < wg.block ? wg.tiles - t0 : wg.block);
                kr->input_tiles(&wg, x, t0, count, v);
                kr->grad_tiles(&wg, dz, t0, count, dm);
                kr->multiply_grad(&wg, count, v, dm, blk > grp * per_group, du);
            }
            kr->transform_weight_grad(g->c, g->filters, du, wg.cp, wg.kp,
                                      partials + grp * dw_size);
        }
#ifdef RETROPROP_HAVE_OPENMP
#pragma omp for schedule(static)
#endif
        for (long i = 0; i < dw_size; ++i) {
            float sum = 0.0f;
            for (long grp = 0; grp < groups; ++grp) sum += partials[grp * dw_size + i];
            dw[i] = sum;
        }
    }
    free(partials);
    return failed ? -1 : 0;
}

/* dz = dy * act'(y) (dz NULL: the activation is linear and dz is dy itself)
 * and db = the column sums of dz (db may be NULL), over rows of `filters`
 * values: blocks of rows fixed by the size, summed in block order. */
#define RP_WINO_DB_BLOCKS 16
static void output_grad(long rows, int filters, const float *y, const float *dy, rp_act act,
                        float *dz, float *db)
{
    float partial[RP_WINO_DB_BLOCKS][64];
    const int nt = (double)rows * filters < (double)RP_ELEMENTWISE_PARALLEL_MIN
                       ? 1 : rp_get_num_threads();
    (void)nt;
    for (int f0 = 0; f0 < filters; f0 += 64) {
        const int nf = filters - f0 < 64 ? filters - f0 : 64;
#ifdef RETROPROP_HAVE_OPENMP
#pragma omp parallel for schedule(static) num_threads(nt)
#endif
        for (int blk = 0; blk < RP_WINO_DB_BLOCKS; ++blk) {
            const long r0 = rows * blk / RP_WINO_DB_BLOCKS;
            const long r1 = rows * (blk + 1) / RP_WINO_DB_BLOCKS;
            float *pb = partial[blk];
            for (int f = 0; f < nf; ++f) pb[f] = 0.0f;
            for (long r = r0; r < r1; ++r) {
                const float *dyr = dy + r * filters + f0, *yr = y + r * filters + f0;
                if (!dz) {
                    for (int f = 0; f < nf; ++f) pb[f] += dyr[f];
                    continue;
                }
                float *dzr = dz + r * filters + f0;
                if (act == RP_ACT_RELU) {
                    /* dy read unconditionally: a blend, not a branch */
                    for (int f = 0; f < nf; ++f) {
                        const float d = dyr[f];
                        dzr[f] = yr[f] > 0.0f ? d : 0.0f;
                    }
                } else {
                    for (int f = 0; f < nf; ++f)
                        dzr[f] = dyr[f] * rp_act_grad_from_output_f32(act, yr[f]);
                }
                for (int f = 0; f < nf; ++f) pb[f] += dzr[f];
            }
        }
        if (db)
            for (int f = 0; f < nf; ++f) {
                float sum = 0.0f;
                for (int blk = 0; blk < RP_WINO_DB_BLOCKS; ++blk) sum += partial[blk][f];
                db[f0 + f] = sum;
            }
    }
}

int rp_conv2d_winograd_backward_f32(const rp_conv2d_geom *g, const float *x, const float *w,
                                    const float *y, const float *dy, rp_act act, float *dz,
                                    float *dw, float *db, float *dx)
{
    const long rows = (long)g->n * g->oh * g->ow;
    /* with no activation dz is dy itself: no copy */
    const float *dzr = act == RP_ACT_LINEAR ? dy : dz;
    if (act != RP_ACT_LINEAR || db)
        output_grad(rows, g->filters, y, dy, act, act == RP_ACT_LINEAR ? NULL : dz, db);
    if (weight_grad(g, x, dzr, dw) != 0) return -1;
    if (!dx) return 0;
    /* dx: the forward of dz with w turned by 180 degrees, channel axes swapped */
    rp_conv2d_geom gt = *g;
    gt.h = g->oh;
    gt.w = g->ow;
    gt.c = g->filters;
    gt.filters = g->c;
    gt.pad_top = 2 - g->pad_top;
    gt.pad_left = 2 - g->pad_left;
    gt.oh = g->h;
    gt.ow = g->w;
    float *wt = (float *)malloc(sizeof(float) * 9 * (size_t)g->c * g->filters);
    if (!wt) return -1;
    for (int t = 0; t < 9; ++t) {
        const float *src = w + (long)t * g->c * g->filters;
        float *dst = wt + (long)(8 - t) * g->filters * g->c;
        for (int ci = 0; ci < g->c; ++ci)
            for (int f = 0; f < g->filters; ++f) dst[(long)f * g->c + ci] = src[(long)ci * g->filters + f];
    }
    const int status = rp_conv2d_winograd_forward_f32(&gt, dzr, wt, NULL, RP_ACT_LINEAR, dx);
    free(wt);
    return status;
}
