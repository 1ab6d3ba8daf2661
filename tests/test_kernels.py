"""Dense, activation, softmax, softmax-cross-entropy and SGD kernels of the C
backend against plain float64 NumPy formulas written here, on awkward shapes."""
import os

import numpy as np
import pytest

from retroprop import _core
from retroprop.backend import cpu

ACT = {
    "linear": (lambda z: z, lambda y: np.ones_like(y)),
    "relu": (lambda z: np.maximum(z, 0), lambda y: (y > 0).astype(y.dtype)),
    "sigmoid": (lambda z: 1 / (1 + np.exp(-z)), lambda y: y * (1 - y)),
    "tanh": (np.tanh, lambda y: 1 - y * y),
}
DENSE_SHAPES = [(1, 1, 1), (1, 784, 256), (3, 5, 7), (13, 17, 19), (32, 784, 256),
                (128, 256, 128), (1000, 3, 17), (97, 61, 10)]


def rtol_for(dtype):
    return 2e-5 if dtype == np.float32 else 1e-11


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("act", list(ACT))
@pytest.mark.parametrize("n,k,m", DENSE_SHAPES)
def test_dense_forward_backward(simd, threads, dtype, act, n, k, m):
    rng = np.random.default_rng(n + 7 * k + 31 * m)
    x = rng.standard_normal((n, k)).astype(dtype)
    w = (rng.standard_normal((k, m)) / np.sqrt(k)).astype(dtype)
    b = rng.standard_normal(m).astype(dtype)
    dy = rng.standard_normal((n, m)).astype(dtype)
    f, dfdy = ACT[act]
    x64, w64, b64, dy64 = (t.astype(np.float64) for t in (x, w, b, dy))

    y = cpu.dense_forward(x, w, b, act)
    y_ref = f(x64 @ w64 + b64)
    scale = np.abs(x64) @ np.abs(w64) + np.abs(b64)
    assert np.all(np.abs(y - y_ref) <= rtol_for(dtype) * (scale + 1) * np.sqrt(k))

    dw = np.full((k, m), np.nan, dtype)
    db = np.full(m, np.nan, dtype)
    dx = np.full((n, k), np.nan, dtype)
    cpu.dense_backward(x, w, y, dy, act, dw, db, dx)
    dz = dy64 * dfdy(y.astype(np.float64))  # derivative from the kernel's own output
    np.testing.assert_allclose(dw, x64.T @ dz, rtol=rtol_for(dtype) * 10,
                               atol=rtol_for(dtype) * np.sqrt(n) * (np.abs(x64).T @ np.abs(dz)).max())
    np.testing.assert_allclose(db, dz.sum(0), rtol=rtol_for(dtype) * 10,
                               atol=rtol_for(dtype) * np.sqrt(n) * np.abs(dz).sum(0).max())
    np.testing.assert_allclose(dx, dz @ w64.T, rtol=rtol_for(dtype) * 10,
                               atol=rtol_for(dtype) * np.sqrt(m) * (np.abs(dz) @ np.abs(w64).T).max())


def test_dense_backward_without_bias_or_dx_and_overwrites():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((9, 5))
    w = rng.standard_normal((5, 3))
    y = cpu.dense_forward(x, w, None, "linear")
    np.testing.assert_allclose(y, x @ w, rtol=1e-12)
    dw = np.full((5, 3), 1e9)
    assert cpu.dense_backward(x, w, y, np.ones_like(y), "linear", dw) is None
    np.testing.assert_allclose(dw, x.T @ np.ones((9, 3)), rtol=1e-12)  # not += onto 1e9


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("act", list(ACT))
@pytest.mark.parametrize("size", [1, 7, 8, 9, 63, 64, 65, 1001, 40001])
def test_elementwise_activations(simd, threads, dtype, act, size):
    rng = np.random.default_rng(size)
    x = (rng.standard_normal(size) * 4).astype(dtype)
    x[: min(size, 4)] = np.array([0.0, 1e-7, -1e-7, 0.05], dtype)[: min(size, 4)]
    f, dfdy = ACT[act]
    y = cpu.activation_forward(act, x)
    y_ref = f(x.astype(np.float64))
    tol = 4e-7 if dtype == np.float32 else 1e-15
    np.testing.assert_allclose(y, y_ref, rtol=tol * 4, atol=tol)
    dy = rng.standard_normal(size).astype(dtype)
    dx = cpu.activation_backward(act, y, dy)
    np.testing.assert_allclose(dx, dy * dfdy(y.astype(np.float64)), rtol=tol * 4, atol=tol)


@pytest.mark.parametrize("act", ["sigmoid", "tanh"])
def test_activations_saturate_without_nan(simd, act):
    x = np.array([-1e4, -100, -88.7, -20, 20, 88.7, 100, 1e4, np.finfo(np.float32).max,
                  -np.finfo(np.float32).max], np.float32)
    y = cpu.activation_forward(act, x)
    assert np.all(np.isfinite(y))
    low = 0.0 if act == "sigmoid" else -1.0
    np.testing.assert_allclose(y[[0, 1, -1]], low, atol=1e-30)
    np.testing.assert_allclose(y[[6, 7, 8]], 1.0)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n,c", [(1, 1), (1, 10), (3, 7), (2, 8), (5, 9), (129, 10), (4, 16),
                                 (3, 67), (2, 1000), (5000, 17)])
def test_softmax_and_fused_cross_entropy(simd, threads, dtype, n, c):
    rng = np.random.default_rng(n * c)
    z = (rng.standard_normal((n, c)) * 3).astype(dtype)
    labels = rng.integers(0, c, n)
    z64 = z.astype(np.float64)
    p_ref = np.exp(z64 - z64.max(1, keepdims=True))
    p_ref /= p_ref.sum(1, keepdims=True)
    tol = 1e-6 if dtype == np.float32 else 1e-13
    np.testing.assert_allclose(cpu.softmax(z), p_ref, rtol=tol * 10, atol=tol)

    onehot = np.eye(c, dtype=dtype)[labels]
    loss_ref = np.mean(-np.log(p_ref[np.arange(n), labels]))
    for targets in (labels, onehot):
        loss, grad = cpu.softmax_cross_entropy(z, targets)
        assert loss == pytest.approx(loss_ref, rel=tol * 10, abs=tol)
        np.testing.assert_allclose(grad, (p_ref - onehot) / n, rtol=tol * 10, atol=tol / n)
        # The loss alone (no gradient array) is the same number.
        assert _core.softmax_cross_entropy(z, labels if targets is labels else None,
                                           None if targets is labels else targets,
                                           None) == pytest.approx(loss, rel=1e-12)
    # Rows are independent: a row's results do not depend on its neighbours
    # (the vector loop's masked tail reads and writes nothing outside the row).
    if n > 1:
        np.testing.assert_array_equal(cpu.softmax(z)[1:], cpu.softmax(z[1:]))
        out = np.full((n + 1, c), 7.0, dtype)
        cpu.softmax(z, out[:n])
        assert np.all(out[n] == 7.0)


@pytest.mark.parametrize("c", [3, 10, 17])
def test_softmax_keeps_nan_and_handles_infinite_logits(simd, c):
    z = np.zeros((4, c), np.float32)
    z[0, 1] = np.nan
    z[1, 0] = -np.inf                 # a masked-out class: probability exactly 0
    z[2, c - 1] = 200.0               # every other class underflows to 0
    p = cpu.softmax(z)
    assert np.all(np.isnan(p[0]))
    assert p[1, 0] == 0.0 and p[1, 1:].sum() == pytest.approx(1.0, rel=1e-6)
    np.testing.assert_array_equal(p[2], np.eye(c, dtype=np.float32)[c - 1])
    np.testing.assert_allclose(p[3], 1.0 / c, rtol=1e-6)
    loss, grad = cpu.softmax_cross_entropy(z, np.zeros(4, np.int64))
    assert np.isnan(loss) and np.all(np.isnan(grad[0])) and np.all(np.isfinite(grad[1:]))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n,k,m", [(1, 784, 10), (1, 1, 1), (3, 5, 7), (32, 128, 10),
                                   (97, 61, 13)])
def test_dense_forward_softmax_writes_logits_and_probabilities(simd, threads, dtype, n, k, m):
    from retroprop.backend import numpy_ref
    rng = np.random.default_rng(n + 3 * k + 5 * m)
    x = rng.standard_normal((n, k)).astype(dtype)
    w = (rng.standard_normal((k, m)) * 3 / np.sqrt(k)).astype(dtype)
    b = rng.standard_normal(m).astype(dtype)
    z64 = x.astype(np.float64) @ w.astype(np.float64) + b
    p64 = np.exp(z64 - z64.max(1, keepdims=True))
    p64 /= p64.sum(1, keepdims=True)
    tol = 2e-5 if dtype == np.float32 else 1e-11
    for backend in (cpu, numpy_ref):
        logits = np.full((n, m), np.nan, dtype)
        out = backend.dense_forward(x, w, b, "softmax", logits=logits)
        assert out.dtype == dtype
        np.testing.assert_allclose(logits, z64, rtol=tol, atol=tol * np.sqrt(k))
        np.testing.assert_allclose(out, p64, rtol=tol * 10, atol=tol)
        np.testing.assert_allclose(out.sum(1), 1.0, rtol=tol)
    # Non-contiguous x is copied by the backend, not misread.
    wide = np.repeat(x, 2, axis=1)[:, ::2]
    assert not wide.flags.c_contiguous or k == 1    # a (n, 1) slice is contiguous anyway
    np.testing.assert_array_equal(cpu.dense_forward(wide, w, b, "softmax"),
                                  cpu.dense_forward(x, w, b, "softmax"))
    with pytest.raises(ValueError, match="logits"):
        cpu.dense_forward(x, w, b, "softmax", logits=np.empty((n, m + 1), dtype))


def test_cross_entropy_is_stable_at_extreme_logits():
    z = np.array([[1e4, -1e4, 0.0], [-1e4, 1e4, 5.0]], np.float32)
    loss, grad = cpu.softmax_cross_entropy(z, np.array([1, 1]))
    # row 0: the true class is 2e4 below the max -> loss 2e4; row 1: ~0
    assert loss == pytest.approx(1e4, rel=1e-6)
    assert np.all(np.isfinite(grad))
    np.testing.assert_allclose(grad, [[0.5, -0.5, 0], [0, 0, 0]], atol=1e-6)


def test_cross_entropy_with_seed_numbers():
    # softmax(1.7, 1.4, -1.3) = (0.558, 0.414, 0.028); CE with p(true)=0.8 = 0.223
    p = cpu.softmax(np.array([[1.7, 1.4, -1.3]]))
    np.testing.assert_allclose(p, [[0.558, 0.414, 0.028]], atol=5e-4)
    logits = np.log(np.array([[0.8, 0.15, 0.05]]))
    loss, _ = cpu.softmax_cross_entropy(logits, np.array([0]))
    assert loss == pytest.approx(-np.log(0.8)) and round(loss, 3) == 0.223


def test_cross_entropy_refuses_bad_labels():
    z = np.zeros((3, 4), np.float32)
    with pytest.raises(ValueError, match=r"class id 4 out of range \[0, 4\)"):
        cpu.softmax_cross_entropy(z, np.array([0, 4, 1]))
    with pytest.raises(ValueError, match="class id -1"):
        cpu.softmax_cross_entropy(z, np.array([0, -1, 1]))
    with pytest.raises(ValueError, match="labels"):
        cpu.softmax_cross_entropy(z, np.array([0, 1]))
    with pytest.raises(TypeError, match="integers"):
        cpu.softmax_cross_entropy(z, np.array([0.0, 1.0, 2.0]))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("size", [1, 17, 100003])
@pytest.mark.parametrize("momentum,nesterov,wd", [(0, False, 0), (0, False, 0.01), (0.9, False, 0),
                                                   (0.9, True, 1e-3), (0.5, False, 0.1)])
def test_sgd_step(threads, dtype, size, momentum, nesterov, wd):
    rng = np.random.default_rng(size)
    p = rng.standard_normal(size).astype(dtype)
    g = rng.standard_normal(size).astype(dtype)
    v = rng.standard_normal(size).astype(dtype) if momentum else None
    p_ref, v_ref = p.astype(np.float64), (v.astype(np.float64) if v is not None else None)
    lr = 0.05
    for _ in range(3):
        cpu.sgd_step(p, g, v, lr=lr, momentum=momentum, nesterov=nesterov, weight_decay=wd)
        geff = g + wd * p_ref
        if momentum:
            v_ref = momentum * v_ref + geff
            p_ref = p_ref - lr * (geff + momentum * v_ref if nesterov else v_ref)
        else:
            p_ref = p_ref - lr * geff
    tol = 1e-6 if dtype == np.float32 else 1e-14
    np.testing.assert_allclose(p, p_ref, rtol=tol, atol=tol)
    if momentum:
        np.testing.assert_allclose(v, v_ref, rtol=tol, atol=tol)


def test_backend_info_reports_simd_threads_and_openmp():
    info = cpu.backend_info()
    assert info["simd"] in ("avx2+fma", "generic")
    assert info["threads"] == cpu.get_num_threads() >= 1
    assert isinstance(info["openmp"], bool) and info["cuda"] is False
    with pytest.raises(ValueError, match="1 <= n <= 512"):
        cpu.set_num_threads(0)
    with pytest.raises(ValueError, match="1 <= n <= 512, got 100000"):
        cpu.set_num_threads(100000)


def test_a_huge_omp_num_threads_is_clamped_not_a_crash():
    """OMP_NUM_THREADS=100000 made OpenMP crash the process in the first
    convolution; the kernels now use at most 512 threads."""
    import subprocess
    import sys
    code = ("import numpy as np, retroprop as rp\n"
            "from retroprop.backend import cpu\n"
            "m = rp.Sequential([rp.layers.Conv2D(6, 5, activation='relu'), rp.layers.Flatten(),\n"
            "                   rp.layers.Dense(10)], input_shape=(12, 12, 1), seed=0)\n"
            "y = m.forward(np.random.default_rng(0).random((64, 12, 12, 1), dtype=np.float32))\n"
            "print(cpu.get_num_threads(), y.shape)\n")
    env = dict(os.environ, OMP_NUM_THREADS="100000")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split()[:1] == ["512"]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n", [1, 7, 4095, 4096, 4097, 100003])
def test_find_nonfinite_returns_the_first_bad_index(threads, dtype, n):
    from retroprop.backend import numpy_ref
    x = np.random.default_rng(n).standard_normal(n).astype(dtype)
    assert cpu.find_nonfinite(x) == -1 == numpy_ref.find_nonfinite(x)
    places = sorted({0, n // 3, n // 2, n - 1})
    for bad_value in (np.nan, -np.nan, np.copysign(np.nan, -1.0), np.inf, -np.inf):
        for where in places:
            y = x.copy()
            y[where] = bad_value
            # A later bad value (in another thread's share) must not win.
            if where + 5 < n:
                y[-1] = np.nan
            assert cpu.find_nonfinite(y) == where == numpy_ref.find_nonfinite(y)
    # The largest finite values are finite; so are -0.0 and subnormals.
    y = np.full(n, np.finfo(dtype).max, dtype)
    y[::2] = -np.finfo(dtype).max
    assert cpu.find_nonfinite(y) == -1
    y[::3] = -0.0
    y[1::5] = np.finfo(dtype).smallest_subnormal
    y[2::7] = -np.finfo(dtype).smallest_subnormal
    assert cpu.find_nonfinite(y) == -1


def test_find_nonfinite_on_a_non_contiguous_array():
    x = np.zeros((50, 40), np.float32)
    x[3, 11] = np.nan       # an odd column: not in the ::2 view
    x[7, 6] = np.inf
    view = x[:, ::2]
    assert not view.flags.c_contiguous
    assert cpu.find_nonfinite(view) == 7 * 20 + 3


# ---------------------------------------------------------------- batch assembly

@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int64, np.uint8])
@pytest.mark.parametrize("rows, row_shape, count", [(1, (7,), 1), (13, (3, 5), 13),
                                                    (1009, (784,), 257), (50, (), 50)])
def test_gather_rows_matches_fancy_indexing(threads, dtype, rows, row_shape, count):
    """gather_rows is x[index] into a reused buffer, for any dtype and row
    shape: one row, primes, a batch big enough for two threads (257 rows of
    784 values), and scalar rows; repeated indices too."""
    from retroprop.backend import numpy_ref
    rng = np.random.default_rng(rows + count)
    x = (rng.standard_normal((rows,) + row_shape) * 100).astype(dtype)
    index = rng.integers(0, rows, count)
    before = cpu.get_num_threads()
    try:
        cpu.set_num_threads(threads)
        for backend in (cpu, numpy_ref):
            out = np.full((count,) + row_shape, 7, dtype=dtype)
            got = backend.gather_rows(x, index, out)
            assert got is out
            np.testing.assert_array_equal(out, x[index])
    finally:
        cpu.set_num_threads(before)


def test_gather_rows_refuses_bad_input_before_writing():
    from retroprop.backend import numpy_ref
    x = np.arange(20, dtype=np.float32).reshape(10, 2)
    for backend in (cpu, numpy_ref):
        for bad in ([0, 10], [-1, 3]):
            out = np.full((2, 2), 5, np.float32)
            with pytest.raises(IndexError, match=r"\[0, 10\)"):
                backend.gather_rows(x, np.array(bad), out)
            if backend is cpu:
                assert (out == 5).all()     # nothing written
    with pytest.raises(TypeError, match="C-contiguous"):
        cpu.gather_rows(x[:, ::-1], np.array([1]), np.empty((1, 2), np.float32))
    with pytest.raises(TypeError, match="dtype"):
        cpu.gather_rows(x, np.array([1]), np.empty((1, 2), np.float64))
    with pytest.raises(ValueError, match="shape"):
        cpu.gather_rows(x, np.array([1, 2]), np.empty((1, 2), np.float32))
    for backend in (cpu, numpy_ref):
        with pytest.raises(ValueError, match="overlaps x"):     # rows copied onto rows still to read
            backend.gather_rows(x, np.array([3, 4]), x[2:4])
