"""Forked children (issue 23, item 5).

GNU OpenMP's worker threads do not survive fork(), and it never rebuilds
them: a child forked after a two-thread kernel hung in its first
multi-threaded one. multiprocessing's default start method on Linux is
fork, so data loaders and process pools did exactly that. A child forked
after multi-threaded kernels now runs them on one thread (csrc/cpu/runtime.c)
and gets the parent's results; a child forked before any keeps its threads.

Every child runs under a timeout, so a regression fails here instead of
hanging CI.
"""
import multiprocessing
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import retroprop as rp
from retroprop.backend import cpu

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="fork() is POSIX-only")

TIMEOUT = 120


def _gemm_and_fit(queue):
    """In the child: a GEMM big enough for a team, a conv, and a short fit."""
    try:
        rng = np.random.default_rng(1)
        a = rng.standard_normal((300, 400)).astype(np.float32)
        b = rng.standard_normal((400, 500)).astype(np.float32)
        c = cpu.gemm(a, b)
        x = rng.standard_normal((8, 12, 12, 3)).astype(np.float32)
        w = rng.standard_normal((3, 3, 3, 16)).astype(np.float32)
        y = cpu.conv2d_forward(x, w, None, "relu", padding=(1, 1, 1, 1))
        loss = _fit()
        rp.set_num_threads(2)      # no team exists here to run more threads in
        queue.put(("ok", c, y, loss, rp.get_num_threads(),
                   cpu.backend_info()["forked_single_threaded"]))
    except BaseException as e:     # report, never hang the parent
        queue.put(("error", repr(e)))


def _fit():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((512, 20)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int64)
    model = rp.Sequential([rp.layers.Dense(64, activation="relu"),
                           rp.layers.Dense(2, activation="softmax")], input_shape=(20,), seed=0)
    trainer = rp.Trainer(model, "categorical_crossentropy", rp.optim.SGD(lr=0.1, momentum=0.9))
    history = trainer.fit(x, y, epochs=2, batch_size=64, verbose=0, shuffle=True)
    return history.history["loss"][-1]


def _run_in_forked_child():
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    child = ctx.Process(target=_gemm_and_fit, args=(queue,))
    child.start()
    try:
        result = queue.get(timeout=TIMEOUT)
    except Exception:
        result = None
    child.join(10)
    if child.is_alive():
        child.kill()
        child.join()
        pytest.fail(f"the forked child did not finish within {TIMEOUT} s (hung)")
    assert result is not None, f"the forked child died (exit code {child.exitcode})"
    assert result[0] == "ok", result[1]
    assert child.exitcode == 0
    return result[1:]


def test_child_forked_after_two_thread_kernels_runs_gemm_and_fit():
    previous = rp.get_num_threads()
    rp.set_num_threads(2)
    try:
        rng = np.random.default_rng(1)
        a = rng.standard_normal((300, 400)).astype(np.float32)
        b = rng.standard_normal((400, 500)).astype(np.float32)
        want = cpu.gemm(a, b)          # the parent's team now exists
        x = rng.standard_normal((8, 12, 12, 3)).astype(np.float32)
        w = rng.standard_normal((3, 3, 3, 16)).astype(np.float32)
        want_y = cpu.conv2d_forward(x, w, None, "relu", padding=(1, 1, 1, 1))
        want_loss = _fit()
        c, y, loss, child_threads, single = _run_in_forked_child()
        # results do not depend on the thread count: the child's equal the parent's
        np.testing.assert_array_equal(c, want)
        np.testing.assert_array_equal(y, want_y)
        assert loss == want_loss
        assert child_threads == 1 and single
        # the parent keeps its threads
        assert rp.get_num_threads() == 2
        assert not cpu.backend_info()["forked_single_threaded"]
    finally:
        rp.set_num_threads(previous)


def test_pool_of_forked_workers_after_threaded_training():
    """What a user's code does: train, then map over a fork-started pool."""
    previous = rp.get_num_threads()
    rp.set_num_threads(2)
    try:
        _fit()
        with multiprocessing.get_context("fork").Pool(2) as pool:
            result = pool.map_async(_square_sum, [64, 128, 256, 300])
            sums = result.get(timeout=TIMEOUT)
        for n, s in zip([64, 128, 256, 300], sums):
            a = np.ones((n, n), np.float32)
            assert s == float(cpu.gemm(a, a).sum())
    finally:
        rp.set_num_threads(previous)


def _square_sum(n):
    a = np.ones((n, n), np.float32)
    return float(cpu.gemm(a, a).sum())


def test_child_forked_before_any_threaded_kernel_keeps_its_threads():
    """A fresh process forks before running anything multi-threaded: its child
    may and does use two threads (the pool is created there)."""
    code = textwrap.dedent("""
        import os, sys
        import numpy as np
        import retroprop as rp
        from retroprop.backend import cpu
        rp.set_num_threads(2)
        pid = os.fork()
        if pid == 0:
            a = np.ones((400, 400), np.float32)
            ok = cpu.gemm(a, a)[0, 0] == 400 and rp.get_num_threads() == 2
            os._exit(0 if ok and not cpu.backend_info()["forked_single_threaded"] else 3)
        _, status = os.waitpid(pid, 0)
        sys.exit(os.waitstatus_to_exitcode(status))
    """)
    done = subprocess.run([sys.executable, "-c", code], timeout=TIMEOUT)
    assert done.returncode == 0
