/* 2-D max and average pooling over NHWC images, per channel.
 *
 * x is (n, h, w, c), y is (n, oh, ow, c). Window (oy, ox) covers input rows
 * oy * stride_h - pad_top + [0, ph) and columns ox * stride_w - pad_left + [0, pw);
 * cells outside the image are padding and take no part: max pooling ignores
 * them, average pooling divides by the number of real cells in the window.
 * The caller guarantees every window holds at least one real cell.
 * 1-D pooling is the same with h = ph = 1.
 */
#ifndef RETROPROP_POOL_H
#define RETROPROP_POOL_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct {
    int n, h, w, c;              /* input batch, height, width, channels */
    int ph, pw;                  /* window */
    int stride_h, stride_w;      /* >= 1 */
    int pad_top, pad_left;       /* >= 0 */
    int oh, ow;                  /* output height and width (>= 1) */
} rp_pool2d_geom;

/* y = max over each window; argmax[i] = the position of the maximum within
 * its image, (iy * w + ix) * c + ch. Ties go to the first cell in row-major
 * window order. */
void rp_maxpool2d_forward_f32(const rp_pool2d_geom *g, const float *x, float *y, int32_t *argmax);
void rp_maxpool2d_forward_f64(const rp_pool2d_geom *g, const double *x, double *y, int32_t *argmax);

/* dx = 0, then dx[argmax[i]] += dy[i] (image by image). Returns 0, or -1
 * without writing dx when a position lies outside [0, h * w * c). */
int rp_maxpool2d_backward_f32(const rp_pool2d_geom *g, const int32_t *argmax, const float *dy, float *dx);
int rp_maxpool2d_backward_f64(const rp_pool2d_geom *g, const int32_t *argmax, const double *dy, double *dx);

/* y = mean over the real cells of each window. */
void rp_avgpool2d_forward_f32(const rp_pool2d_geom *g, const float *x, float *y);
void rp_avgpool2d_forward_f64(const rp_pool2d_geom *g, const double *x, double *y);

/* dx = 0, then each window spreads dy / (its real cell count) over its cells. */
void rp_avgpool2d_backward_f32(const rp_pool2d_geom *g, const float *dy, float *dx);
void rp_avgpool2d_backward_f64(const rp_pool2d_geom *g, const double *dy, double *dx);

/* Global average pooling (global_pool.c): y (n, c) = the mean of each
 * channel of x (n, pixels, c) over its pixels (pixels = h * w), and its
 * backward dx (n, pixels, c) = dy / pixels at every pixel. Sums run per
 * image in a fixed order (the element type over 64 pixels at a time, then
 * double), so results do not depend on the thread count. */
void rp_global_avgpool_forward_f32(long n, long pixels, int c, const float *x, float *y);
void rp_global_avgpool_forward_f64(long n, long pixels, int c, const double *x, double *y);
void rp_global_avgpool_backward_f32(long n, long pixels, int c, const float *dy, float *dx);
void rp_global_avgpool_backward_f64(long n, long pixels, int c, const double *dy, double *dx);

#ifdef __cplusplus
}
#endif
#endif
