/* Private to the batch-normalisation files: block sizes, the helpers the
 * kernels share, and the AVX2 builds of the kernels (norm_avx2.c). */
#ifndef RETROPROP_NORM_INTERNAL_H
#define RETROPROP_NORM_INTERNAL_H

#include <math.h>
#include <stdlib.h>
#include "retroprop/act.h"
#include "retroprop/runtime.h"
#include "act_internal.h"

#define RP_BN_BLOCK_BYTES (64L << 10)   /* a block of rows: read twice, the second time from L2 */
#define RP_BN_MIN_BLOCK_ROWS 16L
#define RP_BN_SUB 64L                   /* rows summed in the element type before the double sum */
#define RP_BN_CHUNK 256                 /* channels of one pass's local sums (on the stack) */

static inline int rp_bn_threads_for(double elements)
{
    return elements < (double)RP_ELEMENTWISE_PARALLEL_MIN ? 1 : rp_get_num_threads();
}

/* Rows per block: about RP_BN_BLOCK_BYTES of values, at least
 * RP_BN_MIN_BLOCK_ROWS; the size and the channels decide, never the threads. */
static inline long rp_bn_block_rows(long rows, int c, size_t elem)
{
    long per = RP_BN_BLOCK_BYTES / ((long)c * (long)elem);
    if (per < RP_BN_MIN_BLOCK_ROWS) per = RP_BN_MIN_BLOCK_ROWS;
    return per < rows ? per : (rows > 0 ? rows : 1);
}

#ifdef RETROPROP_HAVE_AVX2
int rp_bn_stats_f32_avx2(long rows, int c, const float *x, float *mean, float *var);
int rp_bn_apply_act_f32_avx2(long rows, int c, const float *x, const float *mean,
                             const float *var, const float *gamma, const float *beta, float eps,
                             rp_act act, float *y);
int rp_bn_backward_act_f32_avx2(long rows, int c, const float *x, const float *y,
                                const float *dy, const float *mean, const float *var,
                                const float *gamma, float eps, int batch_stats, rp_act act,
                                float *dgamma, float *dbeta, float *dx);
#endif

#endif
