/* Finiteness scans: the input checks of training and evaluation. */
#ifndef RETROPROP_CHECK_H
#define RETROPROP_CHECK_H

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Index of the first NaN or +-Inf among x[0..n), or -1 when all are finite. */
long rp_find_nonfinite_f32(size_t n, const float *x);
long rp_find_nonfinite_f64(size_t n, const double *x);

#ifdef __cplusplus
}
#endif
#endif
