/* Convolution throughput of the retroprop kernels, in GFLOP/s.
 *
 * Build and run:
 *   cmake -S . -B build/bench -DRETROPROP_BUILD_BENCHMARKS=ON && cmake --build build/bench
 *   OMP_NUM_THREADS=2 ./build/bench/bench_conv
 * The layer shapes of benchmarks/run.py: LeNet-5's two convolutions at batch
 * 64 and a CIFAR-sized 3x3 layer at batch 32, float32, ReLU, forward and
 * backward (dW, db, and dx except for the single-channel first layer). */
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include "retroprop/conv.h"
#include "retroprop/runtime.h"

static double now_seconds(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static float *random_array(long count, float offset)
{
    float *p = malloc((size_t)count * sizeof(float));
    if (!p) { fprintf(stderr, "out of memory\n"); exit(1); }
    for (long i = 0; i < count; ++i) p[i] = (float)rand() / (float)RAND_MAX + offset;
    return p;
}

/* Best of five timed runs, each repeating the call for >= 50 ms. */
#define BEST_SECONDS(CALL)                                                     \
    ({                                                                         \
        double best = 1e30;                                                    \
        for (int trial = 0; trial < 5; ++trial) {                              \
            int reps = 0;                                                      \
            double start = now_seconds(), elapsed;                             \
            do { CALL; ++reps; elapsed = now_seconds() - start; } while (elapsed < 0.05); \
            if (elapsed / reps < best) best = elapsed / reps;                  \
        }                                                                      \
        best;                                                                  \
    })

static void bench(int n, int h, int w, int c, int filters, int k, int same)
{
    rp_conv2d_geom g = {0};
    g.n = n; g.h = h; g.w = w; g.c = c; g.kh = k; g.kw = k; g.filters = filters;
    g.stride_h = g.stride_w = g.dilation_h = g.dilation_w = 1;
    g.pad_top = g.pad_left = same ? (k - 1) / 2 : 0;
    g.oh = same ? h : h - k + 1;
    g.ow = same ? w : w - k + 1;
    const long x_size = (long)n * h * w * c, y_size = (long)n * g.oh * g.ow * filters;
    const long w_size = (long)k * k * c * filters;
    const long col_size = (long)n * g.oh * g.ow * k * k * c;
    float *x = random_array(x_size, 0.0f), *wt = random_array(w_size, -0.5f);
    float *b = random_array(filters, 0.0f), *y = random_array(y_size, 0.0f);
    float *dy = random_array(y_size, -0.5f), *dz = random_array(y_size, 0.0f);
    float *dw = random_array(w_size, 0.0f), *db = random_array(filters, 0.0f);
    float *dx = random_array(x_size, 0.0f), *col = random_array(col_size, 0.0f);
    float *dx_or_null = c > 1 ? dx : NULL;
    const double flops = 2.0 * y_size * k * k * c;   /* one pass: x W */
    double fwd = BEST_SECONDS(rp_conv2d_forward_f32(&g, x, wt, b, RP_ACT_RELU, n, col, y));
    double bwd = BEST_SECONDS(rp_conv2d_backward_f32(&g, x, wt, y, dy, RP_ACT_RELU, n, col, dz, dw,
                                                     db, dx_or_null));
    const double bwd_flops = flops * (dx_or_null ? 2.0 : 1.0);
    printf("%3dx%2dx%2dx%2d -> %2d@%dx%d %-5s  forward %7.1f us %6.1f GFLOP/s   "
           "backward%s %7.1f us %6.1f GFLOP/s\n", n, h, w, c, filters, k, k, same ? "same" : "valid",
           fwd * 1e6, flops / fwd * 1e-9, dx_or_null ? "" : " (no dx)", bwd * 1e6,
           bwd_flops / bwd * 1e-9);
    free(x); free(wt); free(b); free(y); free(dy); free(dz); free(dw); free(db); free(dx); free(col);
}

int main(void)
{
    printf("retroprop Conv2D float32 + ReLU, simd=%s, threads=%d\n",
           rp_simd_name(rp_simd_in_use()), rp_get_num_threads());
    bench(64, 28, 28, 1, 6, 5, 1);
    bench(64, 14, 14, 6, 16, 5, 0);
    bench(32, 32, 32, 16, 32, 3, 1);
    return 0;
}
