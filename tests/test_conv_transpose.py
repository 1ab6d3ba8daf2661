"""Conv2DTranspose and the backend's conv2d_backward_data: gradients, a direct
NumPy scatter reference, PyTorch's conv_transpose2d, Keras' output sizes,
both backends, awkward shapes, errors, config, summary."""
import numpy as np
import pytest

import retroprop as rp
from retroprop.backend import cpu
from retroprop.backend import numpy_ref as ref
from retroprop.gradcheck import check_layer_gradients
from retroprop.layers import Conv2D, Conv2DTranspose, Dense, Flatten


def scatter_reference(x, w, stride, crop, out_hw, dilation=(1, 1)):
    """Transposed convolution by its definition: every input pixel adds
    x[n, i, j, :] @ W[ky, kx].T at output (i*s + ky*d - crop_top, j*s + kx*d - crop_left)."""
    n, h, wd, _ = x.shape
    kh, kw, f, _ = w.shape
    out = np.zeros((n, out_hw[0], out_hw[1], f))
    for i in range(h):
        for j in range(wd):
            for ky in range(kh):
                for kx in range(kw):
                    oy = i * stride[0] + ky * dilation[0] - crop[0]
                    ox = j * stride[1] + kx * dilation[1] - crop[1]
                    if 0 <= oy < out_hw[0] and 0 <= ox < out_hw[1]:
                        out[:, oy, ox, :] += x[:, i, j, :] @ w[ky, kx].T
    return out


def built(layer, shape, dtype="float64", seed=0):
    layer.build(shape, dtype, np.random.default_rng(seed))
    return layer


# (input hw, kernel, strides, padding, output_padding, dilation)
CASES = [
    ((3, 4), (3, 3), (2, 2), "valid", None, (1, 1)),
    ((3, 4), (3, 3), (2, 2), "same", None, (1, 1)),
    ((5, 2), (2, 3), (1, 2), "valid", None, (1, 1)),
    ((4, 3), (1, 1), (3, 3), "valid", None, (1, 1)),      # kernel < stride: Keras keeps h*s
    ((4, 3), (2, 2), (3, 3), "same", None, (1, 1)),
    ((2, 3), (3, 2), (2, 2), (1, 0), (1, 1), (1, 1)),     # PyTorch-style padding + output_padding
    ((3, 3), (3, 3), (1, 1), "valid", None, (2, 2)),      # dilated
    ((1, 1), (1, 1), (1, 1), "valid", None, (1, 1)),      # pointwise: no im2col
    ((7, 5), (5, 5), (1, 1), "same", None, (1, 1)),
]
IDS = [f"{c[0]}-k{c[1]}-s{c[2]}-{c[3]}-op{c[4]}-d{c[5]}" for c in CASES]


@pytest.mark.parametrize("hw,k,s,padding,op,d", CASES, ids=IDS)
def test_gradients(hw, k, s, padding, op, d):
    layer = Conv2DTranspose(3, k, strides=s, padding=padding, output_padding=op,
                            dilation_rate=d, activation="tanh", use_bias=True)
    assert check_layer_gradients(layer, hw + (2,), batch_size=2) < 1e-7


@pytest.mark.parametrize("hw,k,s,padding,op,d", CASES, ids=IDS)
def test_forward_against_scatter_reference(hw, k, s, padding, op, d):
    layer = built(Conv2DTranspose(4, k, strides=s, padding=padding, output_padding=op,
                                  dilation_rate=d, bias_initializer="ones"), hw + (3,))
    x = np.random.default_rng(1).standard_normal((2,) + hw + (3,))
    y = layer.forward(x)
    crop = (layer._conv_pads[0], layer._conv_pads[2])
    expected = scatter_reference(x, layer.params["W"], s, crop, y.shape[1:3], d) + 1.0
    np.testing.assert_allclose(y, expected, rtol=1e-12, atol=1e-12)


def test_keras_output_sizes():
    # deconv_output_length: valid -> h*s + max(k - s, 0); same -> h*s.
    for h, k, s in [(3, 3, 2), (4, 1, 3), (5, 4, 2), (1, 5, 1), (6, 2, 2)]:
        valid = built(Conv2DTranspose(1, k, strides=s), (h, h, 1))
        same = built(Conv2DTranspose(1, k, strides=s, padding="same"), (h, h, 1))
        assert valid.output_shape == (h * s + max(k - s, 0),) * 2 + (1,)
        assert same.output_shape == (h * s, h * s, 1)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("hw,k,s,padding,op,d", [c for c in CASES if not isinstance(c[3], str)
                                                or c[3] == "valid"])
def test_against_torch(dtype, hw, k, s, padding, op, d):
    torch = pytest.importorskip("torch")
    layer = built(Conv2DTranspose(5, k, strides=s, padding=padding, output_padding=op,
                                  dilation_rate=d, activation="relu"), hw + (3,), dtype)
    x = np.random.default_rng(2).standard_normal((3,) + hw + (3,)).astype(dtype)
    y = layer.forward(x)
    dy = np.random.default_rng(3).standard_normal(y.shape).astype(dtype)
    dx = layer.backward(dy)
    tx = torch.tensor(x.transpose(0, 3, 1, 2), requires_grad=True)
    tw = torch.tensor(layer.params["W"].transpose(3, 2, 0, 1).copy(), requires_grad=True)
    tb = torch.tensor(layer.params["b"], requires_grad=True)
    # PyTorch's size rule (h - 1) s - 2p + dk + output_padding, with "valid" as p = 0
    # and Keras' extra rows (kernel < stride) as torch's output_padding.
    pad = (0, 0) if padding == "valid" else padding
    dk = [(k[i] - 1) * d[i] + 1 for i in range(2)]
    op_t = [y.shape[1 + i] - ((hw[i] - 1) * s[i] + dk[i] - 2 * pad[i]) for i in range(2)]
    ty = torch.relu(torch.nn.functional.conv_transpose2d(
        tx, tw, tb, stride=s, padding=pad, output_padding=op_t, dilation=d))
    ty.backward(torch.tensor(dy.transpose(0, 3, 1, 2)))
    tol = dict(rtol=1e-4, atol=1e-4) if dtype == "float32" else dict(rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(y, ty.detach().numpy().transpose(0, 2, 3, 1), **tol)
    np.testing.assert_allclose(dx, tx.grad.numpy().transpose(0, 2, 3, 1), **tol)
    np.testing.assert_allclose(layer.grads["W"], tw.grad.numpy().transpose(2, 3, 1, 0), **tol)
    np.testing.assert_allclose(layer.grads["b"], tb.grad.numpy(), **tol)


def test_is_the_adjoint_of_conv2d():
    # <conv(a, W), b> == <a, conv_transpose(b, W)> for the same kernel and geometry.
    conv = built(Conv2D(3, 3, strides=2, padding=1, use_bias=False), (7, 6, 2))
    deconv = built(Conv2DTranspose(2, 3, strides=2, padding=1, use_bias=False,
                                   output_padding=(0, 1)), (4, 3, 3))
    deconv.params["W"][...] = conv.params["W"]
    rng = np.random.default_rng(4)
    a = rng.standard_normal((2, 7, 6, 2))
    b = rng.standard_normal((2, 4, 3, 3))
    assert deconv.output_shape == (7, 6, 2)
    assert np.sum(conv.forward(a) * b) == pytest.approx(np.sum(a * deconv.forward(b)), rel=1e-12)


@pytest.mark.parametrize("n,c,f", [(1, 1, 1), (3, 5, 7), (2, 17, 13)])
def test_backend_backward_data_matches_reference(n, c, f):
    rng = np.random.default_rng(5)
    w = rng.standard_normal((3, 2, c, f))
    x_shape = (n, 9, 7, c)
    geom = dict(stride=(2, 3), dilation=(1, 2), padding=(1, 0, 2, 1))
    oh, ow = cpu.conv2d_output_hw(9, 7, (3, 2), **geom)
    dy = rng.standard_normal((n, oh, ow, f))
    got = cpu.conv2d_backward_data(dy, w, x_shape, **geom)
    want = ref.conv2d_backward_data(dy, w, x_shape, **geom)
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)
    # The same as conv2d_backward's dx.
    dx = np.empty(x_shape)
    cpu.conv2d_backward(np.zeros(x_shape), w, dy, dy, "linear", np.empty(w.shape), dx=dx, **geom)
    np.testing.assert_allclose(got, dx, rtol=1e-12, atol=1e-12)
    # float32 and a non-contiguous dy
    dy32 = np.asfortranarray(dy.astype(np.float32))
    np.testing.assert_allclose(cpu.conv2d_backward_data(dy32, w.astype(np.float32), x_shape,
                                                        **geom), want, rtol=1e-4, atol=1e-4)


def test_backend_backward_data_small_workspace_chunks(monkeypatch):
    # A column buffer of two images: the batch of 5 goes in chunks of 2, 2, 1.
    monkeypatch.setattr(cpu, "COL_WORKSPACE_ELEMENTS", 2 * 6 * 6 * 3 * 3 * 4)
    rng = np.random.default_rng(6)
    w = rng.standard_normal((3, 3, 4, 5))
    x_shape = (5, 6, 6, 4)
    dy = rng.standard_normal((5, 6, 6, 5))
    size = cpu.conv2d_workspace_size(x_shape, w.shape, padding=(1, 1, 1, 1), backward=False)
    assert size == 2 * 6 * 6 * 3 * 3 * 4
    got = cpu.conv2d_backward_data(dy, w, x_shape, padding=(1, 1, 1, 1),
                                   workspace=np.full(size + 7, np.nan))
    np.testing.assert_allclose(got, ref.conv2d_backward_data(dy, w, x_shape, padding=(1, 1, 1, 1)),
                               rtol=1e-12, atol=1e-12)


def test_backend_backward_data_errors():
    w = np.zeros((3, 3, 2, 4))
    with pytest.raises(ValueError, match="dy must have shape"):
        cpu.conv2d_backward_data(np.zeros((1, 5, 5, 4)), w, (1, 6, 6, 2))
    with pytest.raises(ValueError, match="x_shape must be 4 positive ints"):
        cpu.conv2d_backward_data(np.zeros((1, 4, 4, 4)), w, (1, 6, 6))
    with pytest.raises(TypeError, match="dtype"):
        cpu.conv2d_backward_data(np.zeros((1, 4, 4, 4), np.float32), w, (1, 6, 6, 2))
    with pytest.raises(ValueError, match="workspace"):
        cpu.conv2d_backward_data(np.zeros((1, 4, 4, 4)), w, (1, 6, 6, 2), workspace=np.empty(3))


def test_layer_on_both_backends_agrees():
    x = np.random.default_rng(7).standard_normal((2, 4, 3, 3))
    outs = []
    for backend in (cpu, ref):
        layer = Conv2DTranspose(2, (3, 2), strides=(2, 1), padding="same", activation="sigmoid")
        layer.build((4, 3, 3), "float64", np.random.default_rng(0), backend=backend)
        y = layer.forward(x).copy()
        dx = layer.backward(np.ones_like(y)).copy()
        outs.append((y, dx, layer.grads["W"].copy()))
    for a, b in zip(*outs):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("kwargs,match", [
    (dict(filters=0, kernel_size=3), "filters must be a positive integer"),
    (dict(filters=2, kernel_size=0), "kernel_size must be >= 1"),
    (dict(filters=2, kernel_size=3, strides=2, output_padding=2), "output_padding must be smaller"),
    (dict(filters=2, kernel_size=3, output_padding=-1), "output_padding must be >= 0"),
    (dict(filters=2, kernel_size=3, padding="full"), "padding must be"),
])
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Conv2DTranspose(**kwargs)


def test_bad_input_shapes():
    with pytest.raises(ValueError, match=r"expects \(N, H, W, C\)"):
        built(Conv2DTranspose(2, 3), (5, 5))
    with pytest.raises(ValueError, match="crops the whole output"):
        built(Conv2DTranspose(2, 1, padding=3), (2, 2, 1))
    layer = built(Conv2DTranspose(2, 3), (4, 4, 1))
    with pytest.raises(ValueError, match="expects input of shape"):
        layer.forward(np.zeros((1, 4, 5, 1)))


def test_config_round_trip_summary_and_save(tmp_path):
    layer = Conv2DTranspose(4, (3, 2), strides=2, padding="same", output_padding=(1, 0),
                            activation="relu", kernel_regularizer=rp.regularizers.L2(1e-3))
    again = Conv2DTranspose.from_config(layer.get_config())
    assert again.get_config() == layer.get_config()
    model = rp.Sequential([rp.layers.Conv2D(4, 3, strides=2, padding="same"), layer, Flatten(),
                           Dense(3, activation="softmax")], input_shape=(8, 8, 1), seed=0)
    text = model.summary(print_fn=None)
    assert "conv2dtranspose (Conv2DTranspose)" in text and "(None, 9, 8, 4)" in text
    assert layer.count_params() == 3 * 2 * 4 * 4 + 4
    x = np.random.default_rng(8).standard_normal((6, 8, 8, 1)).astype(np.float32)
    rp.Trainer(model, "categorical_crossentropy", rp.optim.SGD(lr=0.01)).fit(
        x, [0, 1, 2, 0, 1, 2], epochs=1, batch_size=3, verbose=0)
    model.save(tmp_path / "m.rpz")
    loaded = rp.load_model(tmp_path / "m.rpz")
    np.testing.assert_array_equal(loaded.predict(x), model.predict(x))


def test_model_gradcheck_and_a_tiny_autoencoder_learns():
    model = rp.Sequential([rp.layers.Conv2D(2, 3, strides=2, padding="same", activation="tanh"),
                           Conv2DTranspose(1, 3, strides=2, padding="same")],
                          input_shape=(6, 6, 1), dtype="float64", seed=0)
    x = np.random.default_rng(9).standard_normal((3, 6, 6, 1))
    assert rp.gradcheck(model, x, x, loss="mse") < 1e-6
    # Learn to reproduce smooth images through a 3x3x2 bottleneck.
    grid = np.linspace(-1, 1, 6)
    imgs = np.stack([np.outer(np.sin(a * grid), np.cos(b * grid))
                     for a in (0.5, 1, 1.5, 2) for b in (0.5, 1, 2)])[..., None]
    trainer = rp.Trainer(model, "mse", rp.optim.Adam(lr=0.02), metrics=())
    history = trainer.fit(imgs, imgs, epochs=150, batch_size=12, verbose=0)
    assert history.history["loss"][-1] < 0.25 * history.history["loss"][0]
