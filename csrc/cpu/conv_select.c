/* Which convolution algorithm runs (see conv.h, rp_conv_algo): one table of
 * thresholds, one selector, and the override tests and benchmarks use. */
#include "retroprop/conv.h"
#include "retroprop/runtime.h"
#include "act_scalar.h"
#include "conv_internal.h"
#include "gemm_internal.h"

/* Measured on a Zen 3 core (AVX2, one thread), float32, forward + backward
 * with dx, batch 64, 3x3 "same" (benchmarks/bench_conv.c), Winograd against
 * the best other algorithm: 8 -> 8 channels at 32x32 2.6x (im2col), 8 -> 16
 * 1.5x (implicit), 16 -> 16 1.7-2.3x at 8x8..32x32, 32 -> 32 1.9x, 32 -> 64
 * and 64 -> 64 at 16x16 2.2-2.8x, 128 -> 128 at 8x8 2.8x; with 4 or 3 input
 * channels (a first layer) the implicit GEMM wins (4 -> 16: 0.77x), its
 * depth not being limited by the channels. */
const rp_conv_thresholds rp_conv_table = {
    .winograd_min_channels = 8,
    .winograd_min_filters = 8,
    .winograd_min_tiles = 16,
};

static int forced = RP_CONV_ALGO_AUTO;

int rp_conv_direct_fits(const rp_conv2d_geom *g)
{
    return g->filters <= RP_DIRECT_FILTERS && (long)g->kh * g->kw * g->c <= RP_DIRECT_PATCH &&
           !rp_conv2d_is_pointwise(g);
}

int rp_conv_implicit_fits(const rp_conv2d_geom *g, int elem_size)
{
#ifdef RETROPROP_HAVE_AVX2
    return elem_size == 4 && g->filters % RP_NR_F32 == 0 &&
           (long)g->kh * g->kw * g->c <= RP_PACKED_PATCH_MAX && !rp_conv2d_is_pointwise(g) &&
           rp_simd_in_use() == RP_SIMD_AVX2;
#else
    (void)g, (void)elem_size;
    return 0;
#endif
}

int rp_conv_winograd_fits(const rp_conv2d_geom *g, int elem_size)
{
    return elem_size == 4 && g->kh == 3 && g->kw == 3 && g->stride_h == 1 && g->stride_w == 1 &&
           g->dilation_h == 1 && g->dilation_w == 1;
}

int rp_conv2d_algorithm_applies(const rp_conv2d_geom *g, int elem_size, rp_act act, int algo)
{
    switch (algo) {
    case RP_CONV_ALGO_IM2COL: return 1;
    case RP_CONV_ALGO_DIRECT: return rp_conv_direct_fits(g);
    case RP_CONV_ALGO_IMPLICIT:
        /* the packed forward applies the activation in the microkernel */
        return rp_conv_implicit_fits(g, elem_size) &&
               rp_act_in_microkernel(act, rp_act_param_default(act));
    case RP_CONV_ALGO_WINOGRAD: return rp_conv_winograd_fits(g, elem_size);
    default: return 0;
    }
}

int rp_conv2d_select(const rp_conv2d_geom *g, int elem_size, rp_act act)
{
    if (forced != RP_CONV_ALGO_AUTO && rp_conv2d_algorithm_applies(g, elem_size, act, forced))
        return forced;
    const long tiles = (long)g->n * ((g->oh + 3) / 4) * ((g->ow + 3) / 4);
    if (rp_conv_winograd_fits(g, elem_size) && rp_simd_in_use() == RP_SIMD_AVX2 &&
        g->c >= rp_conv_table.winograd_min_channels &&
        g->filters >= rp_conv_table.winograd_min_filters &&
        tiles >= rp_conv_table.winograd_min_tiles)
        return RP_CONV_ALGO_WINOGRAD;
    if (rp_conv2d_algorithm_applies(g, elem_size, act, RP_CONV_ALGO_DIRECT))
        return RP_CONV_ALGO_DIRECT;
    if (rp_conv2d_algorithm_applies(g, elem_size, act, RP_CONV_ALGO_IMPLICIT))
        return RP_CONV_ALGO_IMPLICIT;
    return RP_CONV_ALGO_IM2COL;
}

int rp_conv2d_force_algorithm(int algo)
{
    if (algo < 0 || algo >= RP_CONV_ALGO_COUNT) return -1;
    const int previous = forced;
    forced = algo;
    return previous;
}

const char *rp_conv2d_algorithm_name(int algo)
{
    static const char *const names[RP_CONV_ALGO_COUNT] = {"auto", "im2col", "direct", "implicit",
                                                          "winograd"};
    return algo >= 0 && algo < RP_CONV_ALGO_COUNT ? names[algo] : "unknown";
}
