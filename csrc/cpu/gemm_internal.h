/* Private to the GEMM: register-block shapes and the microkernel interface.
 *
 * A microkernel multiplies one packed MR x kc panel of A by one packed
 * kc x NR panel of B and writes the MR x NR tile of C:
 *     C = alpha * (A_panel @ B_panel) + beta * C      (C not read when beta == 0)
 * and then, when bias != NULL or act != RP_ACT_LINEAR (the driver asks for
 * this only on the last k block), C = act(C + bias).
 * Layouts: ap[p * MR + i] = A(i, p) (always packed); bp[p * ldbp + j] = B(p, j),
 * where ldbp is NR for a packed panel, or the row stride of B itself when a
 * row-major B is read in place (full panels only, see gemm_driver.inc).
 */
#ifndef RETROPROP_GEMM_INTERNAL_H
#define RETROPROP_GEMM_INTERNAL_H

#include "retroprop/act.h"

/* 6x16 float32 and 6x8 float64: 12 ymm accumulators, plus 2 for B and 1 for
 * the broadcast A value, inside AVX2's 16 registers. */
#define RP_MR_F32 6
#define RP_NR_F32 16
#define RP_MR_F64 6
#define RP_NR_F64 8

typedef void (*rp_ukernel_f32_fn)(int kc, const float *ap, const float *bp, long ldbp,
                                  float *c, int ldc, float alpha, float beta,
                                  const float *bias, rp_act act);
typedef void (*rp_ukernel_f64_fn)(int kc, const double *ap, const double *bp, long ldbp,
                                  double *c, int ldc, double alpha, double beta,
                                  const double *bias, rp_act act);

void rp_ukernel_f32_generic(int kc, const float *ap, const float *bp, long ldbp, float *c, int ldc,
                            float alpha, float beta, const float *bias, rp_act act);
void rp_ukernel_f64_generic(int kc, const double *ap, const double *bp, long ldbp, double *c, int ldc,
                            double alpha, double beta, const double *bias, rp_act act);
#ifdef RETROPROP_HAVE_AVX2
void rp_ukernel_f32_avx2(int kc, const float *ap, const float *bp, long ldbp, float *c, int ldc,
                         float alpha, float beta, const float *bias, rp_act act);
void rp_ukernel_f64_avx2(int kc, const double *ap, const double *bp, long ldbp, double *c, int ldc,
                         double alpha, double beta, const double *bias, rp_act act);
void rp_ukernel_f32_avx2_rows(int kc, const float *a, long rsa, const float *bp, long ldbp,
                              float *c, int ldc, float alpha, float beta, const float *bias,
                              rp_act act);
void rp_ukernel_f32_avx2_gather(int kc, const float *x, long pixel_stride, const int *offsets,
                                const float *bp, long ldbp, float *c, int ldc, const float *bias,
                                rp_act act);
void rp_ukernel_f32_avx2_gather_t(int lines, const float *const *line_x, int ow,
                                  long pixel_stride, const int *offsets, const float *bp,
                                  long ldbp, float *c, int ldc);
void rp_pack_a_rows6_f32_avx2(int kc, const float *a, long rsa, float *ap);
void rp_gemm_row_f32_avx2(int n, int k, float alpha, const float *a, long csa, const float *b,
                          long rsb, float beta, float *c, const float *bias, rp_act act);
#endif

#endif
