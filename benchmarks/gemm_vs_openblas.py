"""retroprop's float32 GEMM against OpenBLAS (NumPy's matmul), on 1 and 2 threads.

    python benchmarks/gemm_vs_openblas.py [--sizes 512,1024] [--rounds 16]

Each round times a few calls of one library after a pause (so the other
library's thread pool has stopped spinning), alternating the two; the best
call of each library over all rounds is compared. Each thread count runs
in its own child process, with OMP_NUM_THREADS and OPENBLAS_NUM_THREADS set
before either library starts its threads.
"""
import argparse
import os
import subprocess
import sys
import time


def measure(sizes, rounds, threads):
    import numpy as np
    import retroprop as rp
    from retroprop.backend import cpu
    rp.set_num_threads(threads)
    rng = np.random.default_rng(0)
    for n in sizes:
        a = rng.random((n, n), dtype=np.float32)
        b = rng.random((n, n), dtype=np.float32)
        c = np.empty((n, n), np.float32)
        calls = {"retroprop": lambda: cpu.gemm(a, b, out=c), "openblas": lambda: np.matmul(a, b, out=c)}
        best = {name: float("inf") for name in calls}
        for _ in range(rounds):
            for name, call in calls.items():
                time.sleep(0.2)
                call()
                for _ in range(5):
                    t0 = time.perf_counter()
                    call()
                    best[name] = min(best[name], time.perf_counter() - t0)
        print(f"n={n:5d} threads={threads}  retroprop {best['retroprop'] * 1e3:8.3f} ms  "
              f"openblas {best['openblas'] * 1e3:8.3f} ms  "
              f"retroprop speed / openblas speed {best['openblas'] / best['retroprop']:.3f}",
              flush=True)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="512,1024")
    p.add_argument("--rounds", type=int, default=16)
    p.add_argument("--threads", default="1,2")
    p.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    if args.child is not None:
        measure(sizes, args.rounds, args.child)
        return
    for threads in (int(t) for t in args.threads.split(",")):
        env = dict(os.environ, OMP_NUM_THREADS=str(threads), OPENBLAS_NUM_THREADS=str(threads))
        subprocess.run([sys.executable, __file__, "--sizes", args.sizes, "--rounds",
                        str(args.rounds), "--child", str(threads)], env=env, check=True)


if __name__ == "__main__":
    main()
