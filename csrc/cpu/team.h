/* Private: hand-split work for kernels that run either on an OpenMP team or
 * on the calling thread alone (nt == 1), without reaching any OpenMP
 * construct in the second case. That matters twice: a region opened for one
 * thread still costs ~0.5 us, and a kernel called from inside another
 * kernel's parallel region must not bind its worksharing to that region. */
#ifndef RETROPROP_TEAM_H
#define RETROPROP_TEAM_H

/* [*lo, *hi): thread tid's share of count items, in nt contiguous pieces
 * whose sizes differ by at most one (the first count % nt are larger). */
static inline void rp_static_share(int count, int tid, int nt, int *lo, int *hi)
{
    const int q = count / nt, r = count % nt;
    *lo = tid * q + (tid < r ? tid : r);
    *hi = *lo + q + (tid < r ? 1 : 0);
}

/* A barrier of the kernel's own team; nothing when it runs alone. */
#ifdef RETROPROP_HAVE_OPENMP
#define RP_TEAM_BARRIER(nt)                 \
    do {                                    \
        if ((nt) > 1) {                     \
            _Pragma("omp barrier")          \
        }                                   \
    } while (0)
#else
#define RP_TEAM_BARRIER(nt) ((void)(nt))
#endif

#endif
