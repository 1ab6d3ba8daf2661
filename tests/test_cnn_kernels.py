"""The kernels a CNN step runs besides the convolutions: batch norm (its
statistics in one read, the moving averages, the fused BN + activation
forward and backward), global average pooling, and the residual sum with
its activation. Each against the NumPy reference backend, finite
differences (float64), both instruction sets, thread counts 1, 2 and 5
(bit-identical), and widths 1..17 of the channel vectors (8 floats with
AVX2, 4 portable) with the block and chunk boundaries around them."""
import numpy as np
import pytest

from retroprop.backend import cpu
from retroprop.backend import numpy_ref as ref
from retroprop.gradcheck import check_layer_gradients
from retroprop.layers import Conv2D, GlobalAvgPool2D, Residual

HAVE_AVX2 = cpu.backend_info()["simd_best"] != "generic"
PATHS = ("avx2+fma", "generic") if HAVE_AVX2 else ("generic",)
FUSED = ("linear", "relu", "sigmoid", "tanh", "step", "leaky_relu", "elu")


def on_each_thread_count(fn):
    before = cpu.get_num_threads()
    try:
        results = []
        for threads in (1, 2, 5):
            cpu.set_num_threads(threads)
            results.append(fn())
    finally:
        cpu.set_num_threads(before)
    for other in results[1:]:
        for a, b in zip(results[0], other):
            np.testing.assert_array_equal(a, b)
    return results[0]


def tol(dtype):
    return dict(rtol=2e-5, atol=2e-5) if dtype == np.float32 else dict(rtol=1e-11, atol=1e-11)


# ---------------------------------------------------------------- batch norm

# rows x channels: one row, primes, many blocks of rows (64 KiB each) with a
# ragged last one, channels across the 256-channel chunk of the local sums
BN_SHAPES = [(1, 1), (1, 5), (3, 17), (997, 13), (64, 32, 32, 32), (20011, 3), (5, 300),
             (2, 9, 9, 257)]


@pytest.mark.parametrize("shape", BN_SHAPES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_batchnorm_statistics(shape, dtype, simd, rng):
    x = (rng.standard_normal(shape) * 2 + 1e3).astype(dtype)   # a mean large against the spread
    c = shape[-1]
    mean, var = on_each_thread_count(lambda: cpu.batchnorm_stats(x))
    x64 = x.astype(np.float64).reshape(-1, c)
    np.testing.assert_allclose(mean, x64.mean(axis=0), rtol=1e-7 if dtype == np.float32 else 1e-13)
    want_var = x64.var(axis=0)
    np.testing.assert_allclose(var, want_var, rtol=2e-5 if dtype == np.float32 else 1e-10,
                               atol=1e-12)


def test_batchnorm_statistics_read_deviations_not_squares(rng):
    """A mean of 1e4 with a spread of 1e-2 in float32: E[x^2] - E[x]^2 would lose
    every digit of the variance; the deviations from each block's mean keep it."""
    x = (1e4 + 1e-2 * rng.standard_normal((50000, 4))).astype(np.float32)
    _, var = cpu.batchnorm_stats(x)
    np.testing.assert_allclose(var, x.astype(np.float64).var(axis=0), rtol=1e-4)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_batchnorm_moving_statistics(dtype, rng):
    x = rng.standard_normal((40, 6)).astype(dtype) * 3 + 2
    for backend in (cpu, ref):
        moving_mean = np.full(6, 0.5, dtype)
        moving_var = np.full(6, 2.0, dtype)
        mean, var = backend.batchnorm_stats(x, moving_mean=moving_mean, moving_var=moving_var,
                                            momentum=0.9)
        m = dtype(0.9)
        np.testing.assert_allclose(moving_mean, m * dtype(0.5) + (1 - m) * mean, rtol=1e-6)
        np.testing.assert_allclose(moving_var, m * dtype(2.0) + (1 - m) * var, rtol=1e-6)
    with pytest.raises(ValueError, match="both"):
        cpu.batchnorm_stats(x, moving_mean=np.zeros(6, dtype))
    with pytest.raises(ValueError, match="momentum"):
        cpu.batchnorm_stats(x, moving_mean=np.zeros(6, dtype), moving_var=np.ones(6, dtype),
                            momentum=1.5)


def test_batchnorm_overflow_moves_nothing():
    x = np.array([[1e20], [-1e20], [3e20]], np.float32)
    for backend in (cpu, ref):
        moving_mean, moving_var = np.zeros(1, np.float32), np.ones(1, np.float32)
        with pytest.raises(ValueError, match="overflows"):
            backend.batchnorm_stats(x, moving_mean=moving_mean, moving_var=moving_var,
                                    momentum=0.5)
        assert moving_mean[0] == 0 and moving_var[0] == 1


@pytest.mark.parametrize("activation", FUSED)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_batchnorm_with_activation_matches_reference(activation, dtype, simd, rng):
    shape = (7, 5, 3, 19)
    x = (rng.standard_normal(shape) * 2 + 3).astype(dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    gamma = rng.standard_normal(19).astype(dtype)
    beta = rng.standard_normal(19).astype(dtype)
    mean, var = cpu.batchnorm_stats(x)
    y = on_each_thread_count(lambda: (cpu.batchnorm_apply(x, mean, var, gamma, beta,
                                                          epsilon=1e-3, activation=activation),))[0]
    want = ref.batchnorm_apply(x, mean, var, gamma, beta, epsilon=1e-3, activation=activation)
    np.testing.assert_allclose(y, want, **tol(dtype))
    for training in (True, False):
        def grads(backend):
            dg, db, dx = np.empty(19, dtype), np.empty(19, dtype), np.empty(shape, dtype)
            backend.batchnorm_backward(x, dy, mean, var, gamma, epsilon=1e-3, training=training,
                                       dgamma=dg, dbeta=db, dx=dx, y=want, activation=activation)
            return dg, db, dx
        got = on_each_thread_count(lambda: grads(cpu))
        for a, b in zip(got, grads(ref)):
            np.testing.assert_allclose(a, b, rtol=1e-4 if dtype == np.float32 else 1e-10,
                                       atol=1e-4 if dtype == np.float32 else 1e-10)


def test_batchnorm_relu_gradient_by_finite_differences(rng):
    """L = sum(R * relu(bn(x))) in training mode: the fused backward's dx, dgamma
    and dbeta against central differences (float64)."""
    shape = (6, 3, 4)
    x = rng.standard_normal(shape)
    gamma, beta = rng.standard_normal(4), rng.standard_normal(4)
    r = rng.standard_normal(shape)

    def loss(x, gamma, beta):
        mean, var = cpu.batchnorm_stats(x)
        y = cpu.batchnorm_apply(x, mean, var, gamma, beta, epsilon=1e-3, activation="relu")
        return float(np.sum(r * y))

    mean, var = cpu.batchnorm_stats(x)
    y = cpu.batchnorm_apply(x, mean, var, gamma, beta, epsilon=1e-3, activation="relu")
    dg, db, dx = np.empty(4), np.empty(4), np.empty(shape)
    cpu.batchnorm_backward(x, r, mean, var, gamma, epsilon=1e-3, training=True, dgamma=dg,
                           dbeta=db, dx=dx, y=y, activation="relu")
    eps = 1e-6
    for arr, grad, args in ((x, dx, 0), (gamma, dg, 1), (beta, db, 2)):
        fd = np.empty_like(arr)
        for i in np.ndindex(arr.shape):
            params = [x.copy(), gamma.copy(), beta.copy()]
            params[args][i] += eps
            up = loss(*params)
            params[args][i] -= 2 * eps
            fd[i] = (up - loss(*params)) / (2 * eps)
        np.testing.assert_allclose(grad, fd, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("width", range(1, 18))
def test_batchnorm_every_channel_count(width, rng):
    """Channel counts 1..17 (every remainder of an 8- and a 4-float vector), on
    both instruction sets, which must agree with each other and the reference."""
    x = (rng.standard_normal((61, width)) + 2).astype(np.float32)
    dy = rng.standard_normal(x.shape).astype(np.float32)
    gamma = rng.standard_normal(width).astype(np.float32)
    previous = cpu.backend_info()["simd"]
    results = []
    try:
        for path in PATHS:
            cpu.set_simd(path)
            mean, var = cpu.batchnorm_stats(x)
            y = cpu.batchnorm_apply(x, mean, var, gamma, None, epsilon=1e-3, activation="relu")
            dx = cpu.batchnorm_backward(x, dy, mean, var, gamma, epsilon=1e-3, training=True,
                                        dx=np.empty_like(x), y=y, activation="relu")
            results.append((mean, var, y, dx))
    finally:
        cpu.set_simd(previous)
    mean, var = ref.batchnorm_stats(x)
    y = ref.batchnorm_apply(x, mean, var, gamma, None, epsilon=1e-3, activation="relu")
    dx = ref.batchnorm_backward(x, dy, mean, var, gamma, epsilon=1e-3, training=True,
                                dx=np.empty_like(x), y=y, activation="relu")
    for got in results:
        for a, b in zip(got, (mean, var, y, dx)):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_batchnorm_activation_errors(rng):
    x = rng.standard_normal((4, 3))
    mean, var = cpu.batchnorm_stats(x)
    with pytest.raises(ValueError, match="activation"):
        cpu.batchnorm_apply(x, mean, var, None, None, epsilon=1e-3, activation="gelu")
    with pytest.raises(ValueError, match="needs the output y"):
        cpu.batchnorm_backward(x, x, mean, var, None, epsilon=1e-3, training=True,
                               dx=np.empty_like(x), activation="relu")
    with pytest.raises(ValueError, match="shape"):
        cpu.batchnorm_backward(x, x, mean, var, None, epsilon=1e-3, training=True,
                               dx=np.empty_like(x), y=np.zeros((4, 2)), activation="relu")


# ---------------------------------------------------------------- global average pooling

@pytest.mark.parametrize("shape", [(1, 1, 1, 1), (2, 3, 5, 7), (64, 8, 8, 128), (3, 1, 97, 17),
                                   (5, 11, 13, 300), (2, 4, 3, 2, 6)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_global_avgpool_matches_reference(shape, dtype, rng):
    x = (rng.standard_normal(shape) + 1).astype(dtype)
    y = on_each_thread_count(lambda: (cpu.global_avgpool_forward(x),))[0]
    np.testing.assert_allclose(y, ref.global_avgpool_forward(x), **tol(dtype))
    np.testing.assert_allclose(y, x.astype(np.float64).reshape(shape[0], -1, shape[-1]).mean(1),
                               **tol(dtype))
    dy = rng.standard_normal(y.shape).astype(dtype)
    dx = on_each_thread_count(lambda: (cpu.global_avgpool_backward(dy, np.empty_like(x)),))[0]
    np.testing.assert_allclose(dx, ref.global_avgpool_backward(dy, np.empty_like(x)), **tol(dtype))


@pytest.mark.parametrize("width", range(1, 18))
def test_global_avgpool_every_channel_count(width, rng):
    x = rng.standard_normal((3, 70, 1, width)).astype(np.float32)   # 70 pixels: a partial 64
    np.testing.assert_allclose(cpu.global_avgpool_forward(x), ref.global_avgpool_forward(x),
                               rtol=1e-5, atol=1e-6)


def test_global_avgpool_errors(rng):
    with pytest.raises(ValueError, match="shape"):
        cpu.global_avgpool_forward(np.zeros((3, 4)))
    with pytest.raises(ValueError, match="shape"):
        cpu.global_avgpool_forward(np.zeros((2, 3, 3, 4)), out=np.zeros((2, 3)))
    with pytest.raises(ValueError, match="dy"):
        cpu.global_avgpool_backward(np.zeros((2, 5)), np.zeros((2, 3, 3, 4)))
    with pytest.raises(TypeError):
        cpu.global_avgpool_backward(np.zeros((2, 4), np.float32), np.zeros((2, 3, 3, 4)))


def test_global_avgpool_layer_gradient():
    assert check_layer_gradients(GlobalAvgPool2D(), (5, 3, 4), batch_size=4) < 1e-7


# ---------------------------------------------------------------- the residual sum

@pytest.mark.parametrize("activation", FUSED)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_add_act_matches_reference(activation, dtype, rng):
    a = rng.standard_normal((64, 32, 32, 3)).astype(dtype)    # past the threads' threshold
    b = rng.standard_normal(a.shape).astype(dtype)
    y = on_each_thread_count(lambda: (cpu.add_act(a, b, activation),))[0]
    np.testing.assert_allclose(y, ref.add_act(a, b, activation), **tol(dtype))


@pytest.mark.parametrize("width", range(1, 18))
def test_add_act_every_length_and_in_place(width, rng):
    a = rng.standard_normal(width).astype(np.float32)
    b = rng.standard_normal(width).astype(np.float32)
    want = np.maximum(a.astype(np.float64) + b, 0)
    np.testing.assert_allclose(cpu.add_act(a, b, "relu"), want, rtol=1e-7)
    out = a.copy()
    cpu.add_act(out, b, "relu", out=out)             # out may be one of the inputs
    np.testing.assert_allclose(out, want, rtol=1e-7)


def test_add_act_keeps_nan_and_checks_arguments():
    a = np.array([np.nan, -1.0, 2.0], np.float32)
    y = cpu.add_act(a, np.zeros(3, np.float32), "relu")
    assert np.isnan(y[0]) and y[1] == 0 and y[2] == 2
    with pytest.raises(ValueError, match="shape"):
        cpu.add_act(np.zeros(3), np.zeros(4))
    with pytest.raises(TypeError):
        cpu.add_act(np.zeros(3), np.zeros(3, np.float32))
    with pytest.raises(ValueError, match="activation"):
        cpu.add_act(np.zeros(3), np.zeros(3), "gelu")
    with pytest.raises(ValueError, match="alpha"):
        cpu.add_act(np.zeros(3), np.zeros(3), "leaky_relu", param=-1.0)


@pytest.mark.parametrize("activation", ["relu", "gelu", None])
def test_residual_block_fused_and_unfused_activations(activation, rng):
    """relu runs in the sum's pass (add_act), gelu through its Activation layer,
    None with no activation: all three against a NumPy formula and finite
    differences."""
    block = Residual([Conv2D(3, 3, padding="same", activation="tanh"), Conv2D(3, 1)],
                     activation=activation)
    assert check_layer_gradients(block, (5, 4, 3), batch_size=2) < 1e-6
    x = rng.standard_normal((2, 5, 4, 3))
    inner = block.inner[1].forward(block.inner[0].forward(x))
    total = inner + x
    if activation is not None:
        total = ref.activation_forward(activation, total)
    np.testing.assert_allclose(block.forward(x), total, rtol=1e-12, atol=1e-12)
