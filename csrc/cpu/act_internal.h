/* Private: the AVX2 elementwise activation loops, picked by act.c at run
 * time, and the sizes above which elementwise loops use OpenMP threads. */
#ifndef RETROPROP_ACT_INTERNAL_H
#define RETROPROP_ACT_INTERNAL_H

#include <stddef.h>
#include "retroprop/act.h"

#ifdef RETROPROP_HAVE_AVX2
/* The kinds the AVX2 loops cover; act.c uses scalar loops for the others. */
int rp_act_forward_has_avx2(rp_act act);
int rp_act_backward_has_avx2(rp_act act);
void rp_act_forward_f32_avx2(rp_act act, float param, size_t n, const float *x, float *y);
/* From the output y; only for kinds whose derivative does not need the input. */
void rp_act_backward_f32_avx2(rp_act act, float param, size_t n, const float *y, const float *dy,
                              float *dx);
#endif

/* Below this many elements a parallel region costs more than it saves, for
 * loops that are a few flops per element (memory bound). Measured: see
 * docs/BACKEND.md ("Elementwise activations"). */
#define RP_ELEMENTWISE_PARALLEL_MIN 32768
/* The same for loops that call libm per element (exp, expm1, atan, log1p):
 * ~10-20 ns per element, so threads pay off on much smaller arrays. */
#define RP_ELEMENTWISE_PARALLEL_MIN_TRANSCENDENTAL 4096

#endif
