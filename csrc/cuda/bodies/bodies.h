/* Every kernel body (see common.h), instantiated for float (suffix _f32)
 * and double (_f64). Included by csrc/cuda/kernels.cu (nvcc) and
 * csrc/cuda/emulate.c (the C compiler). */
#ifndef RETROPROP_CUDA_BODIES_H
#define RETROPROP_CUDA_BODIES_H

#include "common.h"
#include "retroprop/act.h"
#include "retroprop/conv.h"
#include "retroprop/optim.h"
#include "retroprop/pool.h"
#include "act_scalar.h"   /* csrc/cpu: the activation formulas */

#include "untyped.inc"

#define REAL float
#define SFX(name) name##_f32
#define EXP expf
#define TANH tanhf
#define SQRT sqrtf
#include "act.inc"
#include "loss.inc"
#include "norm.inc"
#include "conv.inc"
#include "pool.inc"
#include "optim.inc"
#include "misc.inc"
#undef REAL
#undef SFX
#undef EXP
#undef TANH
#undef SQRT

#define REAL double
#define SFX(name) name##_f64
#define EXP exp
#define TANH tanh
#define SQRT sqrt
#include "act.inc"
#include "loss.inc"
#include "norm.inc"
#include "conv.inc"
#include "pool.inc"
#include "optim.inc"
#include "misc.inc"
#undef REAL
#undef SFX
#undef EXP
#undef TANH
#undef SQRT

#endif
