/* Portable microkernels: C for any target (SSE2-only x86-64, ARM NEON, ...).
 *
 * The MR x NR tile is computed in two halves of NR/2 columns. A whole
 * 6x16 float32 tile needs 24 four-wide registers of accumulators, more than
 * SSE2 has (16): written as one loop nest, GCC kept it in memory and
 * reshuffled it every step (2.4 GFLOP/s in L1 on Zen 3). Half a tile is 12
 * accumulators, plus two of B and one of A: it fits in 16 registers, and
 * NEON has 32. With GCC or Clang the halves use their vector extensions
 * (16-byte vectors: SSE2, NEON, ...), so no target's intrinsics are
 * needed; other compilers get plain loops. */
#include <string.h>
#include "gemm_internal.h"
#include "act_scalar.h"

/* The halves below are written for six rows and two vectors per half row. */
#if RP_MR_F32 != 6 || RP_MR_F64 != 6
#error "the generic kernels assume MR == 6"
#endif

#if defined(__GNUC__) || defined(__clang__)
typedef float rp_v4f __attribute__((vector_size(16)));
typedef double rp_v2d __attribute__((vector_size(16)));

/* acc[i * NR + j] for the 6 rows and columns [0, 2 * LANES) of bp (NR/2 of
 * them): 12 accumulators, two vectors of LANES per row. */
#define DEFINE_HALF_TILE(NAME, REAL, VEC, LANES, NR)                                         \
    static void NAME(int kc, const REAL *ap, const REAL *bp, long ldbp, REAL *acc)           \
    {                                                                                        \
        VEC c00 = {0}, c01 = {0}, c10 = {0}, c11 = {0}, c20 = {0}, c21 = {0};              \
        VEC c30 = {0}, c31 = {0}, c40 = {0}, c41 = {0}, c50 = {0}, c51 = {0};              \
        for (int p = 0; p < kc; ++p, ap += 6, bp += ldbp) {                                  \
            VEC b0, b1;                                                                      \
            memcpy(&b0, bp, sizeof b0);                                                      \
            memcpy(&b1, bp + LANES, sizeof b1);                                              \
            VEC a;                                                                           \
            a = (VEC){0} + ap[0]; c00 += a * b0; c01 += a * b1;                              \
            a = (VEC){0} + ap[1]; c10 += a * b0; c11 += a * b1;                              \
            a = (VEC){0} + ap[2]; c20 += a * b0; c21 += a * b1;                              \
            a = (VEC){0} + ap[3]; c30 += a * b0; c31 += a * b1;                              \
            a = (VEC){0} + ap[4]; c40 += a * b0; c41 += a * b1;                              \
            a = (VEC){0} + ap[5]; c50 += a * b0; c51 += a * b1;                              \
        }                                                                                    \
        const VEC rows[6][2] = {{c00, c01}, {c10, c11}, {c20, c21},                          \
                                {c30, c31}, {c40, c41}, {c50, c51}};                         \
        for (int i = 0; i < 6; ++i) memcpy(acc + i * NR, rows[i], sizeof rows[i]);          \
    }

#if RP_NR_F32 != 4 * 4 || RP_NR_F64 != 4 * 2
#error "a half tile is two 16-byte vectors wide"
#endif
DEFINE_HALF_TILE(half_tile_f32, float, rp_v4f, 4, RP_NR_F32)
DEFINE_HALF_TILE(half_tile_f64, double, rp_v2d, 2, RP_NR_F64)
#define HALF_TILE_F32 half_tile_f32
#define HALF_TILE_F64 half_tile_f64
#else
#define DEFINE_HALF_TILE(NAME, REAL, NR)                                                     \
    static void NAME(int kc, const REAL *ap, const REAL *bp, long ldbp, REAL *acc)           \
    {                                                                                        \
        REAL sum[6][NR / 2] = {{0}};                                                         \
        for (int p = 0; p < kc; ++p, ap += 6, bp += ldbp)                                    \
            for (int i = 0; i < 6; ++i)                                                      \
                for (int j = 0; j < NR / 2; ++j) sum[i][j] += ap[i] * bp[j];                 \
        for (int i = 0; i < 6; ++i) memcpy(acc + i * NR, sum[i], sizeof sum[i]);            \
    }
DEFINE_HALF_TILE(half_tile_f32, float, RP_NR_F32)
DEFINE_HALF_TILE(half_tile_f64, double, RP_NR_F64)
#define HALF_TILE_F32 half_tile_f32
#define HALF_TILE_F64 half_tile_f64
#endif

/* Both halves into acc, then C = act(alpha * acc + beta * C + bias), a row
 * at a time with the tests on beta, bias and act outside the element loops
 * (so they vectorise): for the short depths of a convolution's first layer
 * (25 steps) the write-back took as long as the multiply. */
#define DEFINE_GENERIC_KERNEL(NAME, REAL, MR, NR, HALF_TILE, ACT_SCALAR)                     \
    void NAME(int kc, const REAL *ap, const REAL *bp, long ldbp, REAL *c, int ldc,           \
              REAL alpha, REAL beta, const REAL *bias, rp_act act)                           \
    {                                                                                        \
        REAL acc[MR * NR];                                                                   \
        HALF_TILE(kc, ap, bp, ldbp, acc);                                                    \
        HALF_TILE(kc, ap, bp + NR / 2, ldbp, acc + NR / 2);                                  \
        for (int i = 0; i < MR; ++i) {                                                       \
            REAL *crow = c + (long)i * ldc, *v = acc + i * NR;                               \
            for (int j = 0; j < NR; ++j) v[j] *= alpha;                                      \
            if (beta != (REAL)0)                                                             \
                for (int j = 0; j < NR; ++j) v[j] += beta * crow[j];                         \
            if (bias)                                                                        \
                for (int j = 0; j < NR; ++j) v[j] += bias[j];                                \
            if (act == RP_ACT_LINEAR) {                                                      \
                for (int j = 0; j < NR; ++j) crow[j] = v[j];                                 \
            } else if (act == RP_ACT_RELU) {                                                 \
                for (int j = 0; j < NR; ++j) crow[j] = ACT_SCALAR(RP_ACT_RELU, v[j]);        \
            } else {                                                                         \
                for (int j = 0; j < NR; ++j) crow[j] = ACT_SCALAR(act, v[j]);                \
            }                                                                                \
        }                                                                                    \
    }

DEFINE_GENERIC_KERNEL(rp_ukernel_f32_generic, float, RP_MR_F32, RP_NR_F32, HALF_TILE_F32,
                      rp_act_scalar_f32)
DEFINE_GENERIC_KERNEL(rp_ukernel_f64_generic, double, RP_MR_F64, RP_NR_F64, HALF_TILE_F64,
                      rp_act_scalar_f64)
