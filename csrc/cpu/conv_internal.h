/* Private to the convolution files: the limits the algorithms' buffers are
 * sized for, the selector's table, and the Winograd entry points. */
#ifndef RETROPROP_CONV_INTERNAL_H
#define RETROPROP_CONV_INTERNAL_H

#include "retroprop/conv.h"

/* DIRECT: at most this many filters and patch values (kh * kw * c); the
 * direct kernels keep padded weights of this size on the stack. */
#define RP_DIRECT_FILTERS 8
#define RP_DIRECT_PATCH 64
/* IMPLICIT: a pixel's patch, packed, on the stack (6 x 1152 floats). */
#define RP_PACKED_PATCH_MAX 1152

/* The thresholds of rp_conv2d_select, in one place (conv_select.c). */
typedef struct {
    int winograd_min_channels;   /* c and filters of at least this: smaller */
    int winograd_min_filters;    /* products are too thin for the transforms to pay */
    long winograd_min_tiles;     /* n * ceil(oh / 4) * ceil(ow / 4) */
} rp_conv_thresholds;
extern const rp_conv_thresholds rp_conv_table;

/* Geometry alone (and the element size / instruction set): could the
 * algorithm's kernels compute it. */
int rp_conv_direct_fits(const rp_conv2d_geom *g);
int rp_conv_implicit_fits(const rp_conv2d_geom *g, int elem_size);
int rp_conv_winograd_fits(const rp_conv2d_geom *g, int elem_size);

/* winograd.c: 0 on success, -1 when a buffer could not be had (nothing
 * written that the caller's fallback does not overwrite). */
int rp_conv2d_winograd_forward_f32(const rp_conv2d_geom *g, const float *x, const float *w,
                                   const float *b, rp_act act, float *y);
int rp_conv2d_winograd_backward_f32(const rp_conv2d_geom *g, const float *x, const float *w,
                                    const float *y, const float *dy, rp_act act, float *dz,
                                    float *dw, float *db, float *dx);

#endif
