/* Portable microkernels: plain C the compiler can vectorise for any target. */
#include "gemm_internal.h"
#include "act_scalar.h"

void rp_ukernel_f32_generic(int kc, const float *ap, const float *bp, long ldbp, float *c, int ldc,
                            float alpha, float beta, const float *bias, rp_act act)
{
    float acc[RP_MR_F32][RP_NR_F32] = {{0}};
    for (int p = 0; p < kc; ++p) {
        const float *a = ap + p * RP_MR_F32;
        const float *b = bp + p * ldbp;
        for (int i = 0; i < RP_MR_F32; ++i)
            for (int j = 0; j < RP_NR_F32; ++j)
                acc[i][j] += a[i] * b[j];
    }
    for (int i = 0; i < RP_MR_F32; ++i) {
        float *crow = c + (long)i * ldc;
        for (int j = 0; j < RP_NR_F32; ++j) {
            float v = alpha * acc[i][j];
            if (beta != 0.0f) v += beta * crow[j];
            if (bias) v += bias[j];
            crow[j] = rp_act_scalar_f32(act, v);
        }
    }
}

void rp_ukernel_f64_generic(int kc, const double *ap, const double *bp, long ldbp, double *c, int ldc,
                            double alpha, double beta, const double *bias, rp_act act)
{
    double acc[RP_MR_F64][RP_NR_F64] = {{0}};
    for (int p = 0; p < kc; ++p) {
        const double *a = ap + p * RP_MR_F64;
        const double *b = bp + p * ldbp;
        for (int i = 0; i < RP_MR_F64; ++i)
            for (int j = 0; j < RP_NR_F64; ++j)
                acc[i][j] += a[i] * b[j];
    }
    for (int i = 0; i < RP_MR_F64; ++i) {
        double *crow = c + (long)i * ldc;
        for (int j = 0; j < RP_NR_F64; ++j) {
            double v = alpha * acc[i][j];
            if (beta != 0.0) v += beta * crow[j];
            if (bias) v += bias[j];
            crow[j] = rp_act_scalar_f64(act, v);
        }
    }
}
