/* Private: the AVX2 float32 softmax rows that loss.c picks at run time, and
 * when the row kernels use more than one thread. */
#ifndef RETROPROP_LOSS_INTERNAL_H
#define RETROPROP_LOSS_INTERNAL_H

#include <stdint.h>

/* Softmax and softmax cross-entropy of an (n x c) matrix run on one thread
 * below this many elements. Above it the cross-entropy's sum is added per
 * thread, so its last bits depend on the thread count. */
#define RP_LOSS_ROWS_PARALLEL_MIN 65536

#ifdef RETROPROP_HAVE_AVX2
/* Rows [lo, hi) of the (n x c) matrices of rp_softmax_f32 / rp_softmax_xent_f32;
 * the xent form returns the sum of the rows' losses (not the mean) and
 * writes grad rows scaled by inv_n = 1 / n. */
void rp_softmax_rows_f32_avx2(int lo, int hi, int c, const float *x, float *out);
double rp_softmax_xent_rows_f32_avx2(int lo, int hi, int c, const float *z, const int64_t *labels,
                                     const float *targets, float *grad, float inv_n);
#endif

#endif
