/* Batch assembly: the rows of a data set picked by an index (a shuffled
 * order), copied side by side into a batch buffer. */
#ifndef RETROPROP_ROWS_H
#define RETROPROP_ROWS_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* out row r = x row index[r] for r < count, rows of row_bytes bytes; x has
 * n_rows rows. Returns 0, or -1 without writing when an index lies outside
 * [0, n_rows). */
int rp_gather_rows(size_t row_bytes, long n_rows, const void *x, long count,
                   const int64_t *index, void *out);

#ifdef __cplusplus
}
#endif
#endif
