/* Convolution throughput of the retroprop kernels, per algorithm, in GFLOP/s.
 *
 * Build and run:
 *   cmake -S . -B build/bench -DRETROPROP_BUILD_BENCHMARKS=ON && cmake --build build/bench
 *   GOMP_SPINCOUNT=300 OMP_NUM_THREADS=2 ./build/bench/bench_conv [reps]
 * (GOMP_SPINCOUNT as the Python module sets it: libgomp's default spin of
 * ~20 ms per wait made two threads 2-3x slower than one on this shared
 * machine while another process ran.)
 * Layer shapes: LeNet-5's two convolutions and the CIFAR-sized CNN's and the
 * residual stack's 3x3 layers (benchmarks/run.py), float32, forward and
 * backward (dW, db, and dx except for a first layer of 1 or 3 channels).
 * Each algorithm that applies (conv.h, rp_conv_algo) is forced in turn; the
 * last column is the largest difference of its forward output from the
 * im2col one, relative to the largest |output|. */
#include <math.h>
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

static int trials = 5;

/* Best of `trials` timed runs, each repeating the call for >= 50 ms. */
#define BEST_SECONDS(CALL)                                                     \
    ({                                                                         \
        double best = 1e30;                                                    \
        for (int trial = 0; trial < trials; ++trial) {                         \
            int reps = 0;                                                      \
            double start = now_seconds(), elapsed;                             \
            do { CALL; ++reps; elapsed = now_seconds() - start; } while (elapsed < 0.05); \
            if (elapsed / reps < best) best = elapsed / reps;                  \
        }                                                                      \
        best;                                                                  \
    })

static void bench(int n, int h, int w, int c, int filters, int k, int same, rp_act act)
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
    float *x = random_array(x_size, -0.5f), *wt = random_array(w_size, -0.5f);
    float *b = random_array(filters, 0.0f), *y = random_array(y_size, 0.0f);
    float *ref = random_array(y_size, 0.0f);
    float *dy = random_array(y_size, -0.5f), *dz = random_array(y_size, 0.0f);
    float *dw = random_array(w_size, 0.0f), *db = random_array(filters, 0.0f);
    float *dx = random_array(x_size, 0.0f), *col = random_array(col_size, 0.0f);
    float *dx_or_null = c > 3 ? dx : NULL;
    const double flops = 2.0 * y_size * k * k * c;   /* one pass: x W */
    const double bwd_flops = flops * (dx_or_null ? 2.0 : 1.0);
    rp_conv2d_force_algorithm(RP_CONV_ALGO_IM2COL);
    rp_conv2d_forward_f32(&g, x, wt, b, act, n, col, ref);
    double peak = 0.0;
    for (long i = 0; i < y_size; ++i) peak = fabs(ref[i]) > peak ? fabs(ref[i]) : peak;
    for (int algo = RP_CONV_ALGO_IM2COL; algo < RP_CONV_ALGO_COUNT; ++algo) {
        if (!rp_conv2d_algorithm_applies(&g, 4, act, algo)) continue;
        rp_conv2d_force_algorithm(algo);
        double fwd = BEST_SECONDS(rp_conv2d_forward_f32(&g, x, wt, b, act, n, col, y));
        double bwd = BEST_SECONDS(rp_conv2d_backward_f32(&g, x, wt, y, dy, act, n, col, dz, dw,
                                                         db, dx_or_null));
        double err = 0.0;
        for (long i = 0; i < y_size; ++i) err = fabs(y[i] - ref[i]) > err ? fabs(y[i] - ref[i]) : err;
        printf("%3dx%2dx%2dx%3d -> %3d@%dx%d %-5s %-9s fwd %8.0f us %5.1f GF/s  bwd%s %8.0f us "
               "%5.1f GF/s  total %8.0f us  err %.1e\n", n, h, w, c, filters, k, k,
               same ? "same" : "valid", rp_conv2d_algorithm_name(algo), fwd * 1e6,
               flops / fwd * 1e-9, dx_or_null ? "" : "*", bwd * 1e6, bwd_flops / bwd * 1e-9,
               (fwd + bwd) * 1e6, err / (peak > 0 ? peak : 1));
    }
    rp_conv2d_force_algorithm(RP_CONV_ALGO_AUTO);
    printf("%*s auto picks %s\n", 30, "", rp_conv2d_algorithm_name(rp_conv2d_select(&g, 4, act)));
    free(x); free(wt); free(b); free(y); free(ref); free(dy); free(dz); free(dw); free(db);
    free(dx); free(col);
}

int main(int argc, char **argv)
{
    if (argc > 1) trials = atoi(argv[1]) > 0 ? atoi(argv[1]) : trials;
    printf("retroprop Conv2D float32, simd=%s, threads=%d (bwd*: no dx)\n",
           rp_simd_name(rp_simd_in_use()), rp_get_num_threads());
    bench(64, 28, 28, 1, 6, 5, 1, RP_ACT_RELU);      /* LeNet-5 */
    bench(64, 14, 14, 6, 16, 5, 0, RP_ACT_RELU);
    bench(64, 32, 32, 3, 32, 3, 1, RP_ACT_LINEAR);   /* CIFAR CNN (Conv + BN) */
    bench(64, 32, 32, 32, 32, 3, 1, RP_ACT_LINEAR);
    bench(64, 16, 16, 32, 64, 3, 1, RP_ACT_LINEAR);
    bench(64, 16, 16, 64, 64, 3, 1, RP_ACT_LINEAR);
    bench(64, 32, 32, 16, 16, 3, 1, RP_ACT_LINEAR);  /* residual stack */
    bench(64, 8, 8, 128, 128, 3, 1, RP_ACT_RELU);
    return 0;
}
