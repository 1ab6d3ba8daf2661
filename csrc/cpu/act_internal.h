/* Private: the AVX2 elementwise activation loops, picked by act.c at run time. */
#ifndef RETROPROP_ACT_INTERNAL_H
#define RETROPROP_ACT_INTERNAL_H

#include <stddef.h>
#include "retroprop/act.h"

#ifdef RETROPROP_HAVE_AVX2
void rp_act_forward_f32_avx2(rp_act act, size_t n, const float *x, float *y);
void rp_act_backward_f32_avx2(rp_act act, size_t n, const float *y, const float *dy, float *dx);
#endif

/* Below this many elements a parallel region costs more than it saves. */
#define RP_ELEMENTWISE_PARALLEL_MIN 32768

#endif
