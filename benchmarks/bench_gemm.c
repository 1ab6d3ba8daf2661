/* GEMM throughput of the retroprop kernels, in GFLOP/s.
 *
 * Build and run:
 *   cmake -S . -B build/bench -DRETROPROP_BUILD_BENCHMARKS=ON && cmake --build build/bench
 *   OMP_NUM_THREADS=2 ./build/bench/bench_gemm
 * Square sizes 64..2048 and the shapes of a 784-256 dense layer at batch 32
 * and 128 (forward: X W; backward: X^T dZ and dZ W^T).
 *
 * With AVX2+FMA it first measures the machine's FMA peak now (a loop of
 * nothing but independent FMAs on every thread) and gives each GEMM's
 * share of it: a shared or throttled machine shows as a low peak, and the
 * GEMM's efficiency stays comparable across runs. */
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include "retroprop/gemm.h"
#include "retroprop/runtime.h"
#ifdef _OPENMP
#include <omp.h>
#endif

static double now_seconds(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static float *random_matrix(long count)
{
    float *p = malloc((size_t)count * sizeof(float));
    if (!p) { fprintf(stderr, "out of memory\n"); exit(1); }
    for (long i = 0; i < count; ++i) p[i] = (float)rand() / (float)RAND_MAX - 0.5f;
    return p;
}

#if defined(__x86_64__) && defined(__GNUC__)
#define HAVE_FMA_PEAK 1
/* 12 independent chains of 8-wide float32 FMAs, 4 cycles deep, as in the
 * GEMM's 6x16 microkernel: as many as the two FMA pipes of a core need.
 * Written in assembly so that the compiler can neither fold nor drop it. */
__attribute__((target("avx2,fma"))) static void fma_loop(long iterations)
{
    __asm__ volatile(
        "vxorps %%ymm0, %%ymm0, %%ymm0\n\t"
        "vmovaps %%ymm0, %%ymm1\n\t vmovaps %%ymm0, %%ymm2\n\t vmovaps %%ymm0, %%ymm3\n\t"
        "vmovaps %%ymm0, %%ymm4\n\t vmovaps %%ymm0, %%ymm5\n\t vmovaps %%ymm0, %%ymm6\n\t"
        "vmovaps %%ymm0, %%ymm7\n\t vmovaps %%ymm0, %%ymm8\n\t vmovaps %%ymm0, %%ymm9\n\t"
        "vmovaps %%ymm0, %%ymm10\n\t vmovaps %%ymm0, %%ymm11\n\t"
        "vmovaps %%ymm0, %%ymm12\n\t vmovaps %%ymm0, %%ymm13\n\t"
        "1:\n\t"
        "vfmadd231ps %%ymm12, %%ymm13, %%ymm0\n\t vfmadd231ps %%ymm12, %%ymm13, %%ymm1\n\t"
        "vfmadd231ps %%ymm12, %%ymm13, %%ymm2\n\t vfmadd231ps %%ymm12, %%ymm13, %%ymm3\n\t"
        "vfmadd231ps %%ymm12, %%ymm13, %%ymm4\n\t vfmadd231ps %%ymm12, %%ymm13, %%ymm5\n\t"
        "vfmadd231ps %%ymm12, %%ymm13, %%ymm6\n\t vfmadd231ps %%ymm12, %%ymm13, %%ymm7\n\t"
        "vfmadd231ps %%ymm12, %%ymm13, %%ymm8\n\t vfmadd231ps %%ymm12, %%ymm13, %%ymm9\n\t"
        "vfmadd231ps %%ymm12, %%ymm13, %%ymm10\n\t vfmadd231ps %%ymm12, %%ymm13, %%ymm11\n\t"
        "dec %0\n\t jnz 1b\n\t vzeroupper"
        : "+r"(iterations)
        :
        : "cc", "xmm0", "xmm1", "xmm2", "xmm3", "xmm4", "xmm5", "xmm6", "xmm7", "xmm8",
          "xmm9", "xmm10", "xmm11", "xmm12", "xmm13");
}

/* FLOP/s of fma_loop on every thread at once (the best of five 50 ms runs). */
static double fma_peak_gflops(int threads)
{
    const long iterations = 2000000;   /* 384 MFLOP a thread */
    double best = 1e30;
    for (int trial = 0; trial < 5; ++trial) {
        double start = now_seconds();
#ifdef _OPENMP
#pragma omp parallel num_threads(threads)
#endif
        fma_loop(iterations);
        double elapsed = now_seconds() - start;
        if (elapsed < best) best = elapsed;
    }
    return (double)threads * iterations * 12 * 16 / best * 1e-9;
}
#endif

static double peak_gflops = 0.0;   /* of all threads; 0 when not measured */

/* Best of several timed runs, each repeating the call for >= 50 ms. */
static double gflops(const char *label, int ta, int tb, int m, int n, int k)
{
    float *a = random_matrix((long)m * k), *b = random_matrix((long)k * n), *c = random_matrix((long)m * n);
    int lda = ta ? m : k, ldb = tb ? k : n;
    rp_gemm_f32(ta, tb, m, n, k, 1.0f, a, lda, b, ldb, 0.0f, c, n, NULL, RP_ACT_LINEAR);
    double best = 1e30;
    for (int trial = 0; trial < 5; ++trial) {
        int reps = 0;
        double start = now_seconds(), elapsed;
        do {
            rp_gemm_f32(ta, tb, m, n, k, 1.0f, a, lda, b, ldb, 0.0f, c, n, NULL, RP_ACT_LINEAR);
            ++reps;
            elapsed = now_seconds() - start;
        } while (elapsed < 0.05);
        if (elapsed / reps < best) best = elapsed / reps;
    }
    double rate = 2.0 * m * n * k / best * 1e-9;
    printf("%-28s m=%5d n=%5d k=%5d  %8.1f GFLOP/s  %9.1f us", label, m, n, k, rate, best * 1e6);
    if (peak_gflops > 0.0) printf("  %5.1f%% of peak", 100.0 * rate / peak_gflops);
    printf("\n");
    free(a); free(b); free(c);
    return rate;
}

int main(void)
{
    printf("retroprop GEMM float32, simd=%s, threads=%d\n",
           rp_simd_name(rp_simd_in_use()), rp_get_num_threads());
#ifdef HAVE_FMA_PEAK
    if (rp_simd_in_use() == RP_SIMD_AVX2) {
        const int threads = rp_get_num_threads();
        printf("FMA peak now: %.1f GFLOP/s on 1 thread, ", fma_peak_gflops(1));
        peak_gflops = fma_peak_gflops(threads);
        printf("%.1f on %d\n", peak_gflops, threads);
    }
#endif
    for (int s = 64; s <= 2048; s *= 2) gflops("square", 0, 0, s, s, s);
    const int batches[2] = {32, 128};
    for (int i = 0; i < 2; ++i) {
        int nb = batches[i];
        gflops("dense fwd  X W", 0, 0, nb, 256, 784);
        gflops("dense bwd  X^T dZ", 1, 0, 784, 256, nb);
        gflops("dense bwd  dZ W^T", 0, 1, nb, 784, 256);
    }
    return 0;
}
