/* Batch assembly (retroprop/rows.h). A shuffled batch of a data set that
 * does not fit in cache is a few hundred scattered rows, each a wait on
 * memory: two threads keep twice as many of those loads in flight, and the
 * caller's reused buffer avoids a fresh allocation (and its page faults)
 * per batch. */
#include <string.h>
#include "retroprop/rows.h"
#include "retroprop/runtime.h"
#ifdef RETROPROP_HAVE_OPENMP
#include <omp.h>
#endif

/* Below this many bytes a batch is copied by the calling thread alone. */
#define RP_GATHER_PARALLEL_MIN_BYTES (64 * 1024)

#if defined(__GNUC__) || defined(__clang__)
#define PREFETCH_READ(p) __builtin_prefetch((p), 0, 0)
#else
#define PREFETCH_READ(p) ((void)(p))
#endif

/* The cache lines of a source row's first 4 KB (the hardware prefetcher
 * streams the rest of a longer row), asked for ahead of its copy. */
static void prefetch_row(const char *row, size_t row_bytes)
{
    const size_t bytes = row_bytes < 4096 ? row_bytes : 4096;
    for (size_t offset = 0; offset < bytes; offset += 64) PREFETCH_READ(row + offset);
}

/* The hardware prefetcher follows a row once it is being read, but each
 * new row starts at a random address (often on a new page): requesting the
 * next row's lines before copying this one keeps both rows' misses in
 * flight. Measured on 128 rows of 3136 bytes out of 188 MB, two threads:
 * 63 -> 46 us a batch (mean of 100); looking further ahead gained nothing. */
static void copy_rows(size_t row_bytes, const char *x, const int64_t *index, long lo, long hi,
                      char *out)
{
    if (lo < hi) prefetch_row(x + (size_t)index[lo] * row_bytes, row_bytes);
    for (long r = lo; r < hi; ++r) {
        if (r + 1 < hi) prefetch_row(x + (size_t)index[r + 1] * row_bytes, row_bytes);
        memcpy(out + (size_t)r * row_bytes, x + (size_t)index[r] * row_bytes, row_bytes);
    }
}

int rp_gather_threads(size_t row_bytes, long count)
{
    return (double)count * row_bytes < RP_GATHER_PARALLEL_MIN_BYTES || rp_in_parallel()
               ? 1 : rp_get_num_threads();
}

int rp_rows_in_range(long n_rows, long count, const int64_t *index)
{
    int bad = 0;
    for (long r = 0; r < count; ++r) bad |= (uint64_t)index[r] >= (uint64_t)n_rows;
    return !bad;
}

int rp_gather_rows(size_t row_bytes, long n_rows, const void *x, long count,
                   const int64_t *index, void *out)
{
    /* every index first: nothing is written when one is out of range */
    if (!rp_rows_in_range(n_rows, count, index)) return -1;
    if (count <= 0 || row_bytes == 0) return 0;
    const int nt = rp_gather_threads(row_bytes, count);
    if (nt > 1) {
#ifdef RETROPROP_HAVE_OPENMP
#pragma omp parallel num_threads(nt)
        {
            const long t = omp_get_thread_num(), team = omp_get_num_threads();
            copy_rows(row_bytes, (const char *)x, index, count * t / team, count * (t + 1) / team,
                      (char *)out);
        }
#endif
    } else {
        copy_rows(row_bytes, (const char *)x, index, 0, count, (char *)out);
    }
    return 0;
}

/* Rows per claim: ~1.3 us of copying for MNIST rows, so a thread that
 * joins late (or leaves early) waits at most about that long for the
 * others. */
#define RP_GATHER_CLAIM_ROWS 4

void rp_gather_rows_claimed(const rp_rows_gather *job, long *next_row)
{
    for (;;) {
        const long lo = __atomic_fetch_add(next_row, RP_GATHER_CLAIM_ROWS, __ATOMIC_RELAXED);
        if (lo >= job->count) return;
        const long hi = lo + RP_GATHER_CLAIM_ROWS < job->count ? lo + RP_GATHER_CLAIM_ROWS
                                                               : job->count;
        copy_rows(job->row_bytes, (const char *)job->x, job->index, lo, hi, (char *)job->out);
    }
}
