/* Fully connected layer: forward is one GEMM with bias + activation fused
 * into its write-back; backward is one pass for dz and db, then two GEMMs
 * that read x and W transposed through strides (no transposed copies). */
#include "retroprop/dense.h"
#include "retroprop/gemm.h"
#include "retroprop/loss.h"
#include "retroprop/runtime.h"
#include "act_internal.h"
#include "act_scalar.h"

void rp_dense_forward_f32(int n_batch, int n_in, int n_out, const float *x,
                          const float *w, const float *b, rp_act act, double act_param, float *y)
{
    rp_gemm_act_f32(0, 0, n_batch, n_out, n_in, 1.0f, x, n_in, w, n_out, 0.0f, y, n_out, b, act,
                    act_param);
}

void rp_dense_forward_f64(int n_batch, int n_in, int n_out, const double *x,
                          const double *w, const double *b, rp_act act, double act_param, double *y)
{
    rp_gemm_act_f64(0, 0, n_batch, n_out, n_in, 1.0, x, n_in, w, n_out, 0.0, y, n_out, b, act,
                    act_param);
}

void rp_dense_forward_softmax_f32(int n_batch, int n_in, int n_out, const float *x,
                                  const float *w, const float *b, float *logits, float *y)
{
    rp_gemm_act_f32(0, 0, n_batch, n_out, n_in, 1.0f, x, n_in, w, n_out, 0.0f, logits, n_out, b,
                    RP_ACT_LINEAR, 0.0);
    rp_softmax_f32(n_batch, n_out, logits, y);
}

void rp_dense_forward_softmax_f64(int n_batch, int n_in, int n_out, const double *x,
                                  const double *w, const double *b, double *logits, double *y)
{
    rp_gemm_act_f64(0, 0, n_batch, n_out, n_in, 1.0, x, n_in, w, n_out, 0.0, logits, n_out, b,
                    RP_ACT_LINEAR, 0.0);
    rp_softmax_f64(n_batch, n_out, logits, y);
}

/* dz = dy * act'(y) and db = sum over rows of dz, in one sweep. Threads own
 * disjoint 16-column blocks, so each db[j] is summed by one thread in row
 * order and the result does not depend on the thread count. The block's
 * sums live in a local array (not in db, which the compiler must assume
 * may alias dz: that made every add wait for the previous store), and
 * relu, the common case, is a select on values already loaded rather than
 * a call through the activation switch. */
#define DZ_DB_BLOCK(REAL, SUFFIX, GRAD_FROM_OUTPUT)                                      \
    static void dz_db_block_##SUFFIX(int blk, int n_batch, int n_out, const REAL *y,     \
                                     const REAL *dy, rp_act act, REAL p, REAL *dz,       \
                                     REAL *db)                                           \
    {                                                                                    \
        const int j0 = blk * 16, width = j0 + 16 < n_out ? 16 : n_out - j0;              \
        REAL sums[16] = {0};                                                             \
        for (int i = 0; i < n_batch; ++i) {                                              \
            const long row = (long)i * n_out + j0;                                       \
            if (act == RP_ACT_RELU) {                                                    \
                for (int j = 0; j < width; ++j) {                                        \
                    const REAL d = dy[row + j];                                          \
                    const REAL g = y[row + j] > (REAL)0 ? d : (REAL)0;                   \
                    dz[row + j] = g;                                                     \
                    sums[j] += g;                                                        \
                }                                                                        \
            } else {                                                                     \
                for (int j = 0; j < width; ++j) {                                        \
                    const REAL g = dy[row + j] * GRAD_FROM_OUTPUT(act, p, y[row + j]);   \
                    dz[row + j] = g;                                                     \
                    sums[j] += g;                                                        \
                }                                                                        \
            }                                                                            \
        }                                                                                \
        if (db) for (int j = 0; j < width; ++j) db[j0 + j] = sums[j];                    \
    }

DZ_DB_BLOCK(float, f32, rp_act_grad_output_f32)
DZ_DB_BLOCK(double, f64, rp_act_grad_output_f64)

/* Small layers run the blocks on the calling thread with no parallel
 * region (one costs ~0.5 us even for a single thread). */
#define DENSE_DZ_DB(REAL, SUFFIX)                                                        \
    {                                                                                    \
        const int nt = (long)n_batch * n_out < RP_ELEMENTWISE_PARALLEL_MIN || n_out < 64 \
                           ? 1 : rp_get_num_threads();                                   \
        const int n_blocks = (n_out + 15) / 16;                                          \
        const REAL p = (REAL)act_param;                                                  \
        if (nt > 1) {                                                                    \
            _Pragma("omp parallel for schedule(static) num_threads(nt)")                 \
            for (int blk = 0; blk < n_blocks; ++blk)                                     \
                dz_db_block_##SUFFIX(blk, n_batch, n_out, y, dy, act, p, dz, db);        \
        } else {                                                                         \
            for (int blk = 0; blk < n_blocks; ++blk)                                     \
                dz_db_block_##SUFFIX(blk, n_batch, n_out, y, dy, act, p, dz, db);        \
        }                                                                                \
    }

void rp_dense_backward_f32(int n_batch, int n_in, int n_out, const float *x,
                           const float *w, const float *y, const float *dy, rp_act act,
                           double act_param, float *dz, float *dw, float *db, float *dx)
{
    DENSE_DZ_DB(float, f32)
    rp_gemm_f32(1, 0, n_in, n_out, n_batch, 1.0f, x, n_in, dz, n_out, 0.0f, dw, n_out, NULL, RP_ACT_LINEAR);
    if (dx)
        rp_gemm_f32(0, 1, n_batch, n_in, n_out, 1.0f, dz, n_out, w, n_out, 0.0f, dx, n_in, NULL, RP_ACT_LINEAR);
}

void rp_dense_backward_f64(int n_batch, int n_in, int n_out, const double *x,
                           const double *w, const double *y, const double *dy, rp_act act,
                           double act_param, double *dz, double *dw, double *db, double *dx)
{
    DENSE_DZ_DB(double, f64)
    rp_gemm_f64(1, 0, n_in, n_out, n_batch, 1.0, x, n_in, dz, n_out, 0.0, dw, n_out, NULL, RP_ACT_LINEAR);
    if (dx)
        rp_gemm_f64(0, 1, n_batch, n_in, n_out, 1.0, dz, n_out, w, n_out, 0.0, dx, n_in, NULL, RP_ACT_LINEAR);
}
