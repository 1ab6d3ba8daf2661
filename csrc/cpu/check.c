/* Finiteness scans (retroprop/check.h). A training set is scanned once per
 * fit: tens of MB, so the scan is split over threads, and each thread ORs a
 * NaN/Inf flag over blocks of elements in a loop that vectorises; only a
 * block that has one is searched element by element for the first index. */
#include "retroprop/check.h"
#include "retroprop/runtime.h"
#include "act_internal.h"

/* x - x is 0 for every finite x and NaN for NaN and +-Inf. */
#define NONFINITE(x) ((x) - (x) != 0)
#define SCAN_BLOCK 4096

#define FIND_NONFINITE(REAL)                                                             \
    {                                                                                    \
        const long count = (long)n;                                                      \
        const long n_blocks = (count + SCAN_BLOCK - 1) / SCAN_BLOCK;                     \
        const int nt = n < RP_ELEMENTWISE_PARALLEL_MIN ? 1 : rp_get_num_threads();       \
        long first = count;                                                              \
        (void)nt;                                                                        \
        _Pragma("omp parallel for schedule(static) num_threads(nt) reduction(min:first)") \
        for (long blk = 0; blk < n_blocks; ++blk) {                                      \
            const long begin = blk * SCAN_BLOCK;                                         \
            const long end = begin + SCAN_BLOCK < count ? begin + SCAN_BLOCK : count;    \
            /* Blocks after a bad one in this thread's share cannot come first. */      \
            if (begin >= first) continue;                                                \
            int any = 0;                                                                 \
            for (long i = begin; i < end; ++i) any |= NONFINITE(x[i]);                   \
            if (!any) continue;                                                          \
            for (long i = begin; i < end; ++i)                                           \
                if (NONFINITE(x[i])) { first = i < first ? i : first; break; }           \
        }                                                                                \
        return first < count ? first : -1;                                               \
    }

long rp_find_nonfinite_f32(size_t n, const float *x)
FIND_NONFINITE(float)

long rp_find_nonfinite_f64(size_t n, const double *x)
FIND_NONFINITE(double)
