/* The Winograd kernels for AVX2+FMA: 8 floats a vector, a 6 x 16 microkernel
 * (12 accumulators in ymm registers). Compiled with -mavx2 -mfma; used only
 * when the CPU has both (winograd.c, rp_wino_kernels_get). */
#include <immintrin.h>
#include "winograd_internal.h"

#define VLEN 8
#define MR 6
#define WSFX(name) wino_avx2_##name
typedef float wino_avx2_vf __attribute__((vector_size(32)));
typedef int wino_avx2_vi __attribute__((vector_size(32)));
#define VF wino_avx2_vf
#define VI wino_avx2_vi
#define SPLAT(s) ((VF)_mm256_set1_ps(s))
#include "winograd_kernels.inc"

/* Block sizes, measured on a Zen 3 core (512 KiB L2) with benchmarks/bench_conv.c:
 * V + M of a forward block within about the L2 (24 tiles at 64 channels, 54
 * at 32); budgets of 192 KiB (6 tiles at 64 channels: the products' rows too
 * short) to 640 KiB were within the noise of each other but for the smallest.
 * The weight gradient sums 128 tiles a block (V and dM of one position, read
 * 36 times, stay in L2: 64 KiB each at 128 channels). */
const rp_wino_kernels rp_wino_kernels_avx2 = {
    "avx2+fma", VLEN, 2 * VLEN, 512 << 10, 128,
    wino_avx2_input_tiles, wino_avx2_output_tiles, wino_avx2_grad_tiles,
    wino_avx2_multiply, wino_avx2_multiply_grad,
    wino_avx2_transform_weights, wino_avx2_transform_weight_grad,
};
