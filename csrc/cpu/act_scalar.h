/* Scalar activation formulas shared by the elementwise kernels, the GEMM
 * write-back (edge tiles, the direct path, tiles of activations the SIMD
 * microkernels do not know) and the dense/conv backward passes, so there is
 * one definition of each. The formulas are in act_scalar_body.inc, written
 * once and instantiated here for float and double. */
#ifndef RETROPROP_ACT_SCALAR_H
#define RETROPROP_ACT_SCALAR_H

#include <math.h>
#include "retroprop/act.h"

/* These formulas are also the per-element bodies of the CUDA kernels
 * (csrc/cuda/bodies): under nvcc they are compiled for host and device. */
#ifdef __CUDACC__
#define RP_ACT_FN static inline __host__ __device__
#else
#define RP_ACT_FN static inline
#endif

RP_ACT_FN int rp_act_needs_input(rp_act act)
{
    return act == RP_ACT_ARCTAN || act == RP_ACT_SOFTPLUS || act == RP_ACT_GELU ||
           act == RP_ACT_SWISH || act == RP_ACT_MISH;
}

RP_ACT_FN double rp_act_param_default(rp_act act)
{
    switch (act) {
    case RP_ACT_SIGMOID: return 1.0;
    case RP_ACT_LEAKY_RELU: return 0.01;
    case RP_ACT_ELU: return 1.0;
    default: return 0.0;
    }
}

/* The activations the SIMD GEMM microkernels apply themselves; the driver
 * applies any other one to each finished tile while it is still in L1. */
RP_ACT_FN int rp_act_in_microkernel(rp_act act, double param)
{
    return act == RP_ACT_LINEAR || act == RP_ACT_RELU || act == RP_ACT_TANH ||
           (act == RP_ACT_SIGMOID && param == 1.0);
}

/* |z| beyond which gelu is z or 0 to the last bit in both precisions
 * (s = sigmoid(2u) has saturated); past it z^2 could also overflow u'. */
#define RP_GELU_SATURATED 1e4

#define REAL float
#define SFX(name) name##_f32
#define C(x) x##f
#define EXP expf
#define EXPM1 expm1f
#define LOG1P log1pf
#define TANH tanhf
#define ATAN atanf
#define FABS fabsf
#include "act_scalar_body.inc"
#undef REAL
#undef SFX
#undef C
#undef EXP
#undef EXPM1
#undef LOG1P
#undef TANH
#undef ATAN
#undef FABS

#define REAL double
#define SFX(name) name##_f64
#define C(x) x
#define EXP exp
#define EXPM1 expm1
#define LOG1P log1p
#define TANH tanh
#define ATAN atan
#define FABS fabs
#include "act_scalar_body.inc"
#undef REAL
#undef SFX
#undef C
#undef EXP
#undef EXPM1
#undef LOG1P
#undef TANH
#undef ATAN
#undef FABS

#endif
