"""Every operation of the CUDA backend against the CPU backend (or losses.py),
over both dtypes and awkward shapes.

On every run these go through the host emulator (retroprop._cuda_emu): the
CUDA backend's own C operations (csrc/cuda/ops.inc) and kernel bodies
(csrc/cuda/bodies) on the CPU, over the grid the GPU would use, so their
index arithmetic, padding, strides and reductions are checked without a
GPU. Where the GPU extension is built and a GPU is usable, the same tests
also run on it (cuda_harness.device_backends). Tolerances: cuda_harness.
"""
import numpy as np
import pytest

from retroprop import losses
from retroprop.backend import device, get_backend

from cuda_harness import assert_close, device_backends, host, tolerance

cpu = get_backend("cpu")
BACKENDS = device_backends()
DTYPES = (np.float32, np.float64)


@pytest.fixture(params=BACKENDS, ids=[name for name, _ in BACKENDS])
def be(request):
    backend = request.param[1]
    backend.set_max_blocks(0)   # the default grid
    return backend


def rand(rng, shape, dtype, scale=1.0):
    return (rng.standard_normal(shape) * scale).astype(dtype)


# ---------------------------------------------------------------- activations

ACT_PARAMS = [(name, None) for name in device.ELEMENTWISE_ACTIVATIONS] + [
    ("sigmoid", 2.5), ("leaky_relu", 0.2), ("leaky_relu", 0.0), ("elu", 0.5)]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name,param", ACT_PARAMS)
def test_activation_forward_backward(be, dtype, name, param):
    rng = np.random.default_rng(1)
    tol = tolerance(be, dtype)
    for n in list(range(1, 18)) + [257, 70001]:
        x = rand(rng, (n,), dtype, 3.0)
        want = cpu.activation_forward(name, x, param=param)
        assert_close(be.activation_forward(name, x, param=param), want, tol, f"{name} fwd {n}")
        dy = rand(rng, (n,), dtype)
        want_dx = cpu.activation_backward(name, want, dy, x=x, param=param)
        got_dx = be.activation_backward(name, be.to_device(want), dy, x=x, param=param)
        assert_close(got_dx, want_dx, tol, f"{name} bwd {n}")


@pytest.mark.parametrize("dtype", DTYPES)
def test_activation_special_values(be, dtype):
    x = np.array([np.nan, np.inf, -np.inf, 0.0, -0.0, 1e30, -1e30, 2e4, -2e4], dtype=dtype)
    for name in device.ELEMENTWISE_ACTIVATIONS:
        assert_close(be.activation_forward(name, x), cpu.activation_forward(name, x),
                     tolerance(be, dtype), name)
    # step passes zeros even for an infinite dy
    y = cpu.activation_forward("step", x)
    dy = np.full_like(x, np.inf)
    assert np.array_equal(host(be.activation_backward("step", y, dy)), np.zeros_like(x))


@pytest.mark.parametrize("dtype", DTYPES)
def test_axpby_and_penalty_gradient(be, dtype):
    from retroprop import regularizers
    rng = np.random.default_rng(42)
    tol = tolerance(be, dtype)
    for n in (1, 17, 70001):
        x, y = rand(rng, (n,), dtype), rand(rng, (n,), dtype)
        assert_close(be.axpby(0.9, x, 0.1, y), (dtype(0.9) * x + dtype(0.1) * y), tol, "axpby")
        yd = be.to_device(y)
        be.axpby(1.0, x, 1.0, yd, out=yd)                      # in place: a residual sum
        assert_close(yd, x + y, tol, "residual")
        w = rand(rng, (n,), dtype)
        w[0] = 0.0
        g = rand(rng, (n,), dtype)
        want = g + regularizers.L1L2(l1=0.01, l2=0.002).gradient(w)
        got = be.add_penalty_gradient(w, be.to_device(g), l1=0.01, l2=0.002)
        assert_close(got, want, tol, "penalty")


def test_activation_rejects_bad_arguments(be):
    x = np.ones(3, np.float32)
    with pytest.raises(ValueError, match="activation"):
        be.activation_forward("nope", x)
    with pytest.raises(ValueError, match="slope"):
        be.activation_forward("sigmoid", x, param=0.0)
    with pytest.raises(ValueError, match="alpha"):
        be.activation_forward("elu", x, param=-1.0)
    with pytest.raises(TypeError, match="dtype"):
        be.activation_forward("relu", np.ones(3, np.int32))
    with pytest.raises(ValueError, match="needs the input"):
        be.activation_backward("gelu", None, x)


# ---------------------------------------------------------------- GEMM and dense

DENSE_SHAPES = [(1, 1, 1), (7, 13, 5), (33, 17, 10), (2, 1, 17), (129, 97, 31)]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("ta,tb", [(False, False), (True, False), (False, True), (True, True)])
def test_gemm(be, dtype, ta, tb):
    rng = np.random.default_rng(2)
    for m, k, n in DENSE_SHAPES:
        a = rand(rng, (k, m) if ta else (m, k), dtype)
        b = rand(rng, (n, k) if tb else (k, n), dtype)
        c0 = rand(rng, (m, n), dtype)
        want = cpu.gemm(a, b, c0.copy(), trans_a=ta, trans_b=tb, alpha=0.5, beta=2.0)
        got = be.gemm(a, b, be.to_device(c0), trans_a=ta, trans_b=tb, alpha=0.5, beta=2.0)
        assert_close(got, want, tolerance(be, dtype), f"gemm {m}x{k}x{n}")
    with pytest.raises(ValueError, match="inner"):
        be.gemm(np.ones((2, 3), dtype), np.ones((2, 3), dtype))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("activation", device.FUSED_ACTIVATIONS + ("softmax",))
def test_dense_forward_backward(be, dtype, activation):
    rng = np.random.default_rng(3)
    tol = tolerance(be, dtype)
    for n, k, m in DENSE_SHAPES:
        x, w, b = rand(rng, (n, k), dtype), rand(rng, (k, m), dtype), rand(rng, (m,), dtype)
        for bias in (b, None):
            want = cpu.dense_forward(x, w, bias, activation)
            got = be.dense_forward(x, w, bias, activation)
            assert_close(got, want, tol, f"dense {activation} {n}x{k}x{m}")
            if activation == "softmax":
                continue
            dy = rand(rng, (n, m), dtype)
            dw, db, dx = (np.empty((k, m), dtype), np.empty(m, dtype), np.empty((n, k), dtype))
            cpu.dense_backward(x, w, want, dy, activation, dw, db, dx)
            gdw, gdb, gdx = be.empty((k, m), dtype), be.empty(m, dtype), be.empty((n, k), dtype)
            be.dense_backward(x, w, be.to_device(want), dy, activation, gdw, gdb, gdx)
            assert_close(gdw, dw, tol, "dw")
            assert_close(gdb, db, tol, "db")
            assert_close(gdx, dx, tol, "dx")
            # db and dx are optional
            assert be.dense_backward(x, w, be.to_device(want), dy, activation, gdw) is None
            assert_close(gdw, dw, tol, "dw alone")


@pytest.mark.parametrize("dtype", DTYPES)
def test_dense_forward_parameterised_activations(be, dtype):
    rng = np.random.default_rng(4)
    x, w, b = rand(rng, (9, 6), dtype), rand(rng, (6, 4), dtype), rand(rng, (4,), dtype)
    for name, p in (("leaky_relu", 0.3), ("elu", 2.0), ("sigmoid", 0.5)):
        assert_close(be.dense_forward(x, w, b, name, param=p),
                     cpu.dense_forward(x, w, b, name, param=p), tolerance(be, dtype), name)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("activation", device.ELEMENTWISE_ACTIVATIONS)
def test_dense_with_epilogue_or_fused_kernel(be, dtype, activation):
    # bias + any activation: a cuBLASLt epilogue (GPU: linear, relu, gelu) or
    # the GEMM and one fused bias + activation kernel
    rng = np.random.default_rng(40)
    tol = tolerance(be, dtype)
    for n, k, m in DENSE_SHAPES:
        x, w, b = rand(rng, (n, k), dtype), rand(rng, (k, m), dtype), rand(rng, (m,), dtype)
        for bias in (b, None):
            z = cpu.gemm(x, w) + (bias if bias is not None else 0)
            want = cpu.activation_forward(activation, z.astype(dtype))
            got, fused = be.dense_forward_fused(x, w, bias, activation)
            assert_close(got, want, tol, f"{activation} {n}x{k}x{m}")
            if be.properties["emulated"]:
                assert fused is False


@pytest.mark.parametrize("dtype", DTYPES)
def test_relu_chain_with_cublaslt_epilogues_or_fallback(be, dtype):
    # two relu Dense layers: forward keeps relu's mask, backward goes from the
    # upper layer's dz straight to the lower one's dz and db
    rng = np.random.default_rng(41)
    tol = tolerance(be, dtype)
    for n, k0, k, m in [(1, 2, 3, 1), (33, 17, 130, 10), (64, 20, 256, 128)]:
        x, w0, b0 = rand(rng, (n, k0), dtype), rand(rng, (k0, k), dtype), rand(rng, (k,), dtype)
        w1 = rand(rng, (k, m), dtype)
        y0 = cpu.dense_forward(x, w0, b0, "relu")
        got_y0, mask = be.dense_forward_relu_mask(x, w0, b0)
        assert_close(got_y0, y0, tol, "relu forward")
        if be.properties["emulated"]:
            assert mask is None          # no cuBLASLt here: the fallback ran
        dz1 = rand(rng, (n, m), dtype)
        dx1 = cpu.gemm(dz1, w1, trans_b=True)
        want_dz0 = cpu.activation_backward("relu", y0, dx1)
        dz0, db0 = be.dense_backward_drelu(dz1, w1, got_y0, mask)
        assert_close(dz0, want_dz0, tol, "dz0")
        assert_close(db0, want_dz0.sum(0), tol * 10, "db0")


def test_dense_rejects_bad_shapes(be):
    x = np.ones((3, 4), np.float32)
    with pytest.raises(ValueError, match="dense_forward"):
        be.dense_forward(x, np.ones((5, 2), np.float32), None, "relu")
    with pytest.raises(ValueError, match="shape"):
        be.dense_forward(x, np.ones((4, 2), np.float32), np.ones(3, np.float32), "relu")
    with pytest.raises(TypeError, match="dtype"):
        be.dense_forward(x, np.ones((4, 2), np.float64), None, "relu")
    with pytest.raises(ValueError, match="activation"):
        be.dense_forward(x, np.ones((4, 2), np.float32), None, "gelu")


# ---------------------------------------------------------------- softmax and losses

@pytest.mark.parametrize("dtype", DTYPES)
def test_softmax_and_cross_entropy(be, dtype):
    rng = np.random.default_rng(5)
    tol = tolerance(be, dtype)
    for n, c in [(1, 1), (1, 7), (13, 10), (300, 3), (5, 129)]:
        z = rand(rng, (n, c), dtype, 5.0)
        assert_close(be.softmax(z), cpu.softmax(z), tol, "softmax")
        ids = rng.integers(0, c, n)
        onehot = np.eye(c, dtype=dtype)[ids]
        for t in (ids, onehot):
            want_loss, want_grad = cpu.softmax_cross_entropy(z, t)
            loss, grad = be.softmax_cross_entropy(z, t)
            assert abs(float(loss) - want_loss) <= tol * max(1.0, abs(want_loss))
            assert_close(grad, want_grad, tol, "xent grad")
    with pytest.raises(ValueError, match="out of range"):
        be.softmax_cross_entropy(np.zeros((2, 3), dtype), np.array([0, 3]))


def _losses_cases(rng, dtype):
    """(kind, losses.py object, predictions, targets) for every loss."""
    n, c = 11, 5
    probs = cpu.softmax(rand(rng, (n, c), dtype))
    ids = rng.integers(0, c, n)
    onehot = np.eye(c, dtype=dtype)[ids]
    sig = (1 / (1 + np.exp(-rand(rng, (n, c), np.float64)))).astype(dtype)
    sig[0, 0], sig[1, 1] = 0.0, 1.0           # clipped by eps
    binary = (rng.random((n, c)) > 0.5).astype(dtype)
    scores = rand(rng, (n, c), dtype)
    scores[2, :] = scores[2, 0]                # margins exactly 1 and 0 ties
    reg = rand(rng, (n, 3), dtype)
    reg_t = rand(rng, (n, 3), dtype)
    reg_t[0, 0] = reg[0, 0]                    # mae's zero subgradient
    return [
        ("softmax_cross_entropy", losses.CategoricalCrossentropy(from_logits=True), scores, ids),
        ("softmax_cross_entropy", losses.CategoricalCrossentropy(from_logits=True), scores,
         onehot),
        ("crossentropy_probs", losses.CategoricalCrossentropy(), probs, ids),
        ("crossentropy_probs", losses.CategoricalCrossentropy(), probs, onehot),
        ("mse", losses.MeanSquaredError(), reg, reg_t),
        ("mae", losses.MeanAbsoluteError(), reg, reg_t),
        ("bce_probs", losses.BinaryCrossentropy(), sig, binary),
        ("bce_logits", losses.BinaryCrossentropy(from_logits=True), scores * 10, binary),
        ("hinge", losses.Hinge(), scores, ids),
        ("hinge", losses.Hinge(), scores, onehot),
    ]


@pytest.mark.parametrize("dtype", DTYPES)
def test_every_loss_matches_losses_py(be, dtype):
    rng = np.random.default_rng(6)
    tol = tolerance(be, dtype)
    for kind, ref, pred, targets in _losses_cases(rng, dtype):
        prepared = ref.prepare_targets(targets, pred.shape, pred.dtype)
        want_value = ref.value(prepared, pred)
        want_grad = ref.grad(prepared, pred)
        value, grad = be.loss(kind, pred, targets, eps=getattr(ref, "eps", 1e-7))
        assert abs(float(value) - want_value) <= tol * max(1.0, abs(want_value)), kind
        assert_close(grad, want_grad, tol, kind)
        value_only, none = be.loss(kind, pred, targets, want_grad=False)
        assert none is None and float(value_only) == float(value)


@pytest.mark.parametrize("dtype", DTYPES)
def test_bce_fused_with_sigmoid(be, dtype):
    rng = np.random.default_rng(7)
    p = (1 / (1 + np.exp(-rand(rng, (6, 2), np.float64)))).astype(dtype)
    t = (rng.random((6, 2)) > 0.5).astype(dtype)
    ref = losses.BinaryCrossentropy()
    value, grad = be.loss("bce_sigmoid", p, t)
    assert_close(grad, ((p - t) / p.size).astype(dtype), tolerance(be, dtype), "grad")
    assert abs(float(value) - ref.value(t, p)) <= tolerance(be, dtype) * 10


def test_loss_rows_reduce_over_many_chunks(be):
    # more rows than one 256-row chunk: the two-stage sum
    rng = np.random.default_rng(8)
    z = rand(rng, (1000, 4), np.float64)
    ids = rng.integers(0, 4, 1000)
    want, _ = cpu.softmax_cross_entropy(z, ids)
    got, _ = be.softmax_cross_entropy(z, ids)
    assert abs(float(got) - want) <= 1e-12 * max(1, abs(want))


# ---------------------------------------------------------------- batch normalisation

BN_SHAPES = [(1, 1), (5, 3), (2, 7, 5, 3), (70001, 3), (64, 33), (1, 4, 4, 1)]


@pytest.mark.parametrize("dtype", DTYPES)
def test_batchnorm(be, dtype):
    rng = np.random.default_rng(9)
    tol = tolerance(be, dtype)
    for shape in BN_SHAPES:
        c = shape[-1]
        x = (rand(rng, shape, dtype) * 3 + 100).astype(dtype)   # a mean large against the spread
        mean, var = cpu.batchnorm_stats(x)
        gmean, gvar = be.batchnorm_stats(x)
        assert_close(gmean, mean, tol, f"mean {shape}")
        assert_close(gvar, var, tol, f"var {shape}")
        gamma, beta = rand(rng, (c,), dtype), rand(rng, (c,), dtype)
        for g, b in ((gamma, beta), (None, None)):
            want = cpu.batchnorm_apply(x, mean, var, g, b, epsilon=1e-3)
            assert_close(be.batchnorm_apply(x, mean, var, g, b, epsilon=1e-3), want, tol,
                         f"apply {shape}")
        dy = rand(rng, shape, dtype)
        for training in (True, False):
            dg, dbt, dx = np.empty(c, dtype), np.empty(c, dtype), np.empty(shape, dtype)
            cpu.batchnorm_backward(x, dy, mean, var, gamma, epsilon=1e-3, training=training,
                                   dgamma=dg, dbeta=dbt, dx=dx)
            gdg, gdb, gdx = be.empty(c, dtype), be.empty(c, dtype), be.empty(shape, dtype)
            be.batchnorm_backward(x, dy, mean, var, gamma, epsilon=1e-3, training=training,
                                  dgamma=gdg, dbeta=gdb, dx=gdx)
            assert_close(gdg, dg, tol * 10, "dgamma")
            assert_close(gdb, dbt, tol * 10, "dbeta")
            assert_close(gdx, dx, tol * 10, f"dx {shape} {training}")


def test_column_sums_are_deterministic_and_exact(be):
    rng = np.random.default_rng(10)
    x = rand(rng, (100003, 7), np.float64)
    first = host(be.column_sums(x))
    assert np.array_equal(first, host(be.column_sums(x)))
    np.testing.assert_allclose(first, x.sum(0), rtol=1e-12, atol=1e-9)


# ---------------------------------------------------------------- convolution

# (x shape, w shape, stride, dilation, padding)
CONV_CASES = [
    ((1, 1, 1, 1), (1, 1, 1, 1), (1, 1), (1, 1), (0, 0, 0, 0)),        # pointwise
    ((2, 5, 7, 3), (1, 1, 3, 4), (1, 1), (1, 1), (0, 0, 0, 0)),        # pointwise
    ((2, 8, 8, 3), (3, 3, 3, 5), (1, 1), (1, 1), (1, 1, 1, 1)),        # same
    ((3, 11, 13, 2), (5, 5, 2, 6), (2, 2), (1, 1), (2, 2, 2, 2)),      # LeNet-like, stride 2
    ((2, 9, 10, 3), (3, 2, 3, 7), (2, 3), (2, 1), (1, 2, 0, 3)),       # asymmetric everything
    ((1, 7, 7, 17), (3, 3, 17, 1), (1, 1), (3, 3), (3, 3, 3, 3)),      # dilation 3, width 17
    ((4, 6, 5, 1), (6, 5, 1, 3), (1, 1), (1, 1), (0, 0, 0, 0)),        # kernel = image
    ((2, 5, 5, 2), (1, 1, 2, 3), (2, 2), (1, 1), (0, 0, 0, 0)),        # 1x1 stride 2
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", range(len(CONV_CASES)))
@pytest.mark.parametrize("activation", ["linear", "relu", "tanh"])
def test_conv2d_forward_backward(be, dtype, case, activation):
    x_shape, w_shape, stride, dilation, padding = CONV_CASES[case]
    rng = np.random.default_rng(11 + case)
    tol = tolerance(be, dtype)
    x, w = rand(rng, x_shape, dtype), rand(rng, w_shape, dtype)
    b = rand(rng, (w_shape[3],), dtype)
    geo = dict(stride=stride, dilation=dilation, padding=padding)
    want = cpu.conv2d_forward(x, w, b, activation, **geo)
    got = be.conv2d_forward(x, w, b, activation, **geo)
    assert_close(got, want, tol, "conv forward")
    dy = rand(rng, want.shape, dtype)
    dw, db, dx = np.empty(w_shape, dtype), np.empty(w_shape[3], dtype), np.empty(x_shape, dtype)
    cpu.conv2d_backward(x, w, want, dy, activation, dw, db, dx, **geo)
    gdw, gdb, gdx = be.empty(w_shape, dtype), be.empty(w_shape[3], dtype), be.empty(x_shape, dtype)
    be.conv2d_backward(x, w, be.to_device(want), dy, activation, gdw, gdb, gdx, **geo)
    assert_close(gdw, dw, tol * 10, "conv dw")
    assert_close(gdb, db, tol * 10, "conv db")
    assert_close(gdx, dx, tol * 10, "conv dx")
    assert be.conv2d_backward(x, w, be.to_device(want), dy, activation, gdw, **geo) is None
    assert_close(gdw, dw, tol * 10, "conv dw alone")


@pytest.mark.parametrize("dtype", DTYPES)
def test_conv2d_in_chunks_of_images(be, dtype, monkeypatch):
    # a column workspace of one image at a time: dw adds the chunks in order
    monkeypatch.setattr(device, "COL_WORKSPACE_ELEMENTS", 1)
    rng = np.random.default_rng(12)
    x, w, b = rand(rng, (5, 6, 6, 3), dtype), rand(rng, (3, 3, 3, 4), dtype), None
    geo = dict(stride=(1, 1), dilation=(1, 1), padding=(1, 1, 1, 1))
    want = cpu.conv2d_forward(x, w, b, "relu", **geo)
    assert_close(be.conv2d_forward(x, w, b, "relu", **geo), want, tolerance(be, dtype), "y")
    dy = rand(rng, want.shape, dtype)
    dw, dx = np.empty(w.shape, dtype), np.empty(x.shape, dtype)
    cpu.conv2d_backward(x, w, want, dy, "relu", dw, None, dx, **geo)
    gdw, gdx = be.empty(w.shape, dtype), be.empty(x.shape, dtype)
    be.conv2d_backward(x, w, be.to_device(want), dy, "relu", gdw, None, gdx, **geo)
    assert_close(gdw, dw, tolerance(be, dtype) * 10, "dw")
    assert_close(gdx, dx, tolerance(be, dtype) * 10, "dx")


def _im2col_reference(x, w_shape, stride, dilation, padding):
    n, h, wd, c = x.shape
    kh, kw = w_shape[:2]
    oh, ow = device.conv2d_output_hw(h, wd, (kh, kw), stride, dilation, padding)
    col = np.zeros((n, oh, ow, kh, kw, c), x.dtype)
    for oy in range(oh):
        for ox in range(ow):
            for ky in range(kh):
                for kx in range(kw):
                    iy = oy * stride[0] - padding[0] + ky * dilation[0]
                    ix = ox * stride[1] - padding[2] + kx * dilation[1]
                    if 0 <= iy < h and 0 <= ix < wd:
                        col[:, oy, ox, ky, kx] = x[:, iy, ix]
    return col.reshape(n * oh * ow, kh * kw * c)


@pytest.mark.parametrize("case", range(len(CONV_CASES)))
def test_im2col_and_col2im_gather(be, case):
    x_shape, w_shape, stride, dilation, padding = CONV_CASES[case]
    rng = np.random.default_rng(13)
    x = rand(rng, x_shape, np.float64)
    want = _im2col_reference(x, w_shape, stride, dilation, padding)
    col = be.im2col(x, w_shape, stride, dilation, padding)
    assert np.array_equal(host(col), want)
    # col2im is im2col's adjoint: <im2col(x), c> == <x, col2im(c)>
    c = rand(rng, want.shape, np.float64)
    dx = host(be.col2im(c, x_shape, w_shape, stride, dilation, padding))
    lhs, rhs = float((want * c).sum()), float((x * dx).sum())
    assert abs(lhs - rhs) <= 1e-10 * max(1.0, abs(rhs))
    # one image of the batch at a time: rows of that image only, dx of that image only
    last = x_shape[0] - 1
    one = host(be.im2col(x, w_shape, stride, dilation, padding, first=last, count=1))
    rows = want.shape[0] // x_shape[0]
    assert np.array_equal(one, want[last * rows:])
    dx_last = host(be.col2im(c[last * rows:], x_shape, w_shape, stride, dilation, padding,
                             first=last, count=1))
    assert np.array_equal(dx_last[last], dx[last])
    assert not dx_last[:last].any()


# ---------------------------------------------------------------- pooling

# (x shape, pool, stride, padding)
POOL_CASES = [
    ((1, 1, 1, 1), (1, 1), (1, 1), (0, 0, 0, 0)),
    ((2, 6, 6, 3), (2, 2), (2, 2), (0, 0, 0, 0)),
    ((2, 7, 5, 17), (3, 3), (2, 2), (1, 1, 1, 1)),     # overlapping, padded, width 17
    ((3, 5, 8, 2), (2, 3), (1, 2), (0, 1, 2, 0)),      # asymmetric
    ((1, 9, 9, 1), (3, 3), (1, 1), (1, 1, 1, 1)),      # every cell in up to 9 windows
    ((2, 4, 4, 5), (4, 4), (4, 4), (0, 0, 0, 0)),      # global
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", range(len(POOL_CASES)))
def test_pooling(be, dtype, case):
    shape, pool, stride, padding = POOL_CASES[case]
    rng = np.random.default_rng(14 + case)
    tol = tolerance(be, dtype)
    x = rand(rng, shape, dtype)
    x.reshape(-1)[::5] = 0.5                          # ties
    out, arg = cpu.maxpool2d_forward(x, pool, stride, padding)
    gout, garg = be.maxpool2d_forward(x, pool, stride, padding)
    assert_close(gout, out, tol, "max")
    assert np.array_equal(host(garg), arg)
    dy = rand(rng, out.shape, dtype)
    dx = cpu.maxpool2d_backward(arg, dy, pool, stride, padding, np.empty(shape, dtype))
    gdx = be.maxpool2d_backward(garg, dy, pool, stride, padding, be.empty(shape, dtype))
    assert_close(gdx, dx, tol, "max backward")
    avg = cpu.avgpool2d_forward(x, pool, stride, padding)
    assert_close(be.avgpool2d_forward(x, pool, stride, padding), avg, tol, "avg")
    dx = cpu.avgpool2d_backward(dy, pool, stride, padding, np.empty(shape, dtype))
    gdx = be.avgpool2d_backward(dy, pool, stride, padding, be.empty(shape, dtype))
    assert_close(gdx, dx, tol, "avg backward")


def test_maxpool_nan_wins(be):
    x = np.zeros((1, 2, 2, 2), np.float32)
    x[0, 1, 0, 0] = np.nan
    x[0, 0, 1, 1] = 5.0
    out, arg = be.maxpool2d_forward(x, (2, 2), (2, 2))
    want_out, want_arg = cpu.maxpool2d_forward(x, (2, 2), (2, 2))
    assert np.isnan(host(out)[0, 0, 0, 0]) and host(out)[0, 0, 0, 1] == 5.0
    assert np.array_equal(host(arg), want_arg)


def test_pool_rejects_bad_geometry(be):
    x = np.ones((1, 4, 4, 1), np.float32)
    with pytest.raises(ValueError, match="larger"):
        be.maxpool2d_forward(x, (5, 5), (1, 1))
    with pytest.raises(ValueError, match="padding"):
        be.avgpool2d_forward(x, (2, 2), (1, 1), (2, 0, 0, 0))


# ---------------------------------------------------------------- optimizer

OPT_CASES = [
    ("sgd", dict(momentum=0.0, weight_decay=0.01)),
    ("sgd", dict(momentum=0.9)),
    ("sgd", dict(momentum=0.9, nesterov=True, weight_decay=1e-3)),
    ("adam", dict(beta_1=0.9, beta_2=0.999, epsilon=1e-7, step=3, weight_decay=0.01)),
    ("adam", dict(beta_1=0.8, beta_2=0.99, epsilon=1e-8, step=1, weight_decay=0.1,
                  decoupled=True)),
    ("rmsprop", dict(rho=0.9, epsilon=1e-7)),
    ("rmsprop", dict(rho=0.8, momentum=0.5, epsilon=1e-7)),
    ("adagrad", dict(epsilon=1e-7)),
]
SIZES = [(1,), (17,), (0,), (4099,), (3, 5), (300, 7)]


def _opt_state(rule, kw, sizes, dtype, rng):
    params = [rand(rng, s, dtype) for s in sizes]
    grads = [rand(rng, s, dtype) for s in sizes]
    pos = [np.abs(rand(rng, s, dtype)) for s in sizes]
    zero = [None] * len(sizes)
    if rule == "sgd":
        s0 = [rand(rng, s, dtype) for s in sizes] if kw.get("momentum") else zero
        return params, grads, s0, zero
    if rule == "adam":
        return params, grads, [rand(rng, s, dtype) for s in sizes], pos
    if rule == "rmsprop":
        s1 = [rand(rng, s, dtype) for s in sizes] if kw.get("momentum") else zero
        return params, grads, pos, s1
    return params, grads, pos, zero


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", range(len(OPT_CASES)))
def test_optimizer_step(be, dtype, case):
    rule, kw = OPT_CASES[case]
    rng = np.random.default_rng(15 + case)
    tol = tolerance(be, dtype)
    params, grads, s0, s1 = _opt_state(rule, kw, SIZES, dtype, rng)
    dev = [[be.to_device(a) if a is not None else None for a in group]
           for group in (params, grads, s0, s1)]
    want = cpu.optimizer_step(rule, params, grads, s0, s1, lr=0.1, mode="check_apply", **kw)
    got = be.optimizer_step(rule, *dev, lr=0.1, mode="check_apply", **kw)
    assert got == want == -1
    for group, dgroup in zip((params, s0, s1), (dev[0], dev[2], dev[3])):
        for a, d in zip(group, dgroup):
            if a is not None:
                assert_close(d, a, tol, rule)


@pytest.mark.parametrize("mode", ["check", "check_apply", "apply"])
def test_optimizer_refuses_a_non_finite_step(be, mode):
    rng = np.random.default_rng(16)
    params, grads, s0, s1 = _opt_state("sgd", dict(momentum=0.9), SIZES, np.float32, rng)
    grads[3][100] = np.nan
    grads[5][0, 0] = np.inf
    dev = [[be.to_device(a) for a in group] for group in (params, grads, s0, s1[:0] or s0)]
    before = [host(d).copy() for d in dev[0]]
    got = be.optimizer_step("sgd", dev[0], dev[1], dev[2], [None] * len(SIZES), lr=0.1,
                            mode=mode, momentum=0.9)
    want = cpu.optimizer_step("sgd", params, grads, s0, [None] * len(SIZES), lr=0.1, mode=mode,
                              momentum=0.9)
    assert got == want
    if mode == "apply":
        assert got == -1
    else:
        assert got == 3
        for b, d in zip(before, dev[0]):
            assert np.array_equal(b, host(d))      # nothing written


def test_optimizer_rejects_host_arrays_and_mismatches(be):
    p = be.zeros((3,), np.float32)
    with pytest.raises(TypeError, match="DeviceArray"):
        be.optimizer_step("sgd", [np.zeros(3, np.float32)], [p], [None], [None], lr=0.1)
    with pytest.raises(ValueError, match="expected"):
        be.optimizer_step("sgd", [p], [be.zeros((4,), np.float32)], [None], [None], lr=0.1)
    with pytest.raises(ValueError, match="required"):
        be.optimizer_step("adam", [p], [p], [None], [None], lr=0.1)
    assert be.optimizer_step("sgd", [], [], [], [], lr=0.1) == -1


# ---------------------------------------------------------------- checks, batches, dropout

@pytest.mark.parametrize("dtype", DTYPES)
def test_find_nonfinite(be, dtype):
    for n in (1, 2, 17, 65536, 65537, 200003):
        x = np.zeros(n, dtype)
        assert be.find_nonfinite(x) == -1
        for positions in ([n - 1], [0, n - 1], [n // 2, n // 3]):
            y = x.copy()
            y[positions] = [np.nan, np.inf][: len(positions)] if len(positions) == 2 else np.nan
            assert be.find_nonfinite(y) == cpu.find_nonfinite(y) == min(positions)
    assert be.find_nonfinite(np.zeros((0,), dtype)) == -1


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int8, np.uint16, np.int64])
@pytest.mark.parametrize("row", [(1,), (3,), (5, 3), (17,)])
def test_gather_rows(be, dtype, row):
    rng = np.random.default_rng(17)
    data = (rng.random((23,) + row) * 100).astype(dtype)
    index = rng.permutation(23)[:11]
    want = data[index]
    assert np.array_equal(host(be.gather_rows(be.to_device(data), index)), want)
    assert np.array_equal(host(be.gather_rows(data, index)), want)   # from the host
    with pytest.raises(IndexError, match="out of range"):
        be.gather_rows(be.to_device(data), np.array([0, 23]))


def _uniform_reference(seed, counter, n):
    """rp_uniform (bodies/untyped.inc) written out in NumPy."""
    def mix(z):
        z = np.asarray(z, np.uint64)
        with np.errstate(over="ignore"):
            z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
            z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))
    with np.errstate(over="ignore"):
        key = mix(np.uint64(seed) ^ mix(np.uint64(counter) + np.uint64(0x9E3779B97F4A7C15)))
        bits = mix(key + np.arange(n, dtype=np.uint64)) >> np.uint64(11)
    return bits.astype(np.float64) / 2.0 ** 53


@pytest.mark.parametrize("dtype", DTYPES)
def test_dropout(be, dtype):
    rng = np.random.default_rng(18)
    x = rand(rng, (1000, 7), dtype)
    out, mask = be.dropout_forward(x, 0.3, seed=42, counter=5)
    keep = _uniform_reference(42, 5, x.size).reshape(x.shape) >= 0.3
    want_mask = np.where(keep, dtype(1 / 0.7), dtype(0))
    assert np.array_equal(host(mask), want_mask)
    assert_close(out, x * want_mask, tolerance(be, dtype), "dropout out")
    assert abs(keep.mean() - 0.7) < 0.02
    dy = rand(rng, x.shape, dtype)
    assert_close(be.dropout_backward(dy, mask), dy * want_mask, tolerance(be, dtype), "back")
    _, other = be.dropout_forward(x, 0.3, seed=42, counter=6)
    assert not np.array_equal(host(other), host(mask))         # a new mask per call
    with pytest.raises(ValueError, match="rate"):
        be.dropout_forward(x, 1.0, seed=0, counter=0)


# ---------------------------------------------------------------- the grid-stride path

def test_small_grids_give_the_same_results(be):
    # with a grid of 1 or 3 blocks every thread takes many indices
    rng = np.random.default_rng(19)
    x = rand(rng, (2, 9, 9, 3), np.float64)
    w = rand(rng, (3, 3, 3, 4), np.float64)
    geo = dict(stride=(1, 1), dilation=(1, 1), padding=(1, 1, 1, 1))
    full = host(be.conv2d_forward(x, w, None, "relu", **geo))
    pooled = host(be.maxpool2d_forward(x, (2, 2), (2, 2))[0])
    sums = host(be.column_sums(x.reshape(-1, 3)))
    for blocks in (1, 3):
        be.set_max_blocks(blocks)
        assert np.array_equal(host(be.conv2d_forward(x, w, None, "relu", **geo)), full)
        assert np.array_equal(host(be.maxpool2d_forward(x, (2, 2), (2, 2))[0]), pooled)
        assert np.array_equal(host(be.column_sums(x.reshape(-1, 3))), sums)
        assert be.find_nonfinite(np.r_[np.zeros(999), np.nan]) == 999
    be.set_max_blocks(0)


# ---------------------------------------------------------------- arrays and uploads

def test_device_array_basics(be):
    a = np.arange(24, dtype=np.float64).reshape(2, 3, 4)
    d = be.to_device(a)
    assert (d.shape, d.dtype, d.size, d.nbytes, len(d)) == ((2, 3, 4), a.dtype, 24, 192, 2)
    assert np.array_equal(np.asarray(d), a)
    assert np.array_equal(host(d.reshape(6, -1)), a.reshape(6, 4))
    assert np.array_equal(host(d.rows(1, 2)), a[1:2])
    assert float(be.to_device(np.array([2.5]))) == 2.5
    assert np.array_equal(host(be.zeros((3, 2))), np.zeros((3, 2), np.float32))
    assert np.array_equal(host(be.copy(d)), a)
    with pytest.raises(ValueError, match="reshape"):
        d.reshape(5, 5)
    with pytest.raises(TypeError, match="float"):
        float(d)
    with pytest.raises(TypeError, match="DeviceArray"):
        be.activation_forward("relu", [1.0, 2.0])
    with pytest.raises(TypeError, match="DeviceArrays"):
        be.activation_forward("relu", a, out=np.empty_like(a))
    with pytest.raises(ValueError, match="shape"):
        be.activation_forward("relu", a, out=be.empty((2, 3), np.float64))


def test_batch_uploader_delivers_every_batch(be):
    rng = np.random.default_rng(20)
    uploader = be.batch_uploader()
    batches = [rand(rng, (5, 3), np.float32) for _ in range(5)] + [rand(rng, (2, 3), np.float32)]
    for batch in batches:
        dev = uploader.upload(batch)
        assert np.array_equal(host(dev), batch)
    uploader.close()
