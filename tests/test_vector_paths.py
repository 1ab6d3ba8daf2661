"""Every vector (AVX2) path of the C kernels against the portable path and
the NumPy reference, at every width from 1 to 17: one vector of 8 floats
(or 4 doubles) and its remainders, under and over, with the shapes around
it (heights, channels, strides, padding) varied as well.

Issue 23 found MaxPool2D's AVX2 path reading the cell right of a 1-wide
row (wrong maxima, argmax outside the image); AddressSanitizer does not
see masked AVX2 loads, so only a comparison finds such a bug. Each kernel
runs with ``set_simd("avx2+fma")`` and ``set_simd("generic")``; the two
must agree with each other and with numpy_ref. The whole sweep is skipped
on a CPU without AVX2 (only one path exists there), except the reference
comparison, which runs on whichever path the CPU has.
"""
import itertools

import numpy as np
import pytest

from retroprop.backend import cpu
from retroprop.backend import numpy_ref as ref

WIDTHS = range(1, 18)
HAVE_AVX2 = cpu.backend_info()["simd_best"] != "generic"
PATHS = ("avx2+fma", "generic") if HAVE_AVX2 else ("generic",)


def on_each_path(fn):
    """{path: fn()} with the kernels forced to each instruction set in turn."""
    previous = cpu.backend_info()["simd"]
    results = {}
    try:
        for path in PATHS:
            cpu.set_simd(path)
            results[path] = fn()
    finally:
        cpu.set_simd(previous)
    return results


def same_on_every_path(results, rtol=0.0, atol=0.0):
    """The result of the first path, after checking the others equal it."""
    values = list(results.values())
    for other in values[1:]:
        for a, b in zip(_as_tuple(values[0]), _as_tuple(other)):
            if rtol == 0 and atol == 0:
                np.testing.assert_array_equal(a, b)
            else:
                np.testing.assert_allclose(a, b, rtol=rtol, atol=atol)
    return values[0]


def _as_tuple(value):
    return value if isinstance(value, tuple) else (value,)


# ---------------------------------------------------------------- pooling

POOL_PADS = ((0, 0, 0, 0), (0, 1, 0, 1), (1, 0, 1, 0), (1, 1, 1, 1))


@pytest.mark.parametrize("width", WIDTHS)
def test_maxpool_every_width_channel_count_stride_and_padding(width):
    """2x2 windows (the AVX2 path: float32, c <= 8) and 3x2 ones, around every
    edge: a window of width 1 input reads one real cell."""
    rng = np.random.default_rng(width)
    for height, channels, stride, pads, pool in itertools.product(
            (1, 2, 3, 17), range(1, 10), (1, 2, 3), POOL_PADS, ((2, 2), (3, 2))):
        pads = (min(pads[0], pool[0] - 1), min(pads[1], pool[0] - 1), pads[2], pads[3])
        if height + pads[0] + pads[1] < pool[0] or width + pads[2] + pads[3] < pool[1]:
            continue
        x = rng.standard_normal((2, height, width, channels)).astype(np.float32)
        args = (pool, (stride, stride), pads)
        y, argmax = same_on_every_path(on_each_path(
            lambda: tuple(a.copy() for a in cpu.maxpool2d_forward(x, *args))))
        y_ref, argmax_ref = ref.maxpool2d_forward(x, *args)
        np.testing.assert_array_equal(y, y_ref, err_msg=f"h={height} c={channels} {args}")
        np.testing.assert_array_equal(argmax, argmax_ref, err_msg=f"h={height} c={channels} {args}")
        assert argmax.min() >= 0 and argmax.max() < height * width * channels


@pytest.mark.parametrize("width", WIDTHS)
def test_maxpool_never_reads_past_the_input(width):
    """The input ends where a memory page ends (a read past it was a segfault
    there) and is followed by +inf: a window that read a cell past its row
    would return that inf. Every value of x is negative."""
    page_floats = 4096 // 4
    channels = 3
    values = 2 * width * channels
    raw = np.full(values + page_floats + 1, np.inf, np.float32)
    base = raw.ctypes.data // 4
    end = -(-(base + values) // page_floats) * page_floats - base   # page-aligned end
    x = raw[end - values:end].reshape(1, 2, width, channels)
    x[...] = -1.0 - np.arange(values, dtype=np.float32).reshape(x.shape)
    for stride, pads in (((2, 2), (0, 0, 0, 1)), ((1, 1), (0, 0, 0, 0)), ((1, 3), (0, 1, 1, 1))):
        if width + pads[2] + pads[3] < 2:
            continue
        y, argmax = same_on_every_path(on_each_path(
            lambda: tuple(a.copy() for a in cpu.maxpool2d_forward(x, (2, 2), stride, pads))))
        assert (y < 0).all()
        y_ref, argmax_ref = ref.maxpool2d_forward(x.copy(), (2, 2), stride, pads)
        np.testing.assert_array_equal(y, y_ref)
        np.testing.assert_array_equal(argmax, argmax_ref)


@pytest.mark.parametrize("width", WIDTHS)
def test_avgpool_and_pool_backward_every_width(width):
    rng = np.random.default_rng(100 + width)
    for height, channels, stride, pads in itertools.product(
            (1, 3), (1, 5, 8, 17), (1, 2), POOL_PADS):
        x = rng.standard_normal((2, height, width, channels))
        args = ((2, 2), (stride, stride), pads)
        if height + pads[0] + pads[1] < 2 or width + pads[2] + pads[3] < 2:
            continue
        y = same_on_every_path(on_each_path(lambda: cpu.avgpool2d_forward(x, *args)))
        np.testing.assert_allclose(y, ref.avgpool2d_forward(x, *args), rtol=1e-12)
        dy = rng.standard_normal(y.shape)
        dx = same_on_every_path(on_each_path(
            lambda: cpu.avgpool2d_backward(dy, *args, np.empty_like(x))))
        np.testing.assert_allclose(dx, ref.avgpool2d_backward(dy, *args, np.empty_like(x)),
                                   rtol=1e-12, atol=1e-15)
        _, argmax = ref.maxpool2d_forward(x, *args)
        dx = same_on_every_path(on_each_path(
            lambda: cpu.maxpool2d_backward(argmax, dy, *args, np.empty_like(x))))
        np.testing.assert_allclose(dx, ref.maxpool2d_backward(argmax, dy, *args, np.empty_like(x)),
                                   rtol=1e-12)


# ---------------------------------------------------------------- elementwise and rows

ACTIVATION_PARAMS = {"sigmoid": 1.5, "leaky_relu": 0.2, "elu": 0.7}


@pytest.mark.parametrize("name", cpu.ELEMENTWISE_ACTIVATIONS)
def test_activations_every_length(name):
    rng = np.random.default_rng(7)
    param = ACTIVATION_PARAMS.get(name)
    for n, dtype in itertools.product(list(WIDTHS) + [31, 33, 64 + 7], (np.float32, np.float64)):
        x = (rng.standard_normal(n) * 3).astype(dtype)
        x[::5] = 0.0          # the kinks
        y = same_on_every_path(on_each_path(
            lambda: cpu.activation_forward(name, x, param=param)), rtol=2e-6, atol=1e-7)
        tol = dict(rtol=1e-5, atol=1e-6) if dtype == np.float32 else dict(rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(y, ref.activation_forward(name, x, param=param), **tol)
        dy = rng.standard_normal(n).astype(dtype)
        dx = same_on_every_path(on_each_path(
            lambda: cpu.activation_backward(name, y, dy, x=x, param=param)), rtol=2e-6, atol=1e-7)
        np.testing.assert_allclose(dx, ref.activation_backward(name, y, dy, x=x, param=param),
                                   **tol)


def test_softmax_and_cross_entropy_every_column_count():
    rng = np.random.default_rng(8)
    for c, rows in itertools.product(list(WIDTHS) + [31, 33], (1, 3)):
        for dtype in (np.float32, np.float64):
            z = (rng.standard_normal((rows, c)) * 4).astype(dtype)
            tol = dict(rtol=2e-6, atol=1e-7) if dtype == np.float32 else dict(rtol=1e-13, atol=0)
            p = same_on_every_path(on_each_path(lambda: cpu.softmax(z)), **tol)
            np.testing.assert_allclose(p, ref.softmax(z), **tol)
            labels = rng.integers(0, c, rows).astype(np.int64)
            onehot = np.eye(c, dtype=dtype)[labels]
            for targets in (labels, onehot):
                loss, grad = same_on_every_path(on_each_path(
                    lambda: cpu.softmax_cross_entropy(z, targets)), **tol)
                loss_ref, grad_ref = ref.softmax_cross_entropy(z, targets)
                np.testing.assert_allclose(loss, loss_ref, rtol=1e-5)
                np.testing.assert_allclose(grad, grad_ref, **tol)


def test_find_nonfinite_every_length_and_position():
    for n, dtype in itertools.product(list(WIDTHS) + [4095, 4097], (np.float32, np.float64)):
        x = np.ones(n, dtype)
        assert same_on_every_path(on_each_path(lambda: cpu.find_nonfinite(x))) == -1
        for at in sorted({0, n // 2, n - 1}):
            for bad in (np.nan, np.inf, -np.inf):
                y = x.copy()
                y[at] = bad
                assert same_on_every_path(on_each_path(lambda: cpu.find_nonfinite(y))) == at


# ---------------------------------------------------------------- GEMM

@pytest.mark.parametrize("m", WIDTHS)
def test_gemm_every_small_shape(m):
    """m x n x k in 1..17 (the 6x16 and 6x8 tiles and every remainder), each
    transpose, with a bias-free write-back, for both element types."""
    rng = np.random.default_rng(m)
    for n, k in itertools.product((1, 2, 5, 8, 9, 15, 16, 17, 33), (1, 3, 8, 17)):
        for dtype, ta, tb in itertools.product((np.float32, np.float64), (False, True),
                                               (False, True)):
            a = rng.standard_normal((k, m) if ta else (m, k)).astype(dtype)
            b = rng.standard_normal((n, k) if tb else (k, n)).astype(dtype)
            c0 = rng.standard_normal((m, n)).astype(dtype)
            tol = dict(rtol=1e-5, atol=1e-5) if dtype == np.float32 else dict(rtol=1e-12,
                                                                              atol=1e-12)
            got = same_on_every_path(on_each_path(lambda: cpu.gemm(
                a, b, c0.copy(), trans_a=ta, trans_b=tb, alpha=0.5, beta=2.0)), **tol)
            want = ref.gemm(a, b, c0.copy(), trans_a=ta, trans_b=tb, alpha=0.5, beta=2.0)
            np.testing.assert_allclose(got, want, **tol)


# ---------------------------------------------------------------- convolution

# (channels, filters, kernel): the direct paths (filters <= 8, patch <= 64;
# single-channel rows), the packed/gather paths (filters a multiple of 16),
# and the GEMM path (anything else).
CONV_SHAPES = ((1, 6, (5, 5)), (1, 3, (3, 3)), (3, 8, (3, 3)), (2, 16, (3, 3)),
               (3, 16, (1, 3)), (5, 17, (3, 3)), (16, 32, (3, 3)), (4, 9, (2, 2)))


def blocked_batch(out_h, out_w):
    """Images of out_h output lines enough for the fused block loops (conv.c:
    at least 8 blocks of about 512 pixels), where the direct, packed and
    gather kernels run; fewer lines take im2col + the threaded GEMM."""
    lines_per_block = -(-512 // out_w)
    return -(-8 * lines_per_block // out_h) + 1


@pytest.mark.parametrize("width", WIDTHS)
def test_conv2d_every_width(width):
    rng = np.random.default_rng(200 + width)
    for (c, f, k), stride, pad_mode, blocked in itertools.product(
            CONV_SHAPES, (1, 2), ("valid", "same"), (False, True)):
        if pad_mode == "valid":
            pads = (0, 0, 0, 0)
        else:
            ph, pw = k[0] - 1, k[1] - 1
            pads = (ph // 2, ph - ph // 2, pw // 2, pw - pw // 2)
        if blocked and (stride != 1 or c * f > 48):
            continue      # the fused paths' kernels at every width: enough with stride 1
        h = 9 if blocked else 5
        out_h, out_w = cpu.conv2d_output_hw(h, width, k, (stride, stride), (1, 1), pads)
        if out_h < 1 or out_w < 1:
            continue
        n = blocked_batch(out_h, out_w) if blocked else 2
        x = rng.standard_normal((n, h, width, c)).astype(np.float32)
        w = (rng.standard_normal(k + (c, f)) / np.sqrt(c * k[0] * k[1])).astype(np.float32)
        b = rng.standard_normal(f).astype(np.float32)
        args = dict(stride=(stride, stride), padding=pads)
        tol = dict(rtol=1e-4, atol=1e-4)
        where = f"c={c} f={f} k={k} stride={stride} {pad_mode} n={n} h={h}"
        y = same_on_every_path(on_each_path(
            lambda: cpu.conv2d_forward(x, w, b, "relu", **args)), **tol)
        np.testing.assert_allclose(y, ref.conv2d_forward(x, w, b, "relu", **args), **tol,
                                   err_msg=where)
        dy = rng.standard_normal(y.shape).astype(np.float32)

        def backward(module, with_dx=True):
            dw, db = np.empty_like(w), np.empty_like(b)
            dx = np.empty_like(x) if with_dx else None
            module.conv2d_backward(x, w, y, dy, "relu", dw, db, dx, **args)
            return (dw, db, dx) if with_dx else (dw, db)

        want = backward(ref)
        for with_dx in (True, False):    # without dx the direct dW kernels run
            got = same_on_every_path(on_each_path(lambda: backward(cpu, with_dx)),
                                     rtol=1e-4, atol=1e-3)
            for g, r, name in zip(got, want, ("dw", "db", "dx")):
                np.testing.assert_allclose(g, r, rtol=1e-4, atol=1e-3,
                                           err_msg=f"{name}: {where}")
