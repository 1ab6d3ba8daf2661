"""The elementwise activation kernels of the C backend (csrc/cpu/act*.c) and
their fusion into the dense/conv GEMM write-back, against float64 formulas
written here, the NumPy reference backend, and PyTorch when installed."""
import numpy as np
import pytest

import retroprop as rp
from retroprop import activations
from retroprop.backend import cpu
from retroprop.backend import numpy_ref as ref
from retroprop.gradcheck import check_layer_gradients
from retroprop.layers import ELU, Activation, Conv2D, Dense, LeakyReLU

K = np.sqrt(2 / np.pi)


def _sig(z):
    return 0.5 * (1 + np.tanh(0.5 * z))


def _gelu_grad(z):
    t = np.tanh(K * (z + 0.044715 * z ** 3))
    return 0.5 * (1 + t) + 0.5 * z * (1 - t * t) * K * (1 + 3 * 0.044715 * z * z)


# name -> (forward(z, p), derivative(z, p)); float64 textbook formulas of z.
FORMULAS = {
    "linear": (lambda z, p: z, lambda z, p: np.ones_like(z)),
    "relu": (lambda z, p: np.maximum(z, 0), lambda z, p: (z > 0) * 1.0),
    "sigmoid": (lambda z, p: _sig(p * z), lambda z, p: p * _sig(p * z) * (1 - _sig(p * z))),
    "tanh": (lambda z, p: np.tanh(z), lambda z, p: 1 - np.tanh(z) ** 2),
    "step": (lambda z, p: (z >= 0) * 1.0, lambda z, p: np.zeros_like(z)),
    "leaky_relu": (lambda z, p: np.where(z > 0, z, p * z), lambda z, p: np.where(z > 0, 1, p)),
    "elu": (lambda z, p: np.where(z > 0, z, p * np.expm1(np.minimum(z, 0))),
            lambda z, p: np.where(z > 0, 1, p * np.exp(np.minimum(z, 0)))),
    "arctan": (lambda z, p: np.arctan(z), lambda z, p: 1 / (1 + z * z)),
    "softplus": (lambda z, p: np.logaddexp(0, z), lambda z, p: _sig(z)),
    "gelu": (lambda z, p: 0.5 * z * (1 + np.tanh(K * (z + 0.044715 * z ** 3))),
             lambda z, p: _gelu_grad(z)),
    "swish": (lambda z, p: z * _sig(z), lambda z, p: _sig(z) + z * _sig(z) * (1 - _sig(z))),
    "mish": (lambda z, p: z * np.tanh(np.logaddexp(0, z)),
             lambda z, p: (np.tanh(np.logaddexp(0, z))
                           + z * _sig(z) * (1 - np.tanh(np.logaddexp(0, z)) ** 2))),
}
# (name, param) cases: every activation at its default, the parameterised ones also elsewhere.
CASES = [(name, None) for name in FORMULAS] + [
    ("sigmoid", 3.0), ("leaky_relu", 0.2), ("leaky_relu", 0.0), ("elu", 0.5)]
FUSED_CASES = [c for c in CASES if c[0] in cpu.FUSED_ACTIVATIONS]
IDS = [f"{n}-{p}" for n, p in CASES]
FUSED_IDS = [f"{n}-{p}" for n, p in FUSED_CASES]


def _param(name, param):
    return cpu.ACTIVATION_DEFAULT_PARAMS.get(name, 0.0) if param is None else param


def _tol(dtype):
    return dict(rtol=3e-6, atol=3e-6) if dtype == np.float32 else dict(rtol=1e-12, atol=1e-13)


def _data(size, dtype, seed=0):
    x = np.random.default_rng(seed).standard_normal(size) * 4
    special = [0.0, 1e-7, -1e-7, 0.05, -0.05, -20.0, 20.0, 1.0]
    x[: min(size, len(special))] = special[: min(size, len(special))]
    return x.astype(dtype)


def _check(name, param, x, dtype, against_reference_backend=True):
    """C forward and backward of x against the formulas (and the NumPy reference backend)."""
    f, df = FORMULAS[name]
    p = _param(name, param)
    x64 = x.astype(np.float64)
    y = cpu.activation_forward(name, x, param=param)
    assert y.dtype == dtype and y.shape == x.shape
    np.testing.assert_allclose(y, f(x64, p), **_tol(dtype))
    if against_reference_backend:
        np.testing.assert_allclose(y, ref.activation_forward(name, np.ascontiguousarray(x),
                                                             param=param), **_tol(dtype))
    dy = np.random.default_rng(1).standard_normal(x.shape).astype(dtype)
    dx = cpu.activation_backward(name, y, dy, x=x, param=param)
    assert dx.dtype == dtype
    np.testing.assert_allclose(dx, dy * df(x64, p), **_tol(dtype))


@pytest.fixture
def two_threads():
    previous = cpu.get_num_threads()
    cpu.set_num_threads(2)
    yield
    cpu.set_num_threads(previous)


# ---------------------------------------------------------------- elementwise kernels

@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("size", [1, 7, 13, 67])
@pytest.mark.parametrize("name,param", CASES, ids=IDS)
def test_elementwise_small_sizes(simd, dtype, size, name, param):
    _check(name, param, _data(size, dtype, seed=size), dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name,param", CASES, ids=IDS)
def test_elementwise_large_threaded(two_threads, dtype, name, param):
    # 1000003 (a prime) is above both OpenMP thresholds and not a multiple of any chunk.
    _check(name, param, _data(1000003, dtype, seed=3), dtype, against_reference_backend=False)


@pytest.mark.parametrize("name,param", CASES, ids=IDS)
def test_thread_count_does_not_change_results(name, param):
    x = _data(200003, np.float32, seed=4)
    dy = np.ones_like(x)
    previous = cpu.get_num_threads()
    try:
        results = []
        for n in (1, 2):
            cpu.set_num_threads(n)
            y = cpu.activation_forward(name, x, param=param)
            results.append((y, cpu.activation_backward(name, y, dy, x=x, param=param)))
    finally:
        cpu.set_num_threads(previous)
    np.testing.assert_array_equal(results[0][0], results[1][0])
    np.testing.assert_array_equal(results[0][1], results[1][1])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name,param", CASES, ids=IDS)
def test_non_contiguous_and_in_place(dtype, name, param):
    base = _data(2 * 9 * 11, dtype, seed=5).reshape(18, 11)
    x = base[::2].T                     # strided and transposed: not C-contiguous
    assert not x.flags.c_contiguous
    _check(name, param, x, dtype)
    # In place: out may be the input itself (the layer buffers rely on it).
    y = np.ascontiguousarray(x)
    expected = FORMULAS[name][0](y.astype(np.float64), _param(name, param))
    cpu.activation_forward(name, y, out=y, param=param)
    np.testing.assert_allclose(y, expected, **_tol(dtype))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name,param", CASES, ids=IDS)
def test_extreme_inputs_finite(simd, dtype, name, param):
    big = float(np.finfo(dtype).max)
    x = np.array([-big, -1e30, -1e4, -700, -88.7, -50, 0, 50, 88.7, 700, 1e4, 1e30, big], dtype)
    y = cpu.activation_forward(name, x, param=param)
    dy = np.ones_like(x)
    dx = cpu.activation_backward(name, y, dy, x=x, param=param)
    if name in ("linear", "relu", "leaky_relu", "swish", "gelu", "softplus", "elu", "mish"):
        finite = np.abs(x) < 1e30   # these grow like x itself, and x * p may overflow
    else:
        finite = np.ones(x.shape, bool)
    assert np.all(np.isfinite(y[finite])) and np.all(np.isfinite(dx[finite])), (y, dx)
    assert not np.any(np.isnan(y)) and not np.any(np.isnan(dx))
    moderate = np.abs(x) <= 1e4
    p = _param(name, param)
    with np.errstate(over="ignore", invalid="ignore"):
        f, df = FORMULAS[name]
        x64 = x[moderate].astype(np.float64)
        np.testing.assert_allclose(y[moderate], f(x64, p), **_tol(dtype))
        np.testing.assert_allclose(dx[moderate], np.nan_to_num(df(x64, p)), **_tol(dtype))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name,param", CASES, ids=IDS)
def test_infinite_inputs_give_the_same_result_on_every_simd_path(dtype, name, param):
    """+-inf (and values past e^x's overflow) give what the portable path
    gives: the same infinities and NaNs, the same limits. The AVX2 e^x once
    stopped at e^88, so its sigmoid(-inf) was 6e-39 and swish(-inf) -inf
    where the portable path (and PyTorch) say 0 and NaN."""
    if cpu.backend_info()["simd_best"] == "generic":
        pytest.skip("no second SIMD path on this CPU")
    x = np.array([-np.inf, np.inf, -1e4, -100, -88.8, -88.7, -87.5, 87.5, 88.7, 88.8, 100, 1e4]
                 + [0.5] * 7, dtype)          # 19 elements: vector + tail
    results = {}
    previous = cpu.backend_info()["simd"]
    try:
        for level in ("generic", cpu.backend_info()["simd_best"]):
            cpu.set_simd(level)
            y = cpu.activation_forward(name, x, param=param)
            dx = cpu.activation_backward(name, y, np.ones_like(x), x=x, param=param)
            results[level] = (y, dx)
    finally:
        cpu.set_simd(previous)
    (y0, dx0), (y1, dx1) = results.values()
    for got, want in ((y1, y0), (dx1, dx0)):
        np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
        np.testing.assert_array_equal(np.isinf(got), np.isinf(want))
        np.testing.assert_allclose(got, want, rtol=3e-6, atol=1e-30)   # tiny tails may differ
    if name == "sigmoid":
        assert y1[0] == 0.0 and y1[1] == 1.0


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name,param", CASES, ids=IDS)
def test_nan_input_gives_nan_output(simd, dtype, name, param):
    # A NaN must never be turned into a number (the AVX2 e^x once clamped it
    # into range, so sigmoid(NaN) came out as 1). 19 elements: vector + tail.
    x = _data(19, dtype, seed=11)
    x[[0, 9, 18]] = np.nan
    y = cpu.activation_forward(name, x, param=param)
    assert np.all(np.isnan(y[[0, 9, 18]])), y
    assert not np.any(np.isnan(np.delete(y, [0, 9, 18])))
    if name in ("linear", "step", "relu", "leaky_relu"):
        # Piecewise-constant derivatives pick a side by a comparison that NaN
        # fails (as in PyTorch): dy * 1, 0 or the slope, not NaN.
        return
    dx = cpu.activation_backward(name, y, np.ones_like(x), x=x, param=param)
    assert np.all(np.isnan(dx[[0, 9, 18]])), dx


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name", ["relu", "sigmoid", "tanh", "step", "leaky_relu", "elu"])
def test_nan_row_through_fused_dense_stays_nan(simd, dtype, name):
    # The GEMM write-back applies the activation in registers: a NaN input row
    # must come out as a NaN output row there too, at every tile position.
    rng = np.random.default_rng(3)
    x = rng.standard_normal((13, 7)).astype(dtype)
    x[[0, 6, 12], 2] = np.nan
    y = cpu.dense_forward(x, rng.standard_normal((7, 19)).astype(dtype), None, name)
    assert np.all(np.isnan(y[[0, 6, 12]]))
    assert not np.any(np.isnan(np.delete(y, [0, 6, 12], axis=0)))


def test_step_heaviside_zero_gradient_even_for_infinite_dy():
    x = np.array([-1.0, -1e-30, 0.0, 1e-30, 2.0] * 5, np.float32)  # 25: vector and tail
    y = cpu.activation_forward("step", x)
    np.testing.assert_array_equal(y, [0, 0, 1, 1, 1] * 5)
    dx = cpu.activation_backward("step", y, np.full_like(x, np.inf))
    np.testing.assert_array_equal(dx, 0.0)


def test_sigmoid_slope_approaches_heaviside():
    x = np.array([-0.5, -0.01, 0.01, 0.5])
    errors = [np.abs(cpu.activation_forward("sigmoid", x, param=a) - (x >= 0)).max()
              for a in (1, 10, 100, 1e4)]
    assert all(b < a for a, b in zip(errors, errors[1:])) and errors[-1] < 1e-12


def test_gelu_is_the_tanh_form_close_to_erf():
    from math import erf, sqrt
    x = np.linspace(-4, 4, 81)
    exact = np.array([v * 0.5 * (1 + erf(v / sqrt(2))) for v in x])
    y = cpu.activation_forward("gelu", x)
    np.testing.assert_allclose(y, FORMULAS["gelu"][0](x, 0), rtol=1e-13, atol=1e-15)
    assert 1e-5 < np.abs(y - exact).max() < 1e-3   # the approximation, not exact erf


# ---------------------------------------------------------------- bad input

def test_bad_input_errors():
    x = np.zeros(5, np.float32)
    with pytest.raises(ValueError, match="activation"):
        cpu.activation_forward("softsign", x)
    with pytest.raises(TypeError, match="float32 or float64"):
        cpu.activation_forward("gelu", np.zeros(5, np.int32))
    with pytest.raises(TypeError, match="dy"):
        cpu.activation_backward("elu", x, np.zeros(5, np.float64))
    with pytest.raises(ValueError, match="needs the input x"):
        cpu.activation_backward("gelu", x, x)
    with pytest.raises(ValueError, match="shape"):
        cpu.activation_backward("swish", None, np.zeros(4, np.float32), x=x)
    with pytest.raises(ValueError, match="slope"):
        cpu.activation_forward("sigmoid", x, param=0.0)
    with pytest.raises(ValueError, match="alpha"):
        cpu.activation_forward("leaky_relu", x, param=-0.1)
    with pytest.raises(ValueError, match="finite"):
        cpu.activation_forward("elu", x, param=float("nan"))
    # Only derivative-from-output activations can be fused into dense/conv.
    with pytest.raises(ValueError, match="gelu"):
        cpu.dense_forward(np.zeros((2, 3)), np.zeros((3, 4)), None, "gelu")
    with pytest.raises(ValueError, match="alpha"):
        activations.get("leaky_relu", alpha=-1)
    with pytest.raises(ValueError, match="alpha"):
        ELU(alpha=float("inf"))


# ---------------------------------------------------------------- GEMM write-back fusion

# Shapes that take each GEMM path: direct (tiny), one-row AVX2 kernel, and the
# blocked path with full and edge tiles.
DENSE_SHAPES = [(3, 5, 7), (1, 70, 45), (2, 33, 20), (37, 50, 45)]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", DENSE_SHAPES)
@pytest.mark.parametrize("name,param", FUSED_CASES, ids=FUSED_IDS)
def test_dense_fuses_activation_with_parameter(simd, dtype, shape, name, param):
    n, k, m = shape
    rng = np.random.default_rng(n * k + m)
    x = rng.standard_normal((n, k)).astype(dtype)
    w = (rng.standard_normal((k, m)) / np.sqrt(k)).astype(dtype)
    b = rng.standard_normal(m).astype(dtype)
    y = cpu.dense_forward(x, w, b, name, param=param)
    z = x.astype(np.float64) @ w.astype(np.float64) + b
    tol = dict(rtol=2e-5, atol=2e-5) if dtype == np.float32 else dict(rtol=1e-11, atol=1e-12)
    f, df = FORMULAS[name]
    p = _param(name, param)
    np.testing.assert_allclose(y, f(z, p), **tol)

    dy = rng.standard_normal((n, m)).astype(dtype)
    dw, db, dx = np.empty_like(w), np.empty_like(b), np.empty_like(x)
    cpu.dense_backward(x, w, y, dy, name, dw, db=db, dx=dx, param=param)
    # The derivative is read from y (what the kernel saw), as the reference backend does.
    dz = ref.activation_backward(name, y.astype(np.float64), dy.astype(np.float64), param=param)
    np.testing.assert_allclose(db, dz.sum(0), **tol)
    np.testing.assert_allclose(dw, x.T.astype(np.float64) @ dz, **tol)
    np.testing.assert_allclose(dx, dz @ w.T.astype(np.float64), **tol)


@pytest.mark.parametrize("name", ["step", "leaky_relu", "elu"])
def test_conv2d_fuses_new_activations_by_name(name):
    rng = np.random.default_rng(7)
    x = rng.standard_normal((2, 7, 6, 3))
    w = rng.standard_normal((3, 3, 3, 5))
    b = rng.standard_normal(5)
    geometry = dict(stride=(1, 1), dilation=(1, 1), padding=(1, 1, 1, 1))
    y = cpu.conv2d_forward(x, w, b, name, **geometry)
    np.testing.assert_allclose(y, ref.conv2d_forward(x, w, b, name, **geometry), rtol=1e-12,
                               atol=1e-12)
    dy = rng.standard_normal(y.shape)
    grads = [np.empty_like(w), np.empty_like(b), np.empty_like(x)]
    expected = [np.empty_like(w), np.empty_like(b), np.empty_like(x)]
    cpu.conv2d_backward(x, w, y, dy, name, *grads, **geometry)
    ref.conv2d_backward(x, w, y, dy, name, *expected, **geometry)
    for got, want in zip(grads, expected):
        np.testing.assert_allclose(got, want, rtol=1e-11, atol=1e-12)


# ---------------------------------------------------------------- layers and gradients

def _away_from_kinks(shape, seed):
    x = np.random.default_rng(seed).standard_normal(shape)
    return np.where(np.abs(x) < 1e-2, 0.5, x)


@pytest.mark.parametrize("name,param", CASES, ids=IDS)
def test_dense_gradcheck_every_activation(name, param):
    kwargs = {} if param is None else {"slope" if name == "sigmoid" else "alpha": param}
    act = activations.get(name, **kwargs)
    layer = Dense(4, activation=act, bias_initializer="normal")
    layer.build((5,), "float64", np.random.default_rng(2))
    x = _away_from_kinks((6, 5), seed=3)
    z = x @ layer.params["W"] + layer.params["b"]
    assert np.abs(z).min() > 1e-3          # no kink inside the finite differences
    assert check_layer_gradients(layer, (5,), x=x) < 1e-6
    # Fused (from the output) exactly when the derivative allows it.
    assert act.fusable == (name in cpu.FUSED_ACTIVATIONS)
    assert (layer.logits is None) == act.fusable or name == "linear"


@pytest.mark.parametrize("name,alpha", [("leaky_relu", 0.2), ("elu", 0.5), ("leaky_relu", 0.01),
                                        ("elu", 1.0)])
def test_conv2d_gradcheck_parameterised_activations(name, alpha):
    # Non-default alpha: elementwise kernel after the convolution; default: fused by name.
    act = activations.get(name, alpha=alpha)
    assert act.fused == (alpha == cpu.ACTIVATION_DEFAULT_PARAMS[name])
    layer = Conv2D(3, 2, padding="same", activation=act, bias_initializer="normal")
    x = _away_from_kinks((2, 4, 4, 2), seed=6)
    assert check_layer_gradients(layer, (4, 4, 2), x=x) < 1e-6


@pytest.mark.parametrize("layer_cls,alpha", [(LeakyReLU, 0.3), (ELU, 0.7)])
def test_activation_layers_use_the_kernels(layer_cls, alpha):
    x = _away_from_kinks((5, 9), seed=8)
    layer = layer_cls(alpha)
    assert check_layer_gradients(layer, (9,), x=x) < 1e-6
    name = "leaky_relu" if layer_cls is LeakyReLU else "elu"
    y = layer.forward(x)
    np.testing.assert_allclose(y, FORMULAS[name][0](x, alpha), rtol=1e-13, atol=1e-15)
    # Same numbers as the equivalent Activation layer.
    other = Activation(name, alpha=alpha)
    other.build((9,), "float64", np.random.default_rng(0))
    np.testing.assert_array_equal(other.forward(x), y)


def test_models_agree_across_backends():
    x = _away_from_kinks((8, 6), seed=9)

    def predict(backend):
        model = rp.Sequential([Dense(7, activation=activations.get("elu", alpha=0.4)),
                               Dense(7, activation="gelu"), Dense(5, activation="swish"),
                               Dense(4, activation=activations.get("leaky_relu", alpha=0.1)),
                               Dense(3, activation="softplus"), Dense(2, activation="arctan")],
                              input_shape=(6,), dtype="float64", seed=1)
        for layer in model.layers:
            layer.backend = backend
        return model.predict(x)

    np.testing.assert_allclose(predict(cpu), predict(ref), rtol=1e-12, atol=1e-14)


# ---------------------------------------------------------------- PyTorch

def _torch_fn(torch, name, p):
    F = torch.nn.functional
    return {
        "linear": lambda t: t, "relu": F.relu, "tanh": torch.tanh,
        "sigmoid": lambda t: torch.sigmoid(p * t),
        "step": lambda t: torch.heaviside(t, torch.ones_like(t)),
        "leaky_relu": lambda t: F.leaky_relu(t, p), "elu": lambda t: F.elu(t, p),
        "arctan": torch.atan, "softplus": F.softplus,
        "gelu": lambda t: F.gelu(t, approximate="tanh"), "swish": F.silu, "mish": F.mish,
    }[name]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name,param", CASES, ids=IDS)
def test_against_torch(dtype, name, param):
    torch = pytest.importorskip("torch")
    x = _data(1001, dtype, seed=10)
    x[np.abs(x) < 1e-3] = 0.5            # torch and we may differ on the kink's side
    p = _param(name, param)
    t = torch.tensor(x, requires_grad=name != "step")
    ty = _torch_fn(torch, name, p)(t)
    dy = np.random.default_rng(11).standard_normal(x.shape).astype(dtype)
    if name != "step":
        ty.backward(torch.tensor(dy))
        expected_dx = t.grad.numpy()
    else:
        expected_dx = np.zeros_like(x)
    y = cpu.activation_forward(name, x, param=param)
    dx = cpu.activation_backward(name, y, dy, x=x, param=param)
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == np.float32 else dict(rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(y, ty.detach().numpy(), **tol)
    np.testing.assert_allclose(dx, expected_dx, **tol)
