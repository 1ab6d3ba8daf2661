"""Conv2D / Conv1D against a plain-loop NumPy reference written here, against
PyTorch when it is installed, and against finite differences."""
import numpy as np
import pytest

import retroprop as rp
from retroprop.backend import cpu as cpu_backend
from retroprop.gradcheck import check_layer_gradients
from retroprop.layers import Conv1D, Conv2D


# ---------------------------------------------------------------- reference

def reference_conv2d(x, w, b, stride, dilation, pads):
    """z[n, oy, ox, f] = b[f]
    + sum over ky, kx, c of xpad[n, oy*sh + ky*dh, ox*sw + kx*dw, c] * w[ky, kx, c, f]."""
    top, bottom, left, right = pads
    xpad = np.pad(x, ((0, 0), (top, bottom), (left, right), (0, 0)))
    n, hp, wp, c = xpad.shape
    kh, kw, _, f = w.shape
    (sh, sw), (dh, dw) = stride, dilation
    oh = (hp - (kh - 1) * dh - 1) // sh + 1
    ow = (wp - (kw - 1) * dw - 1) // sw + 1
    z = np.zeros((n, oh, ow, f))
    for i in range(n):
        for oy in range(oh):
            for ox in range(ow):
                acc = np.zeros(f) if b is None else b.astype(np.float64).copy()
                for ky in range(kh):
                    for kx in range(kw):
                        pixel = xpad[i, oy * sh + ky * dh, ox * sw + kx * dw, :]
                        acc += pixel.astype(np.float64) @ w[ky, kx].astype(np.float64)
                z[i, oy, ox] = acc
    return z


def reference_conv2d_grads(x, w, dz, stride, dilation, pads):
    """(dx, dw, db) of the convolution above for the upstream gradient dz (w.r.t. z)."""
    top, bottom, left, right = pads
    xpad = np.pad(x, ((0, 0), (top, bottom), (left, right), (0, 0))).astype(np.float64)
    dxpad = np.zeros_like(xpad)
    dw = np.zeros(w.shape)
    kh, kw = w.shape[:2]
    (sh, sw), (dh, dw_) = stride, dilation
    n, oh, ow, _ = dz.shape
    for i in range(n):
        for oy in range(oh):
            for ox in range(ow):
                g = dz[i, oy, ox]
                for ky in range(kh):
                    for kx in range(kw):
                        iy, ix = oy * sh + ky * dh, ox * sw + kx * dw_
                        dw[ky, kx] += np.outer(xpad[i, iy, ix], g)
                        dxpad[i, iy, ix] += w[ky, kx] @ g
    dx = dxpad[:, top:top + x.shape[1], left:left + x.shape[2], :]
    return dx, dw, dz.sum(axis=(0, 1, 2))


def activate(name, z):
    return {"linear": lambda v: v, "relu": lambda v: np.maximum(v, 0),
            "sigmoid": lambda v: 1 / (1 + np.exp(-v)), "tanh": np.tanh}[name](z)


def activation_grad_from_output(name, y):
    return {"linear": np.ones_like(y), "relu": (y > 0).astype(y.dtype),
            "sigmoid": y * (1 - y), "tanh": 1 - y * y}[name]


def same_pads(size, k, s, d=1):
    """TensorFlow "same": out = ceil(size / s), the odd padding cell after."""
    out = -(-size // s)
    total = max((out - 1) * s + (k - 1) * d + 1 - size, 0)
    return total // 2, total - total // 2


# (id, input shape (N, H, W, C), filters, layer kwargs, explicit pads, dtype, activation)
CONFIGS = [
    ("stride2", (2, 7, 7, 3), 4, dict(kernel_size=3, strides=2), (0, 0, 0, 0), np.float32, "relu"),
    ("same_even_kernel_stride2", (2, 8, 7, 2), 3, dict(kernel_size=4, strides=2, padding="same"),
     same_pads(8, 4, 2) + same_pads(7, 4, 2), np.float64, "tanh"),
    ("pointwise_1x1", (3, 5, 4, 6), 5, dict(kernel_size=1), (0, 0, 0, 0), np.float32, "linear"),
    ("1x1_stride2", (2, 5, 6, 3), 2, dict(kernel_size=1, strides=2), (0, 0, 0, 0), np.float64,
     "relu"),
    ("kernel_equals_input", (3, 5, 5, 2), 4, dict(kernel_size=5), (0, 0, 0, 0), np.float64,
     "sigmoid"),
    ("rectangular", (2, 9, 8, 3), 3, dict(kernel_size=(3, 2), strides=(2, 1)), (0, 0, 0, 0),
     np.float64, "relu"),
    ("rect_same_stride_2_3", (2, 7, 10, 2), 3,
     dict(kernel_size=(2, 4), strides=(2, 3), padding="same"),
     same_pads(7, 2, 2) + same_pads(10, 4, 3), np.float32, "tanh"),
    ("dilation2", (2, 9, 9, 2), 3, dict(kernel_size=3, dilation_rate=2), (0, 0, 0, 0),
     np.float64, "linear"),
    ("dilation2_same", (1, 8, 9, 2), 2, dict(kernel_size=3, dilation_rate=(2, 1), padding="same"),
     same_pads(8, 3, 1, 2) + same_pads(9, 3, 1, 1), np.float64, "sigmoid"),
    ("one_channel_16_filters", (2, 8, 8, 1), 16, dict(kernel_size=3, padding="same"),
     (1, 1, 1, 1), np.float32, "relu"),
    ("16_channels_1_filter", (2, 6, 6, 16), 1, dict(kernel_size=3), (0, 0, 0, 0), np.float32,
     "sigmoid"),
    ("batch1_explicit_padding", (1, 5, 6, 3), 2, dict(kernel_size=3, padding=(1, 2)),
     (1, 1, 2, 2), np.float64, "tanh"),
]


def _tolerance(dtype):
    return dict(rtol=2e-4, atol=2e-5) if dtype == np.float32 else dict(rtol=1e-10, atol=1e-11)


@pytest.mark.parametrize("cid,shape,filters,kwargs,pads,dtype,activation", CONFIGS,
                         ids=[c[0] for c in CONFIGS])
def test_conv2d_matches_loop_reference(cid, shape, filters, kwargs, pads, dtype, activation, simd):
    rng = np.random.default_rng(7)
    layer = Conv2D(filters, activation=activation, bias_initializer="glorot_uniform", **kwargs)
    layer.build(shape[1:], dtype, rng)
    x = rng.standard_normal(shape).astype(dtype)
    y = layer.forward(x, training=True).copy()
    w, b = layer.params["W"], layer.params["b"]
    stride, dilation = layer._stride2, layer._dilation2
    assert layer._pads == pads

    y_ref = activate(activation, reference_conv2d(x, w, b, stride, dilation, pads))
    assert y.shape == y_ref.shape == (shape[0],) + layer.output_shape
    np.testing.assert_allclose(y, y_ref, **_tolerance(dtype))

    dy = rng.standard_normal(y.shape).astype(dtype)
    dx = layer.backward(dy)
    dz = dy.astype(np.float64) * activation_grad_from_output(activation, y.astype(np.float64))
    dx_ref, dw_ref, db_ref = reference_conv2d_grads(x, w, dz, stride, dilation, pads)
    tol = _tolerance(dtype)
    np.testing.assert_allclose(dx, dx_ref, **tol)
    np.testing.assert_allclose(layer.grads["W"], dw_ref, rtol=tol["rtol"], atol=tol["atol"] * 10)
    np.testing.assert_allclose(layer.grads["b"], db_ref, rtol=tol["rtol"], atol=tol["atol"] * 10)


def test_conv2d_batch_split_into_chunks_gives_the_same_result(monkeypatch):
    """A workspace bound smaller than the batch's column matrix forces several
    im2col passes; dW must then be accumulated over them."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((5, 6, 6, 2))
    w = rng.standard_normal((3, 3, 2, 4))
    b = rng.standard_normal(4)
    geometry = dict(stride=(1, 1), dilation=(1, 1), padding=(1, 1, 1, 1))
    y_one = cpu_backend.conv2d_forward(x, w, b, "tanh", **geometry)
    dy = rng.standard_normal(y_one.shape)
    grads_one = [np.empty_like(w), np.empty_like(b), np.empty_like(x)]
    cpu_backend.conv2d_backward(x, w, y_one, dy, "tanh", *grads_one, **geometry)

    monkeypatch.setattr(cpu_backend, "COL_WORKSPACE_ELEMENTS", 2 * 36 * 18)  # two images a pass
    y_chunks = cpu_backend.conv2d_forward(x, w, b, "tanh", **geometry)
    grads_chunks = [np.empty_like(w), np.empty_like(b), np.empty_like(x)]
    cpu_backend.conv2d_backward(x, w, y_chunks, dy, "tanh", *grads_chunks, **geometry)
    np.testing.assert_allclose(y_chunks, y_one, rtol=1e-12, atol=1e-13)
    for got, want in zip(grads_chunks, grads_one):
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


def test_cpu_and_numpy_backends_agree():
    from retroprop.backend import numpy_ref
    rng = np.random.default_rng(5)
    x = rng.standard_normal((2, 7, 6, 3))
    w = rng.standard_normal((3, 2, 3, 4))
    geometry = dict(stride=(2, 1), dilation=(1, 2), padding=(1, 1, 0, 2))
    y_c = cpu_backend.conv2d_forward(x, w, None, "relu", **geometry)
    y_n = numpy_ref.conv2d_forward(x, w, None, "relu", **geometry)
    np.testing.assert_allclose(y_c, y_n, rtol=1e-12, atol=1e-12)
    dy = rng.standard_normal(y_c.shape)
    g_c = [np.empty_like(w), np.empty_like(x)]
    g_n = [np.empty_like(w), np.empty_like(x)]
    cpu_backend.conv2d_backward(x, w, y_c, dy, "relu", g_c[0], dx=g_c[1], **geometry)
    numpy_ref.conv2d_backward(x, w, y_n, dy, "relu", g_n[0], dx=g_n[1], **geometry)
    for a, b in zip(g_c, g_n):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)


def test_conv1d_is_conv2d_with_height_one():
    rng = np.random.default_rng(11)
    layer = Conv1D(4, 3, strides=2, padding="same", dilation_rate=1, activation="tanh")
    layer.build((9, 3), np.float64, rng)
    assert layer.params["W"].shape == (3, 3, 4)
    assert layer.output_shape == (5, 4)
    x = rng.standard_normal((2, 9, 3))
    y = layer.forward(x).copy()
    pads = (0, 0) + same_pads(9, 3, 2)
    w4 = layer.params["W"][None]
    y_ref = np.tanh(reference_conv2d(x[:, None], w4, layer.params["b"], (1, 2), (1, 1), pads))[:, 0]
    np.testing.assert_allclose(y, y_ref, rtol=1e-10, atol=1e-12)
    dy = rng.standard_normal(y.shape)
    dx = layer.backward(dy)
    dz = dy * (1 - y * y)
    dx_ref, dw_ref, db_ref = reference_conv2d_grads(x[:, None], w4, dz[:, None], (1, 2), (1, 1),
                                                    pads)
    np.testing.assert_allclose(dx, dx_ref[:, 0], rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(layer.grads["W"], dw_ref[0], rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(layer.grads["b"], db_ref, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("cid,shape,filters,kwargs,pads,dtype,activation", CONFIGS,
                         ids=[c[0] for c in CONFIGS])
def test_conv2d_matches_torch(cid, shape, filters, kwargs, pads, dtype, activation):
    """The same configurations against torch.nn.functional.conv2d (NCHW, so axes
    are permuted; the padding, asymmetric for "same" with even kernels or
    strides, is applied explicitly with F.pad as PyTorch has no such mode)."""
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    rng = np.random.default_rng(12)
    layer = Conv2D(filters, activation=activation, bias_initializer="glorot_uniform", **kwargs)
    layer.build(shape[1:], np.float64, rng)
    x = rng.standard_normal(shape)
    y = layer.forward(x, training=True).copy()
    top, bottom, left, right = pads
    xt = torch.tensor(x).permute(0, 3, 1, 2).contiguous().requires_grad_(True)
    wt = torch.tensor(layer.params["W"]).permute(3, 2, 0, 1).contiguous().requires_grad_(True)
    bt = torch.tensor(layer.params["b"]).requires_grad_(True)
    zt = F.conv2d(F.pad(xt, (left, right, top, bottom)), wt, bt,
                  stride=layer._stride2, dilation=layer._dilation2)
    yt = {"linear": lambda v: v, "relu": torch.relu, "sigmoid": torch.sigmoid,
          "tanh": torch.tanh}[activation](zt)
    np.testing.assert_allclose(y, yt.permute(0, 2, 3, 1).detach().numpy(), rtol=1e-10, atol=1e-12)
    dy = rng.standard_normal(y.shape)
    dx = layer.backward(dy)
    yt.backward(torch.tensor(dy).permute(0, 3, 1, 2))
    np.testing.assert_allclose(dx, xt.grad.permute(0, 2, 3, 1).numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(layer.grads["W"], wt.grad.permute(2, 3, 1, 0).numpy(),
                               rtol=1e-10, atol=1e-11)
    np.testing.assert_allclose(layer.grads["b"], bt.grad.numpy(), rtol=1e-10, atol=1e-11)


def test_conv1d_matches_torch():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(13)
    layer = Conv1D(4, 4, strides=2, padding="same", activation="relu")
    layer.build((11, 3), np.float64, rng)
    x = rng.standard_normal((2, 11, 3))
    y = layer.forward(x, training=True).copy()
    before, after = same_pads(11, 4, 2)
    xt = torch.tensor(x).permute(0, 2, 1).requires_grad_(True)
    wt = torch.tensor(layer.params["W"]).permute(2, 1, 0).requires_grad_(True)
    yt = torch.relu(torch.nn.functional.conv1d(torch.nn.functional.pad(xt, (before, after)), wt,
                                               torch.tensor(layer.params["b"]), stride=2))
    np.testing.assert_allclose(y, yt.permute(0, 2, 1).detach().numpy(), rtol=1e-10, atol=1e-12)
    dy = rng.standard_normal(y.shape)
    dx = layer.backward(dy)
    yt.backward(torch.tensor(dy).permute(0, 2, 1))
    np.testing.assert_allclose(dx, xt.grad.permute(0, 2, 1).numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(layer.grads["W"], wt.grad.permute(2, 1, 0).numpy(),
                               rtol=1e-10, atol=1e-11)


@pytest.mark.parametrize("make_layer,input_shape", [
    (lambda: Conv2D(3, (3, 2), strides=(2, 1), padding="same", activation="tanh",
                    bias_initializer="glorot_uniform"), (7, 6, 2)),
    (lambda: Conv2D(2, 3, dilation_rate=2, activation="sigmoid",
                    kernel_regularizer=rp.regularizers.L2(0.1)), (7, 7, 2)),
    (lambda: Conv2D(3, 2, activation="softmax"), (4, 5, 2)),
    (lambda: Conv2D(3, 1), (3, 4, 2)),
    (lambda: Conv1D(3, 3, padding="same", dilation_rate=2, activation="tanh"), (9, 2)),
    (lambda: Conv1D(2, 4, strides=3, padding=1), (10, 3)),
], ids=["conv2d_same_rect", "conv2d_dilated_l2", "conv2d_softmax", "conv2d_1x1",
        "conv1d_same_dilated", "conv1d_stride3_pad1"])
def test_gradcheck(make_layer, input_shape):
    assert check_layer_gradients(make_layer(), input_shape, batch_size=2) < 1e-6


def test_conv_model_gradcheck_through_softmax_loss():
    model = rp.Sequential([Conv2D(3, 3, padding="same", activation="relu"), rp.layers.Flatten(),
                           rp.layers.Dense(3, activation="softmax")],
                          input_shape=(5, 5, 2), dtype="float64", seed=0)
    rng = np.random.default_rng(0)
    assert rp.gradcheck(model, rng.standard_normal((3, 5, 5, 2)), np.array([0, 2, 1])) < 1e-6


def test_config_round_trip():
    layer = Conv2D(4, (3, 2), strides=(2, 1), padding="same", dilation_rate=(1, 2),
                   activation="relu", use_bias=False, name="c")
    clone = rp.layers.deserialize(layer.serialize())
    assert clone.get_config() == layer.get_config()
    clone1 = rp.layers.deserialize(Conv1D(2, 3, padding=(1,)).serialize())
    assert clone1.kernel_size == (3,) and clone1.padding == (1,)


# ---------------------------------------------------------------- bad input

@pytest.mark.parametrize("kwargs,match", [
    (dict(filters=0, kernel_size=3), "filters"),
    (dict(filters=-2, kernel_size=3), "filters"),
    (dict(filters=2.5, kernel_size=3), "filters"),
    (dict(filters=2, kernel_size=0), "kernel_size"),
    (dict(filters=2, kernel_size=(3, -1)), "kernel_size"),
    (dict(filters=2, kernel_size=(3, 3, 3)), "kernel_size"),
    (dict(filters=2, kernel_size=3, strides=0), "strides"),
    (dict(filters=2, kernel_size=3, dilation_rate=0), "dilation_rate"),
    (dict(filters=2, kernel_size=3, padding="full"), "padding"),
    (dict(filters=2, kernel_size=3, padding=-1), "padding"),
])
def test_bad_construction_arguments(kwargs, match):
    with pytest.raises(ValueError, match=f"Conv2D 'conv2d'.*{match}"):
        Conv2D(**kwargs)


def test_wrong_rank_names_the_layer():
    message = r"Conv2D 'conv2d' expects \(N, H, W, C\), got shape \(N, 784\)"
    with pytest.raises(ValueError, match=message):
        rp.Sequential([Conv2D(2, 3)], input_shape=(784,))
    with pytest.raises(ValueError, match=r"Conv1D 'conv1d' expects \(N, L, C\)"):
        rp.Sequential([Conv1D(2, 3)], input_shape=(5, 5, 1))


def test_kernel_larger_than_padded_input():
    with pytest.raises(ValueError, match="Conv2D 'big'.*larger than the padded input"):
        Conv2D(2, 5, name="big").build((4, 6, 1), np.float32, np.random.default_rng(0))
    with pytest.raises(ValueError, match="larger than the padded input"):
        Conv2D(2, 3, dilation_rate=3).build((6, 6, 1), np.float32, np.random.default_rng(0))
    # padding makes it fit
    layer = Conv2D(2, 5, padding=1)
    assert layer.build((4, 6, 1), np.float32, np.random.default_rng(0)) == (2, 4, 2)


def test_channel_mismatch():
    layer = Conv2D(2, 3, name="c1")
    layer.build((6, 6, 3), np.float32, np.random.default_rng(0))
    with pytest.raises(ValueError, match="c1"):
        layer.forward(np.zeros((2, 6, 6, 2), np.float32))
    with pytest.raises(ValueError, match="channels"):
        cpu_backend.conv2d_forward(np.zeros((1, 6, 6, 2)), np.zeros((3, 3, 3, 2)), None, "linear")
    with pytest.raises(ValueError):
        cpu_backend.conv2d_forward(np.zeros((1, 3, 3, 2)), np.zeros((4, 4, 2, 2)), None, "linear")
    with pytest.raises(ValueError, match="stride"):
        cpu_backend.conv2d_forward(np.zeros((1, 6, 6, 2)), np.zeros((3, 3, 2, 2)), None, "linear",
                                   stride=(0, 1))


def test_results_do_not_depend_on_the_thread_count():
    """dW is reduced in a fixed number of row blocks and col2im splits whole
    images, so 1 and 2 threads give bit-identical results."""
    rng = np.random.default_rng(8)
    x = rng.standard_normal((8, 20, 20, 3)).astype(np.float32)
    w = rng.standard_normal((3, 3, 3, 8)).astype(np.float32)
    b = rng.standard_normal(8).astype(np.float32)
    geometry = dict(stride=(1, 1), dilation=(1, 1), padding=(1, 1, 1, 1))
    before = cpu_backend.get_num_threads()
    results = []
    try:
        for threads in (1, 2):
            cpu_backend.set_num_threads(threads)
            y = cpu_backend.conv2d_forward(x, w, b, "relu", **geometry)
            dy = np.ascontiguousarray(y[::-1])
            grads = [np.empty_like(w), np.empty_like(b), np.empty_like(x)]
            cpu_backend.conv2d_backward(x, w, y, dy, "relu", *grads, **geometry)
            results.append([y] + grads)
    finally:
        cpu_backend.set_num_threads(before)
    for one, two in zip(*results):
        np.testing.assert_array_equal(one, two)


@pytest.mark.parametrize("col_elements", [None, 20 * 256 * 18],
                         ids=["one_chunk", "chunks_of_20_images"])
def test_blocked_path_matches_numpy_reference_and_ignores_thread_count(monkeypatch, col_elements):
    """Batches with many output lines take the fused per-block path (im2col and
    GEMMs per block of lines, per-block dW/db partial sums). It must agree with
    the NumPy backend, also when the batch is split into chunks (the last one,
    of 5 images, too small to split into blocks), and give bit-identical
    results with 1 and 2 threads, and with 5 on a 2-core machine, where blocks
    go to whichever thread is running."""
    from retroprop.backend import numpy_ref
    if col_elements is not None:
        monkeypatch.setattr(cpu_backend, "COL_WORKSPACE_ELEMENTS", col_elements)
    rng = np.random.default_rng(21)
    x = rng.standard_normal((45, 16, 16, 2))
    w = rng.standard_normal((3, 3, 2, 5))
    b = rng.standard_normal(5)
    geometry = dict(stride=(1, 1), dilation=(1, 1), padding=(1, 1, 1, 1))
    y_ref = numpy_ref.conv2d_forward(x, w, b, "tanh", **geometry)
    dy = rng.standard_normal(y_ref.shape)
    ref = [np.empty_like(w), np.empty_like(b), np.empty_like(x)]
    numpy_ref.conv2d_backward(x, w, y_ref, dy, "tanh", *ref, **geometry)
    before = cpu_backend.get_num_threads()
    results = []
    try:
        for threads in (1, 2, 5):
            cpu_backend.set_num_threads(threads)
            y = cpu_backend.conv2d_forward(x, w, b, "tanh", **geometry)
            grads = [np.empty_like(w), np.empty_like(b), np.empty_like(x)]
            cpu_backend.conv2d_backward(x, w, y, dy, "tanh", *grads, **geometry)
            results.append([y] + grads)
    finally:
        cpu_backend.set_num_threads(before)
    for got, want in zip(results[0], [y_ref] + ref):
        np.testing.assert_allclose(got, want, rtol=1e-11, atol=1e-11)
    for other in results[1:]:
        for one, two in zip(results[0], other):
            np.testing.assert_array_equal(one, two)


def _check_across_thread_counts(x, w, b, dy, activation, geometry, expected, tol, with_dx):
    """The C backend's forward and backward (y, dw, db and dx if with_dx) on 1
    and 2 threads, and 5 (more threads than cores, so work goes to whichever
    thread runs): each within tol of expected, and all runs identical."""
    before = cpu_backend.get_num_threads()
    results = []
    try:
        for threads in (1, 2, 5):
            cpu_backend.set_num_threads(threads)
            y = cpu_backend.conv2d_forward(x, w, b, activation, **geometry)
            grads = [np.full_like(w, np.nan), np.full_like(b, np.nan)]
            dx = np.full_like(x, np.nan) if with_dx else None
            cpu_backend.conv2d_backward(x, w, y, dy, activation, *grads, dx=dx, **geometry)
            results.append([y] + grads + ([dx] if with_dx else []))
    finally:
        cpu_backend.set_num_threads(before)
    for got, want in zip(results[0], expected):
        scale = max(1.0, float(np.abs(want).max()))
        np.testing.assert_allclose(got, want, rtol=tol, atol=tol * scale)
    for other in results[1:]:
        for one, two in zip(results[0], other):
            np.testing.assert_array_equal(one, two)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("channels, kernel, filters, stride, padding, activation", [
    (1, (5, 5), 6, (1, 1), (2, 2, 2, 2), "relu"),      # LeNet conv1: per-line row buffers
    (1, (3, 4), 3, (2, 1), (1, 0, 2, 1), "tanh"),      # odd kernel, row stride 2
    (1, (3, 3), 8, (1, 2), (1, 1, 1, 1), "linear"),    # column stride 2: transposed columns
    (3, (3, 3), 5, (1, 1), (0, 0, 0, 0), "sigmoid"),   # several channels
    (6, (5, 5), 16, (1, 1), (0, 0, 0, 0), "relu"),     # LeNet conv2: packed-A forward
    (3, (3, 2), 32, (2, 1), (1, 1, 0, 1), "tanh"),     # packed, 2 column panels, padding
    (2, (3, 3), 16, (1, 1), (1, 1, 1, 1), "elu"),      # not fused in the microkernel
    # no column padding: the forward reads six pixels of a line in place
    (6, (5, 5), 16, (1, 1), (2, 2, 0, 0), "relu"),     # rows padded: edge lines packed
    (4, (3, 3), 32, (1, 2), (0, 0, 0, 0), "sigmoid"),  # column stride 2, two panels
    (3, (3, 3), 16, (1, 4), (0, 0, 0, 0), "relu"),     # exactly six pixels a line
    (3, (3, 3), 16, (1, 5), (0, 0, 0, 0), "linear"),   # five pixels a line: packed
])
def test_direct_and_packed_paths_match_numpy_reference(dtype, channels, kernel, filters,
                                                       stride, padding, activation, simd):
    """Convolutions with at most 8 filters and a short patch skip the GEMM
    (forward, and backward when dx is not needed: a first layer); float32
    ones with a multiple of 16 filters gather their columns straight into the
    microkernel's packed layout. They must agree with the NumPy backend and
    not depend on the thread count."""
    from retroprop.backend import numpy_ref
    rng = np.random.default_rng(5)
    x = rng.standard_normal((37, 19, 23, channels)).astype(dtype)
    w = rng.standard_normal(kernel + (channels, filters)).astype(dtype)
    b = rng.standard_normal(filters).astype(dtype)
    geometry = dict(stride=stride, dilation=(1, 1), padding=padding)
    y_ref = numpy_ref.conv2d_forward(x, w, b, activation, **geometry)
    dy = rng.standard_normal(y_ref.shape).astype(dtype)
    ref = [np.empty_like(w), np.empty_like(b)]
    numpy_ref.conv2d_backward(x, w, y_ref, dy, activation, *ref, dx=None, **geometry)
    _check_across_thread_counts(x, w, b, dy, activation, geometry, [y_ref] + ref,
                                  tol=2e-4 if dtype == np.float32 else 1e-10, with_dx=False)


@pytest.mark.parametrize("channels, kernel, filters, stride, padding, activation", [
    (5, (3, 3), 16, (2, 2), (1, 1, 1, 1), "tanh"),
    (32, (3, 3), 16, (1, 1), (0, 0, 0, 0), "tanh"),
    (3, (3, 3), 10, (1, 1), (1, 1, 1, 1), "relu"),
])
def test_blocked_backward_with_dx_in_float64_matches_numpy_reference(channels, kernel, filters,
                                                                     stride, padding,
                                                                     activation, simd):
    """A float64 batch large enough for the blocked backward to give each
    thread whole images (it then scatters each block's column gradient into
    dx from its thread's own space): the column matrix must be built in that
    space too. It was built at the block's place in the chunk's matrix, so
    dW came out wrong (and dx, on two threads) in float64, and in float32
    wherever the AVX2 gathered dW was not taken (the portable path)."""
    from retroprop.backend import numpy_ref
    rng = np.random.default_rng(channels * filters)
    x = rng.standard_normal((48, 24, 13, channels))
    w = rng.standard_normal(kernel + (channels, filters)) / 4
    b = rng.standard_normal(filters)
    geometry = dict(stride=stride, dilation=(1, 1), padding=padding)
    y_ref = numpy_ref.conv2d_forward(x, w, b, activation, **geometry)
    dy = rng.standard_normal(y_ref.shape)
    ref = [np.empty_like(w), np.empty_like(b), np.empty_like(x)]
    numpy_ref.conv2d_backward(x, w, y_ref, dy, activation, ref[0], ref[1], dx=ref[2], **geometry)
    _check_across_thread_counts(x, w, b, dy, activation, geometry, [y_ref] + ref, tol=1e-10,
                                  with_dx=True)


@pytest.mark.parametrize("kernel, filters, dilation, padding", [
    ((4, 1), 3, (2, 1), (0, 2, 0, 2)),
    ((2, 2), 8, (1, 1), (1, 0, 1, 0)),
])
def test_dx_as_a_convolution_of_dz_for_few_filters(kernel, filters, dilation, padding, simd):
    """16 input channels, at most 8 filters and a patch of at most 64: dW
    alone would take the direct kernels, which leave dz transposed or not
    written at all, while dx (16k channels, stride 1) is computed afterwards
    as a convolution of dz. dz must then be kept in its natural layout: dx
    was wrong by ~3 on the AVX2 path."""
    from retroprop.backend import numpy_ref
    rng = np.random.default_rng(filters)
    x = rng.standard_normal((64, 21, 13, 16)).astype(np.float32)
    w = (rng.standard_normal(kernel + (16, filters)) / 4).astype(np.float32)
    b = rng.standard_normal(filters).astype(np.float32)
    geometry = dict(stride=(1, 1), dilation=dilation, padding=padding)
    y_ref = numpy_ref.conv2d_forward(x, w, b, "elu", **geometry)
    dy = rng.standard_normal(y_ref.shape).astype(np.float32)
    ref = [np.empty_like(w), np.empty_like(b), np.empty_like(x)]
    numpy_ref.conv2d_backward(x, w, y_ref, dy, "elu", ref[0], ref[1], dx=ref[2], **geometry)
    _check_across_thread_counts(x, w, b, dy, "elu", geometry, [y_ref] + ref, tol=3e-4,
                                  with_dx=True)


@pytest.mark.parametrize("width", [1, 8, 9, 16, 17, 24, 25, 33])
@pytest.mark.parametrize("filters, activation", [(1, "relu"), (4, "tanh"), (6, "relu"),
                                                 (7, "linear")])
def test_single_channel_line_kernel_every_width(width, filters, activation, simd):
    """The single-channel forward of the blocked path runs 16 pixels at a time
    for up to 6 filters while more than 8 pixels of a line remain, then 8 at a
    time; its dW runs over 8 pixel lanes (the last group zero-padded), two
    taps a pass for up to 6 filters. Every width around those steps must
    match the NumPy backend, filters 1 to 7."""
    from retroprop.backend import numpy_ref
    rng = np.random.default_rng(width * 10 + filters)
    # enough output lines for the blocked path (8 blocks of ~512 pixels)
    images = 8 * -(-512 // width) // 6 + 2
    x = rng.standard_normal((images, 6, width, 1)).astype(np.float32)
    w = rng.standard_normal((3, 3, 1, filters)).astype(np.float32)
    b = rng.standard_normal(filters).astype(np.float32)
    geometry = dict(stride=(1, 1), dilation=(1, 1), padding=(1, 1, 1, 1))
    want = numpy_ref.conv2d_forward(x, w, b, activation, **geometry)
    got = cpu_backend.conv2d_forward(x, w, b, activation, **geometry)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    # and its dW / db (a first layer: no dx), summed over pixel lanes
    dy = rng.standard_normal(want.shape).astype(np.float32)
    want_grads = [np.empty_like(w), np.empty_like(b)]
    numpy_ref.conv2d_backward(x, w, want, dy, activation, *want_grads, dx=None, **geometry)
    got_grads = [np.empty_like(w), np.empty_like(b)]
    cpu_backend.conv2d_backward(x, w, got, dy, activation, *got_grads, dx=None, **geometry)
    for g, r in zip(got_grads, want_grads):
        np.testing.assert_allclose(g, r, rtol=1e-4, atol=1e-4 * max(1.0, float(np.abs(r).max())))


def test_zero_sized_input_is_refused():
    with pytest.raises(ValueError, match="Conv2D 'conv2d'.*positive"):
        Conv2D(2, 1).build((0, 5, 1), np.float32, np.random.default_rng(0))
    with pytest.raises(ValueError, match="Conv1D 'conv1d'.*positive"):
        Conv1D(2, 1).build((5, 0), np.float32, np.random.default_rng(0))


# ---------------------------------------------------------------- shared workspace

@pytest.mark.skipif(rp.backend.get_backend().__name__.endswith("numpy_ref"),
                    reason="the NumPy reference backend needs no im2col workspace")
def test_model_shares_one_workspace_sized_once():
    """Every layer of a model uses the model's one workspace; it is sized before
    the first layer runs to the largest need of any layer for the batch in use,
    and training (with a smaller last batch) allocates it once."""
    model = rp.Sequential([Conv2D(4, 3, padding="same", activation="relu"),
                           rp.layers.MaxPool2D(2),
                           Conv2D(8, 3, activation="relu"),
                           rp.layers.Flatten(),
                           rp.layers.Dense(3, activation="softmax")],
                          input_shape=(10, 10, 2), seed=0)
    assert all(layer.workspace is model.workspace for layer in model.layers)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((70, 10, 10, 2)).astype(np.float32)
    y = rng.integers(0, 3, 70)
    trainer = rp.Trainer(model, "categorical_crossentropy", rp.optim.SGD(lr=0.01), metrics=[])
    trainer.fit(x, y, epochs=2, batch_size=16, verbose=0)      # batches of 16 and a last of 6
    needs = [layer.workspace_size(16) for layer in model.layers]
    assert needs[0] > 0 and needs[2] > 0 and needs[1] == needs[3] == needs[4] == 0
    assert model.workspace.size == max(needs)
    assert model.workspace.allocations == 1
    # A standalone layer gets a private workspace.
    layer = Conv2D(2, 3)
    layer.build((5, 5, 1), np.float32, rng)
    layer.forward(np.zeros((2, 5, 5, 1), np.float32))
    assert layer.workspace is not None and layer.workspace is not model.workspace


def test_backend_refuses_a_workspace_too_small():
    x = np.zeros((2, 6, 6, 2))
    w = np.zeros((3, 3, 2, 4))
    need = cpu_backend.conv2d_workspace_size(x.shape, w.shape, backward=False)
    assert need == 2 * 16 * 18
    assert cpu_backend.conv2d_workspace_size(x.shape, w.shape) == need + 2 * 16 * 4
    assert cpu_backend.conv2d_workspace_size(x.shape, (1, 1, 2, 4), backward=False) == 0
    with pytest.raises(ValueError, match="workspace"):
        cpu_backend.conv2d_forward(x, w, None, "linear", workspace=np.empty(need - 1))
    with pytest.raises(TypeError, match="workspace"):
        cpu_backend.conv2d_forward(x, w, None, "linear", workspace=np.empty(need, np.float32))


@pytest.mark.parametrize("channels, kernel, filters, stride, dilation, padding, activation", [
    (16, (3, 3), 32, (1, 1), (1, 1), (1, 1, 1, 1), "relu"),    # "same" 3x3: the usual layer
    (3, (3, 3), 16, (1, 1), (1, 1), (0, 1, 0, 1), "linear"),   # bottom/right padding only
    (5, (3, 3), 16, (2, 2), (1, 1), (1, 1, 1, 1), "tanh"),     # stride 2
    (4, (3, 3), 16, (1, 1), (2, 2), (2, 2, 2, 2), "sigmoid"),  # dilated
    (6, (5, 5), 16, (1, 1), (1, 1), (2, 2, 2, 2), "relu"),     # 5x5, two rows of padding
    (28, (3, 3), 16, (1, 1), (1, 1), (1, 0, 2, 1), "relu"),    # patch 252, uneven padding
    (2, (3, 3), 16, (1, 1), (1, 1), (1, 1, 1, 1), "elu"),      # activation not in the kernel
    # 16k input channels at stride 1: dx is the convolution of dz with W turned
    (16, (5, 5), 16, (1, 1), (1, 1), (2, 2, 2, 2), "relu"),    # its patch: 25 x 16 = 400
    (32, (3, 3), 16, (1, 1), (1, 1), (0, 0, 0, 0), "tanh"),    # valid: dz padded by 2
    (16, (3, 2), 32, (1, 1), (1, 2), (2, 0, 1, 0), "linear"),  # dilated, uneven padding
    (16, (3, 3), 16, (2, 2), (1, 1), (1, 1, 1, 1), "relu"),    # stride 2: the GEMM + col2im
    # dW partials of 64 blocks would pass the bound; those of the 32 used do not
    (32, (3, 3), 64, (1, 1), (1, 1), (1, 1, 1, 1), "relu"),
    (64, (3, 3), 32, (1, 1), (1, 1), (1, 1, 1, 1), "relu"),    # patch 576 (> 512)
])
@pytest.mark.parametrize("small_chunks", [False, True])
def test_padded_copy_path_matches_numpy_reference(monkeypatch, channels, kernel, filters,
                                                  stride, dilation, padding, activation,
                                                  small_chunks, simd):
    """float32 convolutions of the packed path with zero padding run on a
    copy of each chunk of images with the padding written out (forward and
    dW read it in place); with 16k input channels and stride 1, dx is a
    convolution of dz on that path. Forward, dW, db and dx must agree with the NumPy
    backend, with one chunk or several (a copy per chunk, the buffer reused
    with stale contents), and not depend on the thread count."""
    from retroprop.backend import numpy_ref
    rng = np.random.default_rng(channels + filters)
    # enough output lines for the blocked loops (>= 8 blocks of ~512 pixels)
    x = rng.standard_normal((48, 24, 13, channels)).astype(np.float32)
    w = (rng.standard_normal(kernel + (channels, filters)) / 4).astype(np.float32)
    b = rng.standard_normal(filters).astype(np.float32)
    geometry = dict(stride=stride, dilation=dilation, padding=padding)
    y_ref = numpy_ref.conv2d_forward(x, w, b, activation, **geometry)
    dy = rng.standard_normal(y_ref.shape).astype(np.float32)
    ref = [np.empty_like(w), np.empty_like(b), np.empty_like(x)]
    numpy_ref.conv2d_backward(x, w, y_ref, dy, activation, ref[0], ref[1], dx=ref[2], **geometry)
    if small_chunks:
        # room in the column workspace for 20 images: chunks of 20, 20 and 8
        oh, ow = y_ref.shape[1:3]
        monkeypatch.setattr(cpu_backend, "COL_WORKSPACE_ELEMENTS",
                            20 * oh * ow * kernel[0] * kernel[1] * channels)
    # the implicit GEMM path itself (its 3x3 stride-1 layers would take Winograd)
    previous = cpu_backend.conv2d_force_algorithm("implicit")
    try:
        _check_across_thread_counts(x, w, b, dy, activation, geometry, [y_ref] + ref, tol=2e-4,
                                    with_dx=True)
    finally:
        cpu_backend.conv2d_force_algorithm(previous)


def _random_geometries(count, seed):
    """Geometries drawn to reach every path: channel and filter counts around
    the direct (<= 8 filters), packed (16k filters) and 16k-channel cases,
    kernels 1..5, strides and dilations 1..2, uneven padding, batches large
    enough for the blocked loops."""
    rng = np.random.default_rng(seed)
    cases = []
    while len(cases) < count:
        kh, kw = int(rng.integers(1, 6)), int(rng.integers(1, 6))
        dh, dw = int(rng.choice([1, 1, 2])), int(rng.choice([1, 1, 2]))
        case = dict(n=int(rng.choice([1, 7, 32, 64])), h=int(rng.integers(kh * dh, 22)),
                    w=int(rng.integers(kw * dw, 22)), c=int(rng.choice([1, 3, 6, 16, 17, 32])),
                    kernel=(kh, kw), filters=int(rng.choice([1, 3, 6, 8, 10, 16, 32])),
                    stride=(int(rng.integers(1, 3)), int(rng.integers(1, 3))), dilation=(dh, dw),
                    padding=tuple(int(p) for p in rng.integers(0, 3, 4)),
                    activation=str(rng.choice(["relu", "linear", "tanh", "elu"])),
                    with_dx=bool(rng.integers(0, 2)),
                    dtype=np.float32 if rng.integers(0, 3) else np.float64)
        if (case["h"] + case["padding"][0] + case["padding"][1] - (kh - 1) * dh - 1 >= 0
                and case["w"] + case["padding"][2] + case["padding"][3] - (kw - 1) * dw - 1 >= 0):
            cases.append(case)
    return cases


@pytest.mark.parametrize("case", _random_geometries(48, seed=2026),
                         ids=lambda case: "n{n}-{h}x{w}x{c}-{filters}@{kernel}-s{stride}-d{dilation}-p{padding}"
                                          "-{activation}-{dtype.__name__}".format(**case))
def test_random_geometries_match_numpy_reference(case, simd):
    """Forward, dW, db and (when asked) dx of random geometries against the
    NumPy backend, on 1 and 2 threads. The same comparison run over a few
    thousand geometries found the two backward bugs tested above."""
    from retroprop.backend import numpy_ref
    rng = np.random.default_rng(case["n"] * 1000 + case["filters"])
    dtype, kh, kw = case["dtype"], *case["kernel"]
    x = rng.standard_normal((case["n"], case["h"], case["w"], case["c"])).astype(dtype)
    w = (rng.standard_normal((kh, kw, case["c"], case["filters"]))
         / np.sqrt(kh * kw * case["c"])).astype(dtype)
    b = rng.standard_normal(case["filters"]).astype(dtype)
    geometry = dict(stride=case["stride"], dilation=case["dilation"], padding=case["padding"])
    y_ref = numpy_ref.conv2d_forward(x, w, b, case["activation"], **geometry)
    dy = rng.standard_normal(y_ref.shape).astype(dtype)
    ref = [np.empty_like(w), np.empty_like(b)] + ([np.empty_like(x)] if case["with_dx"] else [])
    numpy_ref.conv2d_backward(x, w, y_ref, dy, case["activation"], ref[0], ref[1],
                              dx=ref[2] if case["with_dx"] else None, **geometry)
    # The backward gets the reference's y: relu's mask must not flip on an
    # output that is ~1e-7 on one side of zero and 0 on the other.
    tol = 3e-4 if dtype == np.float32 else 1e-9
    before = cpu_backend.get_num_threads()
    results = []
    try:
        for threads in (1, 2):
            cpu_backend.set_num_threads(threads)
            y = cpu_backend.conv2d_forward(x, w, b, case["activation"], **geometry)
            grads = [np.full_like(w, np.nan), np.full_like(b, np.nan)]
            dx = np.full_like(x, np.nan) if case["with_dx"] else None
            cpu_backend.conv2d_backward(x, w, y_ref, dy, case["activation"], *grads, dx=dx,
                                        **geometry)
            results.append([y] + grads + ([dx] if case["with_dx"] else []))
    finally:
        cpu_backend.set_num_threads(before)
    for got, want in zip(results[0], [y_ref] + ref):
        scale = max(1.0, float(np.abs(want).max()))
        np.testing.assert_allclose(got, want, rtol=tol, atol=tol * scale)
    for one, two in zip(*results):
        np.testing.assert_array_equal(one, two)
