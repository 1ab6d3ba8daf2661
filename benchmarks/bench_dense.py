"""Fused dense forward (x @ W + b, then ReLU) of retroprop against NumPy's
BLAS doing the same, in one run, interleaved, and the ratio of the medians.

    python benchmarks/bench_dense.py [--threads 2] [--repeats 30]

Ratio = NumPy time / retroprop time, so > 1 means retroprop is faster.
NumPy gets the same thread count through threadpoolctl when installed, or
the OPENBLAS_NUM_THREADS/OMP_NUM_THREADS this script sets before importing it.
"""
import argparse
import os
import sys
import time


def parse_args():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=30)
    p.add_argument("--shapes", default="1024x1024x1024,32x784x256,128x784x256,128x256x128,1x784x256",
                   help="comma-separated N x K x M (batch x inputs x units)")
    return p.parse_args()


def median_time(fn, repeats):
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    times.sort()
    return times[len(times) // 2]


def main():
    args = parse_args()
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(args.threads)
    import numpy as np
    import retroprop as rp
    from retroprop.backend import cpu

    rp.set_num_threads(args.threads)
    info = rp.backend_info()
    print(f"retroprop {rp.__version__}: simd={info['simd']} threads={info['threads']}; "
          f"numpy {np.__version__}; python {sys.version.split()[0]}")
    print(f"{'shape N x K x M':>20} {'retroprop ms':>13} {'numpy ms':>10} {'numpy/retroprop':>16} {'GFLOP/s':>9}")
    for shape in args.shapes.split(","):
        n, k, m = (int(v) for v in shape.lower().split("x"))
        rng = np.random.default_rng(0)
        x = rng.standard_normal((n, k)).astype(np.float32)
        w = (rng.standard_normal((k, m)) / np.sqrt(k)).astype(np.float32)
        b = rng.standard_normal(m).astype(np.float32)
        out_rp = np.empty((n, m), np.float32)
        out_np = np.empty((n, m), np.float32)

        def run_retroprop():
            cpu.dense_forward(x, w, b, "relu", out_rp)

        def run_numpy():
            np.matmul(x, w, out=out_np)
            np.add(out_np, b, out=out_np)
            np.maximum(out_np, 0, out=out_np)

        run_retroprop(), run_numpy()
        np.testing.assert_allclose(out_rp, out_np, rtol=1e-3, atol=1e-3)
        reps = args.repeats if n * k * m >= 1e8 else args.repeats * 20
        t_rp, t_np = [], []
        for _ in range(5):  # interleave so both see the same machine load
            t_rp.append(median_time(run_retroprop, reps // 5 + 1))
            t_np.append(median_time(run_numpy, reps // 5 + 1))
        t_rp, t_np = sorted(t_rp)[2], sorted(t_np)[2]
        print(f"{shape:>20} {t_rp * 1e3:13.3f} {t_np * 1e3:10.3f} {t_np / t_rp:16.2f} "
              f"{2 * n * k * m / t_rp / 1e9:9.1f}")


if __name__ == "__main__":
    main()
