/* Private to the Winograd convolution (winograd.c): the tile geometry and
 * the per-ISA table of its kernels and block sizes.
 *
 * F(4x4, 3x3) (Lavin & Gray 2016): a 4x4 block of output pixels of a 3x3,
 * stride-1 convolution is computed from the 6x6 block of input pixels under
 * it as
 *     Y = A^T [ sum_c (G g_ck G^T) . (B^T d_c B) ] A
 * (. elementwise), i.e. 36 independent matrix products, one per position p
 * of the 6x6 transformed tile:  M[p] (tiles x K) = V[p] (tiles x C) U[p] (C x K),
 * with V = B^T d B the transformed input and U = G g G^T the transformed
 * weights. 36 multiplies per 16 outputs and channel pair instead of 144.
 *
 * The weight gradient follows from the same identity (Y is linear in U):
 *     dM = A dY A^T,   dU[p] (C x K) = sum over tiles V[p]^T dM[p],   dW = G^T dU G.
 * The input gradient of a stride-1 convolution is the forward convolution of
 * dz with the kernel turned by 180 degrees and its channel axes swapped, so it
 * reuses the forward.
 *
 * Buffers of a block of up to `block` tiles hold each tile's 36 positions
 * side by side (tile-major: a transform writes or reads one tile's values
 * as one contiguous run):
 *     V[t * v_tile + p * v_pos + c],  M[t * m_tile + p * m_pos + k],
 * with v_pos = cp, v_tile = 36 cp, m_pos = kp, m_tile = 36 kp; a position's
 * product then reads rows of V and writes rows of M 36 cp (36 kp) apart.
 * (Position-major slices were measured 10-30% slower in the transforms.)
 * U and dU are (cp x kp) per position: U[p * cp * kp + c * kp + k].
 * cp is the channel count rounded up to the vector width and kp the filter
 * count rounded up to the microkernel width; the padding holds zeros.
 *
 * Each instruction set supplies the kernels below and its block sizes in one
 * rp_wino_kernels table (winograd_avx2.c, winograd_generic.c: the same
 * source, winograd_kernels.inc, compiled for each vector width). A wider
 * one (AVX-512: 16 floats a vector, a 32-wide microkernel) slots in as one
 * more file and one more table entry (winograd.c, rp_wino_kernels_get).
 */
#ifndef RETROPROP_WINOGRAD_INTERNAL_H
#define RETROPROP_WINOGRAD_INTERNAL_H

#include "retroprop/act.h"
#include "retroprop/conv.h"

#define RP_WINO_M 4            /* output tile side */
#define RP_WINO_T 6            /* input tile side: M + 3 - 1 */
#define RP_WINO_P 36           /* positions of a transformed tile: T * T */

/* A convolution's tiling: tiles are numbered image by image, row by row. */
typedef struct {
    const rp_conv2d_geom *g;   /* 3x3, stride 1, dilation 1 */
    long tiles_h, tiles_w;     /* tiles per image along each axis: ceil(oh / 4), ceil(ow / 4) */
    long tiles;                /* n * tiles_h * tiles_w */
    int cp, kp;                /* c and filters rounded up (vector width, microkernel width) */
    long block;                /* tile rows of one position's slice in V and M */
    /* V[t * v_tile + p * v_pos + c], M[t * m_tile + p * m_pos + k] */
    long v_tile, v_pos, m_tile, m_pos;
} rp_wino_geom;

typedef struct {
    const char *name;
    int vlen;           /* floats per vector: cp is a multiple of it */
    int nr;             /* microkernel columns: kp is a multiple of it */
    int block_bytes;    /* V + M of one block of the forward stay within this (L2) */
    int grad_block;     /* tiles per block of the weight gradient's sums */
    /* V[p][t] = B^T d B for tiles [t0, t0 + count) of x (the geometry's input). */
    void (*input_tiles)(const rp_wino_geom *wg, const float *x, long t0, int count, float *v);
    /* y = act(A^T M A + bias) for tiles [t0, t0 + count); bias may be NULL.
     * Output pixels past oh or ow are not written. */
    void (*output_tiles)(const rp_wino_geom *wg, const float *m, long t0, int count,
                         const float *bias, rp_act act, float *y);
    /* dM[p][t] = A dY A^T for tiles [t0, t0 + count) of dy (the output's
     * geometry; pixels past oh or ow read as zero). */
    void (*grad_tiles)(const rp_wino_geom *wg, const float *dy, long t0, int count, float *dm);
    /* M[p] = V[p] U[p] for each position: count x kp, depth cp. */
    void (*multiply)(const rp_wino_geom *wg, int count, const float *v, const float *u, float *m);
    /* dU[p] (+)= V[p]^T dM[p] for each position: cp x kp, depth count;
     * accumulate 0 overwrites dU. */
    void (*multiply_grad)(const rp_wino_geom *wg, int count, const float *v, const float *dm,
                          int accumulate, float *du);
    /* U = G w G^T for w (3, 3, c, k) with k contiguous (ldw apart for each c):
     * U[p][c][k], zeros past c and k. */
    void (*transform_weights)(int c, int k, const float *w, int cp, int kp, float *u);
    /* dw (3, 3, c, k) = G^T dU G. */
    void (*transform_weight_grad)(int c, int k, const float *du, int cp, int kp, float *dw);
} rp_wino_kernels;

/* The table of each instruction set (NULL where the build lacks it). */
extern const rp_wino_kernels rp_wino_kernels_generic;
#ifdef RETROPROP_HAVE_AVX2
extern const rp_wino_kernels rp_wino_kernels_avx2;
#endif

#endif
