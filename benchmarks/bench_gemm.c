/* GEMM throughput of the retroprop kernels, in GFLOP/s.
 *
 * Build and run:
 *   cmake -S . -B build/bench -DRETROPROP_BUILD_BENCHMARKS=ON && cmake --build build/bench
 *   OMP_NUM_THREADS=2 ./build/bench/bench_gemm
 * Square sizes 64..2048 and the shapes of a 784-256 dense layer at batch 32
 * and 128 (forward: X W; backward: X^T dZ and dZ W^T). */
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include "retroprop/gemm.h"
#include "retroprop/runtime.h"

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
    printf("%-28s m=%5d n=%5d k=%5d  %8.1f GFLOP/s  %9.1f us\n", label, m, n, k, rate, best * 1e6);
    free(a); free(b); free(c);
    return rate;
}

int main(void)
{
    printf("retroprop GEMM float32, simd=%s, threads=%d\n",
           rp_simd_name(rp_simd_in_use()), rp_get_num_threads());
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
