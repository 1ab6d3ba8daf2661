/* What every kernel body shares: the host/device qualifier, the launch
 * configuration and the grid-stride loop.
 *
 * A body is the work of one grid index (an element, a row, a block of rows):
 * a function of the index and the kernel's arguments. It is compiled twice:
 * by nvcc for the device, launched by a thin __global__ wrapper
 * (csrc/cuda/kernels.cu), and by the C compiler for the host, where
 * csrc/cuda/emulate.c runs it over the same grid, block by block and thread
 * by thread. The CPU test suite compares the emulated results with the CPU
 * backend, so the index arithmetic of every kernel is tested without a GPU.
 *
 * Bodies are written in the common subset of C99 and C++ (nvcc compiles .cu
 * files as C++): explicit casts from void *, no restrict, no designated
 * initialisers. */
#ifndef RETROPROP_CUDA_BODIES_COMMON_H
#define RETROPROP_CUDA_BODIES_COMMON_H

#include <math.h>
#include <stdint.h>

#ifdef __CUDACC__
#define RP_HD __host__ __device__
#else
#define RP_HD
#endif
#define RP_BODY static inline RP_HD

/* Threads per block of every elementwise launch. */
#define RP_THREADS_PER_BLOCK 256
/* Largest grid: past it the grid-stride loop gives each thread several
 * indices (about 8 blocks of 256 threads per SM on a 132-SM GPU is 1056
 * blocks; more only adds scheduling). Tests lower it (rp_dev_set_max_blocks)
 * so that the stride path runs on small arrays too. */
#define RP_DEFAULT_MAX_BLOCKS 4096

typedef struct {
    int64_t blocks;
    int threads;
} rp_launch;

/* The grid for n indices: enough blocks of RP_THREADS_PER_BLOCK threads to
 * give each index a thread, capped at max_blocks (at least one block, so a
 * launch over 0 indices is valid and does nothing). */
static inline rp_launch rp_launch_for(int64_t n, int64_t max_blocks)
{
    rp_launch l;
    l.threads = RP_THREADS_PER_BLOCK;
    l.blocks = (n + RP_THREADS_PER_BLOCK - 1) / RP_THREADS_PER_BLOCK;
    if (l.blocks > max_blocks) l.blocks = max_blocks;
    if (l.blocks < 1) l.blocks = 1;
    return l;
}

/* The indices of thread `thread` of block `block` in a grid of `blocks`
 * blocks of `threads`: i, i + the grid size, ... below n. */
#define RP_GRID_STRIDE(i, n, block, threads, blocks, thread)                        \
    for (int64_t i = (int64_t)(block) * (threads) + (thread); i < (int64_t)(n);      \
         i += (int64_t)(threads) * (blocks))

/* x - x is 0 for finite x, NaN for NaN and +-Inf (as csrc/cpu/finite_bits.h). */
#define RP_NONFINITE(x) ((x) - (x) != 0)

/* Rows of one block of a deterministic column reduction: the rows are cut
 * into blocks whose boundaries depend on the row count alone, one partial
 * per (block, column) is summed in row order, and the partials are added
 * in block order, so the result never depends on the launch. */
#define RP_REDUCE_MIN_BLOCK_ROWS 64
#define RP_REDUCE_MAX_BLOCKS 1024

static inline int64_t rp_reduce_block_rows(int64_t rows)
{
    int64_t per = (rows + RP_REDUCE_MAX_BLOCKS - 1) / RP_REDUCE_MAX_BLOCKS;
    return per < RP_REDUCE_MIN_BLOCK_ROWS ? RP_REDUCE_MIN_BLOCK_ROWS : per;
}

static inline int64_t rp_reduce_blocks(int64_t rows)
{
    const int64_t per = rp_reduce_block_rows(rows);
    return rows == 0 ? 0 : (rows + per - 1) / per;
}

#endif
