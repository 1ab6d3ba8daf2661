"""Pooling layers against plain-loop references written here, tie handling,
"same" padding, and finite differences."""
import numpy as np
import pytest

import retroprop as rp
from retroprop.backend import cpu as cpu_backend
from retroprop.gradcheck import check_layer_gradients
from retroprop.layers import (AvgPool1D, AvgPool2D, GlobalAvgPool2D, MaxPool1D,
                              MaxPool2D)


# ---------------------------------------------------------------- reference

def window_cells(oy, ox, h, w, pool, stride, pads):
    """Real (non-padding) cells of window (oy, ox), in row-major window order."""
    top, left = pads[0], pads[2]
    cells = []
    for ky in range(pool[0]):
        for kx in range(pool[1]):
            iy, ix = oy * stride[0] - top + ky, ox * stride[1] - left + kx
            if 0 <= iy < h and 0 <= ix < w:
                cells.append((iy, ix))
    return cells


def output_hw(h, w, pool, stride, pads):
    return ((h + pads[0] + pads[1] - pool[0]) // stride[0] + 1,
            (w + pads[2] + pads[3] - pool[1]) // stride[1] + 1)


def reference_pool(x, dy, pool, stride, pads, mode):
    """(y, dx) of max or average pooling; max ties go to the first cell, averages
    are over real cells only."""
    n, h, w, c = x.shape
    oh, ow = output_hw(h, w, pool, stride, pads)
    y = np.zeros((n, oh, ow, c))
    dx = np.zeros(x.shape)
    for i in range(n):
        for oy in range(oh):
            for ox in range(ow):
                cells = window_cells(oy, ox, h, w, pool, stride, pads)
                for ch in range(c):
                    values = [x[i, iy, ix, ch] for iy, ix in cells]
                    if mode == "max":
                        best = 0
                        for j, v in enumerate(values):
                            if v > values[best]:
                                best = j
                        y[i, oy, ox, ch] = values[best]
                        iy, ix = cells[best]
                        dx[i, iy, ix, ch] += dy[i, oy, ox, ch]
                    else:
                        y[i, oy, ox, ch] = sum(values) / len(values)
                        for iy, ix in cells:
                            dx[i, iy, ix, ch] += dy[i, oy, ox, ch] / len(cells)
    return y, dx


def same_pads(size, k, s):
    out = -(-size // s)
    total = max((out - 1) * s + k - size, 0)
    return total // 2, total - total // 2


# (id, input shape, layer kwargs, pads, dtype)
CONFIGS = [
    ("2x2_valid", (2, 6, 8, 3), dict(pool_size=2), (0, 0, 0, 0), np.float32),
    # many channels: the 2x2 fast path's vectorised channel loop and its remainder
    ("2x2_17_channels", (2, 6, 6, 17), dict(pool_size=2), (0, 0, 0, 0), np.float32),
    ("odd_input_valid", (2, 7, 5, 2), dict(pool_size=2), (0, 0, 0, 0), np.float64),
    ("overlapping_3_stride2", (2, 7, 7, 2), dict(pool_size=3, strides=2), (0, 0, 0, 0), np.float64),
    ("same_3_stride2", (2, 8, 7, 3), dict(pool_size=3, strides=2, padding="same"),
     same_pads(8, 3, 2) + same_pads(7, 3, 2), np.float32),
    ("same_2_stride2_odd", (1, 5, 7, 2), dict(pool_size=2, padding="same"),
     same_pads(5, 2, 2) + same_pads(7, 2, 2), np.float64),
    ("rect_same", (2, 6, 9, 2), dict(pool_size=(2, 3), strides=(1, 2), padding="same"),
     same_pads(6, 2, 1) + same_pads(9, 3, 2), np.float64),
]


@pytest.mark.parametrize("mode", ["max", "avg"])
@pytest.mark.parametrize("cid,shape,kwargs,pads,dtype", CONFIGS, ids=[c[0] for c in CONFIGS])
def test_pool2d_matches_loop_reference(mode, cid, shape, kwargs, pads, dtype, simd):
    rng = np.random.default_rng(4)
    layer = (MaxPool2D if mode == "max" else AvgPool2D)(**kwargs)
    layer.build(shape[1:], dtype, rng)
    assert layer._pads == pads
    x = rng.standard_normal(shape).astype(dtype)
    y = layer.forward(x, training=True).copy()
    dy = rng.standard_normal(y.shape).astype(dtype)
    dx = layer.backward(dy)
    pool = layer._pool2
    y_ref, dx_ref = reference_pool(x, dy, pool, layer._stride2, pads, mode)
    tol = dict(rtol=1e-5, atol=1e-6) if dtype == np.float32 else dict(rtol=1e-12, atol=1e-13)
    assert y.shape == y_ref.shape
    np.testing.assert_allclose(y, y_ref, **tol)
    np.testing.assert_allclose(dx, dx_ref, **tol)


@pytest.mark.parametrize("mode", ["max", "avg"])
@pytest.mark.parametrize("pool,stride", [(2, 2), (3, 2), ((2, 3), (1, 2))],
                         ids=["2x2", "overlapping_3_stride2", "rect"])
def test_pool2d_matches_torch(mode, pool, stride):
    """"valid" pooling against PyTorch (NCHW, axes permuted); distinct values, so no ties."""
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    rng = np.random.default_rng(6)
    layer = (MaxPool2D if mode == "max" else AvgPool2D)(pool, strides=stride)
    layer.build((9, 8, 3), np.float64, rng)
    x = rng.permutation(2 * 9 * 8 * 3).reshape(2, 9, 8, 3) * 0.1
    y = layer.forward(x).copy()
    dy = rng.standard_normal(y.shape)
    dx = layer.backward(dy)
    xt = torch.tensor(x).permute(0, 3, 1, 2).requires_grad_(True)
    yt = (F.max_pool2d if mode == "max" else F.avg_pool2d)(xt, pool, stride)
    yt.backward(torch.tensor(dy).permute(0, 3, 1, 2))
    np.testing.assert_allclose(y, yt.permute(0, 2, 3, 1).detach().numpy(), rtol=1e-12)
    np.testing.assert_allclose(dx, xt.grad.permute(0, 2, 3, 1).numpy(), rtol=1e-12, atol=1e-15)


def test_max_ties_send_the_gradient_to_the_first_cell():
    x = np.zeros((1, 5, 5, 2))                   # every window is one big tie
    x[0, 4, 4, 1] = -1.0
    layer = MaxPool2D(3, strides=2)
    layer.build((5, 5, 2), np.float64, np.random.default_rng(0))
    layer.forward(x)
    dx = layer.backward(np.ones((1, 2, 2, 2)))
    expected = np.zeros_like(x)
    for oy in range(2):
        for ox in range(2):
            expected[0, 2 * oy, 2 * ox, :] += 1.0  # each window's top-left cell
    np.testing.assert_array_equal(dx, expected)
    _, dx_ref = reference_pool(x, np.ones((1, 2, 2, 2)), (3, 3), (2, 2), (0, 0, 0, 0), "max")
    np.testing.assert_array_equal(dx, dx_ref)


def test_max_argmax_positions():
    x = np.arange(16, dtype=np.float32).reshape(1, 4, 4, 1)
    y, argmax = cpu_backend.maxpool2d_forward(x, (2, 2), (2, 2))
    np.testing.assert_array_equal(y[0, :, :, 0], [[5, 7], [13, 15]])
    np.testing.assert_array_equal(argmax[0, :, :, 0], [[5, 7], [13, 15]])
    assert argmax.dtype == np.int32


def test_avg_same_padding_excludes_padded_cells():
    x = np.ones((1, 3, 3, 1))
    layer = AvgPool2D(2, padding="same")           # 3 -> 2, one padded row/column at the end
    layer.build((3, 3, 1), np.float64, np.random.default_rng(0))
    np.testing.assert_array_equal(layer.forward(x), np.ones((1, 2, 2, 1)))


@pytest.mark.parametrize("mode", ["max", "avg"])
def test_pool1d_is_pool2d_with_height_one(mode):
    rng = np.random.default_rng(9)
    layer = (MaxPool1D if mode == "max" else AvgPool1D)(3, strides=2, padding="same")
    layer.build((8, 3), np.float64, rng)
    assert layer.output_shape == (4, 3)
    x = rng.standard_normal((2, 8, 3))
    y = layer.forward(x).copy()
    dy = rng.standard_normal(y.shape)
    dx = layer.backward(dy)
    pads = (0, 0) + same_pads(8, 3, 2)
    y_ref, dx_ref = reference_pool(x[:, None], dy[:, None], (1, 3), (1, 2), pads, mode)
    np.testing.assert_allclose(y, y_ref[:, 0], rtol=1e-12)
    np.testing.assert_allclose(dx, dx_ref[:, 0], rtol=1e-12)


def test_global_avg_pool():
    rng = np.random.default_rng(1)
    layer = GlobalAvgPool2D()
    layer.build((3, 4, 2), np.float64, rng)
    x = rng.standard_normal((2, 3, 4, 2))
    np.testing.assert_allclose(layer.forward(x), x.mean(axis=(1, 2)))
    dx = layer.backward(np.ones((2, 2)))
    np.testing.assert_allclose(dx, np.full(x.shape, 1 / 12))
    assert check_layer_gradients(GlobalAvgPool2D(), (3, 4, 2)) < 1e-6


@pytest.mark.parametrize("make_layer", [
    lambda: AvgPool2D(3, strides=2, padding="same"),
    lambda: AvgPool2D((2, 3), strides=1),
    lambda: AvgPool1D(2, padding="same"),
    lambda: MaxPool2D(3, strides=2, padding="same"),
    lambda: MaxPool2D(2),
    lambda: MaxPool1D(3, strides=1),
], ids=["avg_same", "avg_rect_stride1", "avg1d", "max_same", "max_2", "max1d_overlap"])
def test_gradcheck(make_layer):
    layer = make_layer()
    shape = (7, 6, 2) if layer.rank == 2 else (7, 2)
    # Distinct values far apart compared with eps: no ties, no argmax flips.
    rng = np.random.default_rng(0)
    x = rng.permutation(2 * int(np.prod(shape))).reshape((2,) + shape) * 0.1
    assert check_layer_gradients(layer, shape, x=x) < 1e-6


@pytest.mark.parametrize("cls", [MaxPool2D, AvgPool2D])
def test_config_round_trip(cls):
    layer = cls((2, 3), strides=(1, 2), padding="same", name="p")
    clone = rp.layers.deserialize(layer.serialize())
    assert clone.get_config() == layer.get_config()
    assert cls(3).strides == (3, 3)


@pytest.mark.parametrize("kwargs,match", [
    (dict(pool_size=0), "pool_size"),
    (dict(pool_size=(2, -1)), "pool_size"),
    (dict(pool_size=2, strides=0), "strides"),
    (dict(pool_size=2, padding="full"), "padding"),
    (dict(pool_size=2, padding=1), "padding"),
])
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=f"MaxPool2D 'max_pool2d'.*{match}"):
        MaxPool2D(**kwargs)


def test_bad_shapes():
    with pytest.raises(ValueError, match=r"MaxPool2D 'max_pool2d' expects \(N, H, W, C\)"):
        rp.Sequential([MaxPool2D(2)], input_shape=(10, 3))
    with pytest.raises(ValueError, match="AvgPool2D 'a'.*larger"):
        AvgPool2D(5, name="a").build((4, 8, 1), np.float32, np.random.default_rng(0))
    with pytest.raises(ValueError, match="argmax"):
        cpu_backend.maxpool2d_backward(np.full((1, 2, 2, 1), 99, np.int32), np.ones((1, 2, 2, 1)),
                                       (2, 2), (2, 2), (0, 0, 0, 0), np.empty((1, 4, 4, 1)))


@pytest.mark.parametrize("shape", [(2, 6, 6, 17), (1, 5, 7, 6)])
def test_max_pool_ties_on_many_channels_go_to_the_first_cell(shape):
    # Values from {0, 1, 2}: most windows hold ties, on every channel.
    rng = np.random.default_rng(7)
    x = rng.integers(0, 3, shape).astype(np.float32)
    layer = MaxPool2D(pool_size=2, padding="same")
    layer.build(shape[1:], np.float32, rng)
    y = layer.forward(x, training=True).copy()
    dy = rng.standard_normal(y.shape).astype(np.float32)
    dx = layer.backward(dy)
    y_ref, dx_ref = reference_pool(x, dy, layer._pool2, layer._stride2, layer._pads, "max")
    np.testing.assert_array_equal(y, y_ref)
    np.testing.assert_allclose(dx, dx_ref, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("channels", [1, 2, 3, 5, 6, 8, 9])
@pytest.mark.parametrize("strides, padding", [((2, 2), "valid"), ((2, 2), "same"),
                                              ((1, 1), "valid"), ((2, 1), "same")])
@pytest.mark.parametrize("threads", [1, 2])
def test_max_pool_2x2_few_channels(channels, strides, padding, threads, simd):
    """Rows of whole 2x2 windows with at most 8 channels take a vector path
    (one masked vector per cell, full-width stores whose extra lanes later
    pixels overwrite): every channel count, stride and padding around it must
    match the reference, ties included, on 1 and 2 threads, and no value may
    land outside its own row (the 2-thread run would see a neighbour's row
    overwritten)."""
    rng = np.random.default_rng(channels)
    layer = MaxPool2D(pool_size=2, strides=strides, padding=padding)
    layer.build((7, 11, channels), np.float32, rng)
    # enough window comparisons (4 per output value) for the kernel to use 2 threads
    images = -(-40000 // (4 * int(np.prod(layer.output_shape))))
    x = rng.integers(0, 4, (images, 7, 11, channels)).astype(np.float32)     # many ties
    before = cpu_backend.get_num_threads()
    try:
        cpu_backend.set_num_threads(threads)
        y = layer.forward(x, training=True).copy()
        dy = rng.standard_normal(y.shape).astype(np.float32)
        dx = layer.backward(dy)
    finally:
        cpu_backend.set_num_threads(before)
    y_ref, dx_ref = reference_pool(x, dy, layer._pool2, layer._stride2, layer._pads, "max")
    np.testing.assert_array_equal(y, y_ref)
    np.testing.assert_allclose(dx, dx_ref, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("channels", [1, 6, 9, 16])
@pytest.mark.parametrize("pool,stride", [(2, 2), (3, 1), ((2, 3), (2, 1))])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_max_pool_nan_is_the_maximum(simd, channels, pool, stride, dtype):
    # A NaN in a window wins it (as in PyTorch, and as NumPy's argmax picks
    # it): a later cell that is NaN must not be skipped by "strictly greater".
    from retroprop.backend import numpy_ref
    x = np.random.default_rng(channels).random((2, 6, 8, channels)).astype(dtype)
    x[0, 1, 1, channels - 1] = np.nan      # the last cell of a 2x2 window, not its first
    x[1, 4, 5, 0] = np.nan
    pool = pool if isinstance(pool, tuple) else (pool, pool)
    stride = stride if isinstance(stride, tuple) else (stride, stride)
    out, argmax = cpu_backend.maxpool2d_forward(x, pool, stride)
    ref_out, ref_argmax = numpy_ref.maxpool2d_forward(x, pool, stride)
    np.testing.assert_array_equal(np.isnan(out), np.isnan(ref_out))
    assert np.isnan(out[0]).any() and np.isnan(out[1]).any()
    np.testing.assert_array_equal(out, ref_out)          # NaNs compare equal here
    np.testing.assert_array_equal(argmax, ref_argmax)
