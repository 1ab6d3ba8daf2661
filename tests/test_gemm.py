"""The C GEMM against a float64 NumPy reference on awkward shapes, every
transpose variant, both dtypes, both SIMD levels and 1 and 2 threads.

Tolerances are the classic error bound of a k-term dot product,
|fl(C) - C| <= k * eps * (|A| |B|), applied element by element, so a test
fails on a real indexing or packing error but not on rounding."""
import numpy as np
import pytest

from retroprop import _core
from retroprop.backend import cpu

SHAPES = [  # (m, n, k)
    (1, 1, 1), (2, 3, 5), (7, 13, 11), (6, 16, 1), (5, 17, 29), (37, 41, 43),
    (97, 101, 103), (1000, 3, 17), (3, 1000, 17), (255, 257, 259), (61, 300, 600),
    # more rows than one row block (792 for float32): a last block of 8 rows
    (800, 37, 70),
    # one or two rows (the row kernel): full 64-column blocks, 8-column groups,
    # a masked group of 1..7 columns, and only a masked group
    (1, 200, 784), (2, 75, 33), (1, 7, 300), (2, 129, 4),
]
ACTIVATIONS = {
    "linear": lambda z: z,
    "relu": lambda z: np.maximum(z, 0),
    "sigmoid": lambda z: 1 / (1 + np.exp(-z)),
    "tanh": np.tanh,
    # not fused in the microkernels: the driver applies it to finished tiles
    "elu": lambda z: np.where(z > 0, z, np.expm1(np.minimum(z, 0))),
}


def reference(a, b, c, trans_a, trans_b, alpha, beta, bias, act):
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    opa, opb = (a64.T if trans_a else a64), (b64.T if trans_b else b64)
    z = alpha * opa @ opb
    bound = abs(alpha) * np.abs(opa) @ np.abs(opb)
    if c is not None and beta != 0:
        z += beta * c
        bound += abs(beta * c)
    if bias is not None:
        z += bias
        bound += np.abs(bias)
    return ACTIVATIONS[act](z), bound


def assert_close(out, ref, bound, k):
    eps = np.finfo(out.dtype).eps
    # k*eps for the sums, a few eps for the activation itself.
    tol = (k + 4) * eps * bound + 8 * eps * np.maximum(np.abs(ref), 1e-30)
    err = np.abs(out.astype(np.float64) - ref)
    worst = np.unravel_index(np.argmax(err - tol), err.shape)
    assert np.all(err <= tol), f"max excess at {worst}: err {err[worst]:.3g} > tol {tol[worst]:.3g}"


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("trans_a,trans_b", [(False, False), (True, False), (False, True), (True, True)])
@pytest.mark.parametrize("m,n,k", SHAPES)
def test_gemm_matches_reference(simd, threads, dtype, trans_a, trans_b, m, n, k):
    rng = np.random.default_rng(m * 10007 + n * 101 + k)
    a = rng.standard_normal((k, m) if trans_a else (m, k)).astype(dtype)
    b = rng.standard_normal((n, k) if trans_b else (k, n)).astype(dtype)
    c = rng.standard_normal((m, n)).astype(dtype)
    ref, bound = reference(a, b, c, trans_a, trans_b, 0.75, -0.5, None, "linear")
    out = cpu.gemm(a, b, c.copy(), trans_a=trans_a, trans_b=trans_b, alpha=0.75, beta=-0.5)
    assert out.dtype == dtype
    assert_close(out, ref, bound, k)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("act", list(ACTIVATIONS))
@pytest.mark.parametrize("m,n,k", [(1, 1, 1), (1, 75, 33), (5, 17, 29), (97, 101, 103),
                                   (300, 131, 257)])
def test_fused_bias_activation_in_writeback(simd, threads, dtype, act, m, n, k):
    from retroprop import _core
    rng = np.random.default_rng(k)
    a = rng.standard_normal((m, k)).astype(dtype)
    b = (rng.standard_normal((k, n)) / np.sqrt(k)).astype(dtype)
    bias = rng.standard_normal(n).astype(dtype)
    out = np.full((m, n), np.nan, dtype=dtype)  # beta = 0 must never read C
    _core.gemm(a, b, out, False, False, 1.0, 0.0, bias, act)
    ref, bound = reference(a, b, None, False, False, 1.0, 0.0, bias, act)
    assert_close(out, ref, bound, k)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("beta", [0.0, 1.0, -1.0])
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("act", ["linear", "relu", "tanh"])
@pytest.mark.parametrize("m,n,k", [(6, 16, 7), (37, 48, 300), (131, 67, 600)])
def test_writeback_variants_with_alpha_one(simd, threads, dtype, beta, bias, act, m, n, k):
    """alpha 1 with beta 0 or 1, a bias or not, relu or no activation: the
    microkernel's straight-line write-backs (tanh and beta -1 take the
    general one). k up to 600 crosses depth blocks, where the later ones add
    to C; C holds NaN where beta 0 must not read it."""
    from retroprop import _core
    rng = np.random.default_rng(m * 7 + n * 3 + k + int(bias))
    a = rng.standard_normal((m, k)).astype(dtype)
    b = (rng.standard_normal((k, n)) / np.sqrt(k)).astype(dtype)
    c = np.full((m, n), np.nan, dtype) if beta == 0 else rng.standard_normal((m, n)).astype(dtype)
    bias_v = rng.standard_normal(n).astype(dtype) if bias else None
    out = c.copy()
    _core.gemm(a, b, out, False, False, 1.0, beta, bias_v, act)
    ref, bound = reference(a, b, None if beta == 0 else c, False, False, 1.0, beta,
                           bias_v, act)
    assert_close(out, ref, bound, k)


@pytest.mark.parametrize("trans_a,trans_b", [(False, False), (True, False), (False, True)])
@pytest.mark.parametrize("act", ["linear", "relu", "tanh", "elu"])
@pytest.mark.parametrize("m,n,k", [(6, 1, 1), (7, 16, 256), (128, 10, 128), (131, 9, 300),
                                   (1000, 3, 17), (6, 16, 257)])
def test_narrow_output_reads_a_in_place(simd, threads, trans_a, trans_b, act, m, n, k):
    """float32 C of at most 16 columns with alpha 1 and beta 0 (a classifier's
    layer and its weight gradient) reads op(A) in place, six rows at a time,
    the last group being the six rows ending at m; k up to 256. Against the
    reference, with a bias and each kind of activation (fused in the kernel
    or applied after), op(A) and op(B) transposed or not."""
    from retroprop import _core
    rng = np.random.default_rng(m + n + k)
    a = rng.standard_normal((k, m) if trans_a else (m, k)).astype(np.float32)
    b = (rng.standard_normal((n, k) if trans_b else (k, n)) / np.sqrt(k)).astype(np.float32)
    bias = rng.standard_normal(n).astype(np.float32)
    out = np.full((m, n), np.nan, dtype=np.float32)  # beta = 0 must never read C
    _core.gemm(a, b, out, trans_a, trans_b, 1.0, 0.0, bias, act)
    ref, bound = reference(a, b, None, trans_a, trans_b, 1.0, 0.0, bias, act)
    assert_close(out, ref, bound, k)


@pytest.mark.parametrize("trans_b", [False, True])
@pytest.mark.parametrize("beta", [0.0, 1.0])
@pytest.mark.parametrize("m,n,k", [(6, 40, 1), (64, 40, 300), (65, 40, 785), (131, 37, 600),
                                   (256, 40, 300), (257, 40, 300), (128, 256, 784)])
def test_rows_of_a_read_in_place(simd, threads, trans_b, beta, m, n, k):
    """float32 with a row-major A of at most 256 rows: full six-row panels
    are read in place by their own microkernel (tiles in rows only), the
    last partial panel is packed; edge columns, several depth blocks
    (k = 600, 785) accumulated into C, beta 1, a bias and relu. Against the
    reference, and one thread against two bit for bit."""
    rng = np.random.default_rng(m * 7 + n + k)
    a = rng.standard_normal((m, k)).astype(np.float32)
    b = (rng.standard_normal((n, k) if trans_b else (k, n)) / np.sqrt(k)).astype(np.float32)
    c = rng.standard_normal((m, n)).astype(np.float32)
    bias = rng.standard_normal(n).astype(np.float32)
    out = c.copy()
    _core.gemm(a, b, out, False, trans_b, 1.0, beta, bias, "relu")
    ref, bound = reference(a, b, c, False, trans_b, 1.0, beta, bias, "relu")
    assert_close(out, ref, bound, k)
    previous = cpu.get_num_threads()
    try:
        outs = []
        for nt in (1, 2):
            cpu.set_num_threads(nt)
            outs.append(c.copy())
            _core.gemm(a, b, outs[-1], False, trans_b, 1.0, beta, bias, "relu")
    finally:
        cpu.set_num_threads(previous)
    np.testing.assert_array_equal(outs[0], outs[1])


@pytest.mark.parametrize("m,n,k", [(400, 10, 255), (400, 10, 256), (400, 16, 257), (333, 7, 400),
                                   (3000, 16, 150)])
def test_narrow_output_does_not_depend_on_thread_count(simd, m, n, k):
    """Big enough for two threads, a narrow C goes through the blocked path,
    which one thread skips for the in-place one: both must sum each element
    in the same order (the in-place path is kept to one depth block)."""
    from retroprop import _core
    rng = np.random.default_rng(m * n + k)
    a = rng.standard_normal((m, k)).astype(np.float32)
    b = rng.standard_normal((k, n)).astype(np.float32)
    bias = rng.standard_normal(n).astype(np.float32)
    before = cpu.get_num_threads()
    outs = []
    try:
        for threads in (1, 2):
            cpu.set_num_threads(threads)
            out = np.empty((m, n), np.float32)
            _core.gemm(a, b, out, False, False, 1.0, 0.0, bias, "relu")
            outs.append(out)
    finally:
        cpu.set_num_threads(before)
    np.testing.assert_array_equal(outs[0], outs[1])


def test_large_square_2048(threads):
    rng = np.random.default_rng(2048)
    for dtype in (np.float32, np.float64):
        a = rng.standard_normal((2048, 2048)).astype(dtype)
        b = rng.standard_normal((2048, 2048)).astype(dtype)
        out = cpu.gemm(a, b)
        # a sample of rows keeps the float64 reference cheap
        rows = rng.choice(2048, 64, replace=False)
        ref = a[rows].astype(np.float64) @ b.astype(np.float64)
        bound = np.abs(a[rows]).astype(np.float64) @ np.abs(b).astype(np.float64)
        assert_close(out[rows], ref, bound, 2048)


def test_deterministic_for_fixed_thread_count_and_across_counts():
    rng = np.random.default_rng(3)
    a = rng.standard_normal((301, 517)).astype(np.float32)
    b = rng.standard_normal((517, 263)).astype(np.float32)
    previous = cpu.get_num_threads()
    try:
        results = []
        for nt in (1, 2, 2, 1):
            cpu.set_num_threads(nt)
            results.append(cpu.gemm(a, b))
    finally:
        cpu.set_num_threads(previous)
    for r in results[1:]:
        assert np.array_equal(r, results[0])


@pytest.mark.parametrize("threads_n", [3, 5])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("m,n,k,trans_a", [
    (128, 256, 784, False),   # whole rows of tiles per thread, four depth blocks
    (784, 256, 128, True),    # a weight gradient: four row blocks, the last partial
    (40, 300, 97, False),     # tiles split along B panels
    (531, 47, 600, False),    # edge tiles in both directions
])
def test_threads_helping_each_other_give_the_same_bits(dtype, threads_n, m, n, k, trans_a):
    """More threads than cores: the OS runs them by turns, so threads that
    finish their share early run the tiles of those still descheduled.
    Every tile must still come out bit-identical to a one-thread run."""
    rng = np.random.default_rng(m + n + k)
    a = rng.standard_normal((k, m) if trans_a else (m, k)).astype(dtype)
    b = rng.standard_normal((k, n)).astype(dtype)
    bias = rng.standard_normal(n).astype(dtype)
    previous = cpu.get_num_threads()
    try:
        cpu.set_num_threads(1)
        single = np.empty((m, n), dtype)
        _core.gemm(a, b, single, trans_a, False, 1.0, 0.0, bias, "tanh")
        cpu.set_num_threads(threads_n)
        for _ in range(10):
            out = np.empty((m, n), dtype)
            _core.gemm(a, b, out, trans_a, False, 1.0, 0.0, bias, "tanh")
            np.testing.assert_array_equal(out, single)
    finally:
        cpu.set_num_threads(previous)
    ref, bound = reference(a, b, None, trans_a, False, 1.0, 0.0, bias, "tanh")
    assert_close(single, ref, bound, k)


def test_zero_sized_dimensions():
    a = np.ones((0, 3), np.float32)
    assert cpu.gemm(a, np.ones((3, 4), np.float32)).shape == (0, 4)
    # k == 0: the product is all zeros, plus beta * C
    out = cpu.gemm(np.ones((2, 0)), np.ones((0, 3)), np.full((2, 3), 2.0), beta=0.5)
    assert np.array_equal(out, np.ones((2, 3)))


def test_non_contiguous_inputs_are_copied():
    rng = np.random.default_rng(4)
    big = rng.standard_normal((40, 60)).astype(np.float32)
    a = big[::2, ::3]            # (20, 20), strided
    b = big[1::2, 1::3].T        # (20, 20), transposed view
    out = cpu.gemm(a, b)
    np.testing.assert_allclose(out, a.astype(np.float64) @ b, rtol=1e-5, atol=1e-4)


def test_binding_refuses_non_contiguous_and_bad_dtypes():
    from retroprop import _core
    a = np.ones((4, 6), np.float32)
    c = np.zeros((4, 4), np.float32)
    with pytest.raises(TypeError, match="C-contiguous"):
        _core.gemm(a[:, ::2], np.ones((3, 4), np.float32), c)
    with pytest.raises(TypeError, match="float32 or float64"):
        cpu.gemm(a.astype(np.int32), np.ones((6, 4), np.int32))
    with pytest.raises(TypeError, match="expected dtype float32"):
        cpu.gemm(a, np.ones((6, 4), np.float64))
    with pytest.raises(ValueError, match="inner dimensions"):
        _core.gemm(a, np.ones((5, 4), np.float32), c)
    with pytest.raises(ValueError, match="expected shape"):
        cpu.gemm(a, np.ones((6, 4), np.float32), np.zeros((4, 5), np.float32))
    with pytest.raises(TypeError, match="C-contiguous"):
        cpu.gemm(a, np.ones((6, 8), np.float32), np.zeros((8, 4), np.float32).T)
    with pytest.raises(ValueError, match="activation"):
        _core.gemm(a, np.ones((6, 4), np.float32), c, False, False, 1.0, 0.0, None, "softplus")
