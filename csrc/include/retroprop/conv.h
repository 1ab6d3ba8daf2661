/* 2-D convolution over NHWC images: im2col + one GEMM, or the direct,
 * implicit-GEMM or Winograd algorithm (rp_conv_algo below) where they apply.
 *
 * Input x is (n, h, w, c), the kernel W is (kh, kw, c, filters) and the
 * output y is (n, oh, ow, filters), all row-major and contiguous. Output
 * pixel (oy, ox) reads input rows  iy = oy * stride_h - pad_top  + ky * dilation_h
 * and columns                      ix = ox * stride_w - pad_left + kx * dilation_w;
 * positions outside the image read as zero (padding is implicit, never stored).
 *
 * The "column" matrix of a batch has one row per output pixel (n*oh*ow rows)
 * and kh*kw*c columns ordered (ky, kx, ci): in NHWC each (ky, kx) block is
 * one contiguous run of c input values, and the row order matches W viewed
 * as a (kh*kw*c, filters) matrix, so  y = act(col @ W + b)  is one GEMM whose
 * result already is the NHWC output. Conv1D is the same with h = kh = 1.
 */
#ifndef RETROPROP_CONV_H
#define RETROPROP_CONV_H

#include "retroprop/act.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct {
    int n, h, w, c;                /* input batch, height, width, channels */
    int kh, kw, filters;           /* kernel window and output channels */
    int stride_h, stride_w;        /* >= 1 */
    int dilation_h, dilation_w;    /* >= 1 */
    int pad_top, pad_left;         /* zero rows/columns before the image (>= 0) */
    int oh, ow;                    /* output height and width (>= 1) */
} rp_conv2d_geom;

/* The algorithms of a convolution. rp_conv2d_select picks one for a
 * geometry, element size and fused activation (thresholds in one table in
 * csrc/cpu/conv_select.c); rp_conv2d_forward/backward run what it picks.
 *   IM2COL    column matrix + the blocked GEMM (a 1x1 stride-1 layer: the GEMM
 *             on x itself). Every geometry, both element types.
 *   DIRECT    few filters (<= 8) and a short patch (<= 64): kernels
 *             vectorised over output pixels (LeNet's first layer).
 *   IMPLICIT  implicit GEMM, float32 with AVX2, filters a multiple of 16, a
 *             patch of at most 1152, an activation the microkernel applies:
 *             patches gathered straight into the microkernel (no column matrix).
 *   WINOGRAD  F(4x4, 3x3), float32, 3x3 kernels of stride 1 undilated: 36
 *             products per 4x4 output tile instead of 144 (winograd.c). */
typedef enum {
    RP_CONV_ALGO_AUTO = 0,
    RP_CONV_ALGO_IM2COL = 1,
    RP_CONV_ALGO_DIRECT = 2,
    RP_CONV_ALGO_IMPLICIT = 3,
    RP_CONV_ALGO_WINOGRAD = 4
} rp_conv_algo;
#define RP_CONV_ALGO_COUNT 5

/* 1 when algo can compute this convolution (elem_size: 4 float32, 8 float64). */
int rp_conv2d_algorithm_applies(const rp_conv2d_geom *g, int elem_size, rp_act act, int algo);
/* The algorithm rp_conv2d_forward (act) and rp_conv2d_backward (act
 * RP_ACT_LINEAR) use: the forced one when it applies, else the choice of
 * the threshold table. */
int rp_conv2d_select(const rp_conv2d_geom *g, int elem_size, rp_act act);
/* Tests and benchmarks: use algo wherever it applies (RP_CONV_ALGO_AUTO: the
 * table decides). Process-wide; returns the previous setting, or -1 (and
 * changes nothing) for an unknown id. */
int rp_conv2d_force_algorithm(int algo);
const char *rp_conv2d_algorithm_name(int algo);

/* True when the column matrix of x is x itself (1x1 kernel, stride 1, no
 * padding): the kernels then skip im2col/col2im and need no workspace. */
int rp_conv2d_is_pointwise(const rp_conv2d_geom *g);

/* col ((count*oh*ow) x (kh*kw*c)) = the column matrix of images
 * [first, first + count) of x (x points at image 0). Padding cells get 0. */
void rp_im2col_nhwc_f32(const rp_conv2d_geom *g, int first, int count, const float *x, float *col);
void rp_im2col_nhwc_f64(const rp_conv2d_geom *g, int first, int count, const double *x, double *col);

/* dx[images first .. first+count) += the scatter of col back to the image
 * positions it was gathered from (the adjoint of im2col). Threads split the
 * images, so no two threads write one element and the sums are ordered. */
void rp_col2im_nhwc_add_f32(const rp_conv2d_geom *g, int first, int count, const float *col, float *dx);
void rp_col2im_nhwc_add_f64(const rp_conv2d_geom *g, int first, int count, const double *col, double *dx);

/* y = act(conv(x, W) + b); b may be NULL. col is a workspace of at least
 * chunk*oh*ow*kh*kw*c elements (unused, may be NULL, when pointwise): the
 * batch is processed chunk images at a time, which bounds the workspace. */
void rp_conv2d_forward_f32(const rp_conv2d_geom *g, const float *x, const float *w,
                           const float *b, rp_act act, int chunk, float *col, float *y);
void rp_conv2d_forward_f64(const rp_conv2d_geom *g, const double *x, const double *w,
                           const double *b, rp_act act, int chunk, double *col, double *y);

/* From the forward output y and dL/dy:
 *   dz = dy * act'(y)            (into dz, n*oh*ow x filters; may alias dy)
 *   db = column sums of dz       (skipped when db is NULL)
 *   dW = col^T dz                (im2col is recomputed chunk by chunk into col)
 *   dx = col2im(dz W^T)          (skipped when dx is NULL)
 * Outputs are overwritten. col as for the forward pass. */
void rp_conv2d_backward_f32(const rp_conv2d_geom *g, const float *x, const float *w,
                            const float *y, const float *dy, rp_act act, int chunk,
                            float *col, float *dz, float *dw, float *db, float *dx);
void rp_conv2d_backward_f64(const rp_conv2d_geom *g, const double *x, const double *w,
                            const double *y, const double *dy, rp_act act, int chunk,
                            double *col, double *dz, double *dw, double *db, double *dx);

#ifdef __cplusplus
}
#endif
#endif
