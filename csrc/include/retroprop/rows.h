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

/* The threads rp_gather_rows uses for count rows: one for a small batch
 * (below 64 KiB, where waking a second thread costs more than it saves) or
 * inside a parallel region, else the runtime's thread count. */
int rp_gather_threads(size_t row_bytes, long count);

/* 1 when every index[r], r < count, lies in [0, n_rows), else 0. */
int rp_rows_in_range(long n_rows, long count, const int64_t *index);

/* A gather that several threads can work on together while they are free:
 * the next batch, copied during a step's stretches of serial work
 * (plan.h). The indices must be in range (rp_rows_in_range). */
typedef struct {
    size_t row_bytes;
    const void *x;          /* n_rows rows of row_bytes */
    long n_rows;
    long count;
    const int64_t *index;
    void *out;
} rp_rows_gather;

/* Copies rows of `job` until none is left, claiming a few at a time from
 * *next_row (start it at 0; every thread of the job passes the same one).
 * Any number of threads may call it at once; each row is copied once. */
void rp_gather_rows_claimed(const rp_rows_gather *job, long *next_row);

#ifdef __cplusplus
}
#endif
#endif
