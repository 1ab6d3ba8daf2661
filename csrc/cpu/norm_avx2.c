/* The batch-normalisation kernels compiled for AVX2+FMA (float32): eight
 * channels a vector where norm.c's portable build has four. Called by
 * norm.c only when the runtime uses AVX2. */
#include "retroprop/norm.h"
#include "norm_internal.h"
#include "act_scalar.h"

#define REAL float
#define KFN(name) rp_bn_##name##_f32_avx2
#define GRAD_FROM_OUTPUT rp_act_grad_from_output_f32
#define ACT_SCALAR rp_act_scalar_f32
#include "norm_kernels.inc"
