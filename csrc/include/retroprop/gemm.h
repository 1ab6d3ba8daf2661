/* General matrix multiply, row-major, BLIS/Goto structure.
 *
 *   C (m x n) = alpha * op(A) @ op(B) + beta * C, then optionally
 *   C = act(C + bias) with bias of length n added to every row.
 *
 * op(A) is m x k: A itself (trans_a = 0, lda >= k) or A^T with A stored
 * k x m (trans_a = 1, lda >= m); likewise op(B) is k x n. Transposes are read
 * through strides while packing, never materialised. beta == 0 means C is
 * not read (it may hold garbage, NaN included). m, n or k may be 0.
 *
 * rp_gemm_act_* take the activation's parameter explicitly (see act.h; only
 * activations whose derivative comes from the output are meant to be fused,
 * since the pre-activation is not kept); rp_gemm_* use rp_act_default_param.
 */
#ifndef RETROPROP_GEMM_H
#define RETROPROP_GEMM_H

#include "retroprop/act.h"

#ifdef __cplusplus
extern "C" {
#endif

void rp_gemm_f32(int trans_a, int trans_b, int m, int n, int k,
                 float alpha, const float *a, int lda, const float *b, int ldb,
                 float beta, float *c, int ldc,
                 const float *bias, rp_act act);

void rp_gemm_f64(int trans_a, int trans_b, int m, int n, int k,
                 double alpha, const double *a, int lda, const double *b, int ldb,
                 double beta, double *c, int ldc,
                 const double *bias, rp_act act);

void rp_gemm_act_f32(int trans_a, int trans_b, int m, int n, int k,
                     float alpha, const float *a, int lda, const float *b, int ldb,
                     float beta, float *c, int ldc,
                     const float *bias, rp_act act, double act_param);

void rp_gemm_act_f64(int trans_a, int trans_b, int m, int n, int k,
                     double alpha, const double *a, int lda, const double *b, int ldb,
                     double beta, double *c, int ldc,
                     const double *bias, rp_act act, double act_param);

#ifdef __cplusplus
}
#endif
#endif
