/* The Winograd kernels for any CPU: 4 floats a vector (SSE2 on x86-64, NEON
 * on ARM, or scalar code where the compiler has neither), a 6 x 8
 * microkernel. Taken when AVX2 is absent or turned off (rp_simd_set). */
#include "winograd_internal.h"

#define VLEN 4
#define MR 6
#define WSFX(name) wino_generic_##name
typedef float wino_generic_vf __attribute__((vector_size(16)));
typedef int wino_generic_vi __attribute__((vector_size(16)));
#define VF wino_generic_vf
#define VI wino_generic_vi
#define SPLAT(s) ((VF){(s), (s), (s), (s)})
#include "winograd_kernels.inc"

const rp_wino_kernels rp_wino_kernels_generic = {
    "generic", VLEN, 2 * VLEN, 512 << 10, 128,
    wino_generic_input_tiles, wino_generic_output_tiles, wino_generic_grad_tiles,
    wino_generic_multiply, wino_generic_multiply_grad,
    wino_generic_transform_weights, wino_generic_transform_weight_grad,
};
