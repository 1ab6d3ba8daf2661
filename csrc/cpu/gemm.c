/* GEMM entry points: the driver in gemm_driver.inc instantiated for float32
 * and float64, with runtime choice of the AVX2 or portable microkernel. */
#include <stdlib.h>
#ifdef __linux__
#include <sys/mman.h>
#endif
#include "retroprop/gemm.h"
#include "retroprop/runtime.h"
#include "gemm_internal.h"
#include "act_scalar.h"
#include "team.h"
#ifdef RETROPROP_HAVE_OPENMP
#include <omp.h>
#endif

/* A packing buffer: 64-byte aligned; from 256 KiB up, aligned to and rounded
 * up to 2 MiB and offered to the kernel for transparent huge pages. The
 * microkernel walks a new 16 KiB B panel for every tile, four 4 KiB pages
 * and so four first-level TLB misses a tile; in 2 MiB pages the whole
 * block is a page or two. Freed with free(). */
#define PACK_HUGE_MIN ((size_t)256 << 10)
#define PACK_HUGE_PAGE ((size_t)2 << 20)

static void *pack_buffer_alloc(size_t bytes)
{
#if defined(__linux__) && defined(MADV_HUGEPAGE)
    if (bytes >= PACK_HUGE_MIN) {
        const size_t rounded = (bytes + PACK_HUGE_PAGE - 1) / PACK_HUGE_PAGE * PACK_HUGE_PAGE;
        void *p = NULL;
        if (posix_memalign(&p, PACK_HUGE_PAGE, rounded) == 0) {
            madvise(p, rounded, MADV_HUGEPAGE);   /* a hint: ignored where THP is off */
            return p;
        }
    }
#endif
    void *p = NULL;
    return posix_memalign(&p, 64, bytes) == 0 ? p : NULL;
}

/* Blocks. The tiles of a block mostly run in rows (gemm_team): one MR x KC
 * panel of A stays in L1 while the block's B panels, KC x NC, stream past
 * from L2 or L3. So the A block need not fit in L2, and MC is large: a
 * layer's few hundred rows (784 for a weight gradient of MNIST's first layer)
 * are one block, where 240 made four (the last of 64 rows) each ending at a
 * barrier. Measured against MC 240, median of per-round time ratios with the
 * two builds alternating in one process: two threads 0.93 (784x256x32, the
 * batch-32 weight gradient), 0.97-0.98 (512^3, 1024^3), 0.91-0.93 (2048^3);
 * one thread 0.99-1.01 (512^3), 1.02 (1024^3), 0.88 (2048^3). */
#define REAL float
#define FN(name) name##_f32
#define MR RP_MR_F32
#define NR RP_NR_F32
#define MC 792
#define KC 256
#define NC 3072
#define DIRECT_B_MAX_ROWS 64
#define ACT_APPLY rp_act_apply_f32
#define UKERNEL_TYPE rp_ukernel_f32_fn
#define UKERNEL_GENERIC rp_ukernel_f32_generic
#define UKERNEL_AVX2 rp_ukernel_f32_avx2
#define ROW_KERNEL_AVX2 rp_gemm_row_f32_avx2
#define GATHER_KERNEL_AVX2 rp_ukernel_f32_avx2_gather
#define UKERNEL_ROWS_AVX2 rp_ukernel_f32_avx2_rows
#define DIRECT_A_MAX_ROWS 256
/* At most one depth block: where more threads send a narrow C to the blocked
 * path instead, it then sums each element in the same order, so results do
 * not depend on the thread count (a 400-deep one did). */
#define GATHER_MAX_K KC
#define PACK_A_ROWS_AVX2 rp_pack_a_rows6_f32_avx2   /* MR == 6 */
#include "gemm_driver.inc"
#undef PACK_A_ROWS_AVX2
#undef ROW_KERNEL_AVX2
#undef GATHER_KERNEL_AVX2
#undef UKERNEL_ROWS_AVX2
#undef DIRECT_A_MAX_ROWS
#undef GATHER_MAX_K
#undef REAL
#undef FN
#undef MR
#undef NR
#undef MC
#undef KC
#undef NC
#undef DIRECT_B_MAX_ROWS
#undef ACT_APPLY
#undef UKERNEL_TYPE
#undef UKERNEL_GENERIC
#undef UKERNEL_AVX2

#define REAL double
#define FN(name) name##_f64
#define MR RP_MR_F64
#define NR RP_NR_F64
#define MC 120
#define KC 256
#define NC 3072
#define DIRECT_B_MAX_ROWS 64
#define ACT_APPLY rp_act_apply_f64
#define UKERNEL_TYPE rp_ukernel_f64_fn
#define UKERNEL_GENERIC rp_ukernel_f64_generic
#define UKERNEL_AVX2 rp_ukernel_f64_avx2
#include "gemm_driver.inc"
