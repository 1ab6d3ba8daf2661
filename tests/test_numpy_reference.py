"""The NumPy reference backend against formulas written out independently here."""
import numpy as np
import pytest

from retroprop.backend import get_backend

ref = get_backend("numpy")

DTYPES = [np.float32, np.float64]


def tol(dtype):
    return dict(rtol=1e-5, atol=1e-6) if dtype == np.float32 else dict(rtol=1e-12, atol=1e-12)


def rand(rng, shape, dtype):
    return rng.standard_normal(shape).astype(dtype)


# -- gemm ----------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("trans_a", [False, True])
@pytest.mark.parametrize("trans_b", [False, True])
def test_gemm_transposes_alpha_beta(rng, dtype, trans_a, trans_b):
    m, k, n = 5, 7, 3
    a = rand(rng, (k, m) if trans_a else (m, k), dtype)
    b = rand(rng, (n, k) if trans_b else (k, n), dtype)
    c0 = rand(rng, (m, n), dtype)
    opa = a.T if trans_a else a
    opb = b.T if trans_b else b
    expected = np.zeros((m, n))
    for i in range(m):
        for j in range(n):
            expected[i, j] = 0.5 * sum(float(opa[i, p]) * float(opb[p, j]) for p in range(k))
    expected += 2.0 * c0.astype(np.float64)

    out = c0.copy()
    result = ref.gemm(a, b, out, trans_a=trans_a, trans_b=trans_b, alpha=0.5, beta=2.0)
    assert result is out
    np.testing.assert_allclose(out, expected, **tol(dtype))


def test_gemm_allocates_and_beta_zero_ignores_nan(rng):
    a = rand(rng, (4, 3), np.float64)
    b = rand(rng, (3, 2), np.float64)
    np.testing.assert_allclose(ref.gemm(a, b), a @ b)
    out = np.full((4, 2), np.nan)
    ref.gemm(a, b, out, beta=0.0)
    np.testing.assert_allclose(out, a @ b)
    with pytest.raises(ValueError, match="beta"):
        ref.gemm(a, b, beta=1.0)


def test_gemm_validation(rng):
    a = rand(rng, (4, 3), np.float32)
    with pytest.raises(TypeError, match="a"):
        ref.gemm(a.astype(np.int32), a.T.copy())
    with pytest.raises(TypeError, match="b"):
        ref.gemm(a, a.T.astype(np.float64))
    with pytest.raises(ValueError, match="inner"):
        ref.gemm(a, a)
    with pytest.raises(ValueError, match="out"):
        ref.gemm(a, a.T.copy(), np.zeros((3, 3), np.float32))


# -- elementwise activations ----------------------------------------------------

def sigmoid_formula(z):
    return np.array([1.0 / (1.0 + np.exp(-v)) if v >= 0 else np.exp(v) / (1.0 + np.exp(v))
                     for v in z.ravel()]).reshape(z.shape)


FORWARD = {
    "linear": lambda z: z,
    "relu": lambda z: np.where(z > 0, z, 0.0),
    "sigmoid": sigmoid_formula,
    "tanh": np.tanh,
}
DERIVATIVE_FROM_OUTPUT = {
    "linear": lambda y: np.ones_like(y),
    "relu": lambda y: (y > 0).astype(y.dtype),
    "sigmoid": lambda y: y * (1 - y),
    "tanh": lambda y: 1 - y ** 2,
}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", list(FORWARD))
def test_activation_forward_backward(rng, dtype, name):
    x = rand(rng, (6, 5), dtype) * 3
    y = ref.activation_forward(name, x)
    np.testing.assert_allclose(y, FORWARD[name](x.astype(np.float64)), **tol(dtype))
    dy = rand(rng, x.shape, dtype)
    out = np.empty_like(x)
    dx = ref.activation_backward(name, y, dy, out=out)
    assert dx is out
    np.testing.assert_allclose(dx, dy * DERIVATIVE_FROM_OUTPUT[name](y), **tol(dtype))


def test_activation_in_place_and_relu_kink():
    x = np.array([-2.0, 0.0, 3.0])
    ref.activation_forward("relu", x, out=x)
    np.testing.assert_array_equal(x, [0.0, 0.0, 3.0])
    dx = ref.activation_backward("relu", np.array([0.0, 1.0]), np.array([5.0, 5.0]))
    np.testing.assert_array_equal(dx, [0.0, 5.0])


@pytest.mark.parametrize("dtype", DTYPES)
def test_sigmoid_is_stable_at_extremes(dtype):
    x = np.array([-1e4, -800.0, -50.0, 0.0, 50.0, 800.0, 1e4], dtype=dtype)
    # Underflow to 0 is fine; overflow or NaN is not.
    with np.errstate(over="raise", invalid="raise", divide="raise"):
        y = ref.activation_forward("sigmoid", x)
    assert np.all(np.isfinite(y))
    assert y[0] == 0.0 and y[-1] == 1.0 and y[3] == 0.5
    assert np.all(np.diff(y) >= 0)


def test_activation_validation():
    with pytest.raises(ValueError, match="softsign"):
        ref.activation_forward("softsign", np.zeros(3))
    with pytest.raises(ValueError, match="needs the input x"):
        ref.activation_backward("gelu", np.zeros(3), np.zeros(3))
    with pytest.raises(ValueError, match="softplus"):
        ref.dense_forward(np.zeros((2, 3)), np.zeros((3, 4)), None, "softplus")
    with pytest.raises(ValueError, match="alpha"):
        ref.activation_forward("elu", np.zeros(3), param=-1.0)
    with pytest.raises(TypeError, match="x"):
        ref.activation_forward("relu", np.zeros(3, dtype=np.int64))
    with pytest.raises(ValueError, match="dy"):
        ref.activation_backward("relu", np.zeros(3), np.zeros(4))


# -- dense ----------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", list(FORWARD))
@pytest.mark.parametrize("use_bias", [True, False])
def test_dense_forward_backward(rng, dtype, name, use_bias):
    n, k, m = 4, 6, 3
    x, w = rand(rng, (n, k), dtype), rand(rng, (k, m), dtype)
    b = rand(rng, (m,), dtype) if use_bias else None
    z = x.astype(np.float64) @ w.astype(np.float64)
    if use_bias:
        z = z + b
    y = ref.dense_forward(x, w, b, name)
    np.testing.assert_allclose(y, FORWARD[name](z), **tol(dtype))

    dy = rand(rng, (n, m), dtype)
    dz = dy.astype(np.float64) * DERIVATIVE_FROM_OUTPUT[name](y.astype(np.float64))
    # Garbage in the outputs: the kernel must overwrite, not accumulate.
    dw = np.full_like(w, 7.0)
    db = np.full((m,), 7.0, dtype=dtype)
    dx = np.full_like(x, 7.0)
    returned = ref.dense_backward(x, w, y, dy, name, dw, db=db if use_bias else None, dx=dx)
    assert returned is dx
    np.testing.assert_allclose(dw, x.astype(np.float64).T @ dz, **tol(dtype))
    np.testing.assert_allclose(dx, dz @ w.astype(np.float64).T, **tol(dtype))
    if use_bias:
        np.testing.assert_allclose(db, dz.sum(axis=0), **tol(dtype))


def test_dense_backward_without_dx_returns_none(rng):
    x, w = rand(rng, (3, 2), np.float64), rand(rng, (2, 4), np.float64)
    y = ref.dense_forward(x, w, None, "tanh")
    dw = np.zeros_like(w)
    assert ref.dense_backward(x, w, y, np.ones_like(y), "tanh", dw) is None
    assert np.any(dw != 0)


def test_dense_validation(rng):
    x, w = rand(rng, (3, 2), np.float32), rand(rng, (2, 4), np.float32)
    with pytest.raises(ValueError, match="features"):
        ref.dense_forward(x, w.T.copy(), None, "relu")
    with pytest.raises(ValueError, match="b"):
        ref.dense_forward(x, w, np.zeros(3, np.float32), "relu")
    with pytest.raises(TypeError, match="w"):
        ref.dense_forward(x, w.astype(np.float64), None, "relu")
    with pytest.raises(ValueError, match="out"):
        ref.dense_forward(x, w, None, "relu", out=np.zeros((3, 3), np.float32))


# -- softmax and softmax cross-entropy ----------------------------------------------

def softmax_formula(z):
    z = np.asarray(z, dtype=np.float64)
    rows = []
    for row in z:
        m = max(row)
        e = [np.exp(v - m) for v in row]
        s = sum(e)
        rows.append([v / s for v in e])
    return np.array(rows)


@pytest.mark.parametrize("dtype", DTYPES)
def test_softmax(rng, dtype):
    x = rand(rng, (5, 4), dtype) * 4
    y = ref.softmax(x)
    np.testing.assert_allclose(y, softmax_formula(x), **tol(dtype))
    np.testing.assert_allclose(y.sum(axis=1), 1.0, **tol(dtype))


@pytest.mark.parametrize("dtype", DTYPES)
def test_softmax_extreme_values_are_finite(dtype):
    x = np.array([[1e4, -1e4, 0.0], [1e4, 1e4, 1e4], [-1e4, -1e4, -1e4]], dtype=dtype)
    with np.errstate(over="raise", invalid="raise"):
        y = ref.softmax(x)
    np.testing.assert_allclose(y, [[1, 0, 0], [1 / 3] * 3, [1 / 3] * 3], rtol=1e-6)


def sce_formula(z, t_onehot):
    z = np.asarray(z, dtype=np.float64)
    n = z.shape[0]
    total = 0.0
    for i in range(n):
        m = max(z[i])
        lse = m + np.log(sum(np.exp(v - m) for v in z[i]))
        total += lse - sum(t_onehot[i, c] * z[i, c] for c in range(z.shape[1]))
    grad = (softmax_formula(z) - t_onehot) / n
    return total / n, grad


@pytest.mark.parametrize("dtype", DTYPES)
def test_softmax_cross_entropy_ids_and_onehot(rng, dtype):
    n, c = 6, 4
    z = rand(rng, (n, c), dtype) * 3
    ids = rng.integers(0, c, size=n).astype(np.int64)
    onehot = np.eye(c, dtype=dtype)[ids]
    expected_loss, expected_grad = sce_formula(z, onehot)
    for targets in (ids, onehot):
        grad = np.full((n, c), 9.0, dtype=dtype)
        loss, g = ref.softmax_cross_entropy(z, targets, grad=grad)
        assert g is grad and isinstance(loss, float)
        assert loss == pytest.approx(expected_loss, rel=1e-6 if dtype == np.float32 else 1e-12)
        np.testing.assert_allclose(g, expected_grad, **tol(dtype))


def test_softmax_cross_entropy_soft_targets(rng):
    z = rand(rng, (3, 5), np.float64)
    t = rng.random((3, 5))
    t /= t.sum(axis=1, keepdims=True)
    expected_loss, expected_grad = sce_formula(z, t)
    loss, grad = ref.softmax_cross_entropy(z, t)
    assert loss == pytest.approx(expected_loss, rel=1e-12)
    np.testing.assert_allclose(grad, expected_grad, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("dtype", DTYPES)
def test_softmax_cross_entropy_extreme_logits(dtype):
    z = np.array([[1e4, -1e4], [1e4, -1e4], [-1e4, 1e4]], dtype=dtype)
    ids = np.array([0, 1, 1], dtype=np.int64)
    with np.errstate(over="raise", invalid="raise", divide="raise"):
        loss, grad = ref.softmax_cross_entropy(z, ids)
    # Rows: correct with margin 2e4 (loss 0), wrong by 2e4 (loss 2e4), correct (0).
    assert np.isfinite(loss)
    assert loss == pytest.approx(2e4 / 3, rel=1e-6)
    assert np.all(np.isfinite(grad))
    np.testing.assert_allclose(grad, [[0, 0], [1 / 3, -1 / 3], [0, 0]], atol=1e-7)
    loss_onehot, _ = ref.softmax_cross_entropy(z, np.eye(2, dtype=dtype)[ids])
    assert loss_onehot == pytest.approx(loss, rel=1e-6)


def test_softmax_cross_entropy_validation():
    z = np.zeros((2, 3))
    with pytest.raises(ValueError, match="out of range"):
        ref.softmax_cross_entropy(z, np.array([0, 3]))
    with pytest.raises(ValueError, match="out of range"):
        ref.softmax_cross_entropy(z, np.array([-1, 0]))
    with pytest.raises(ValueError, match="shape"):
        ref.softmax_cross_entropy(z, np.array([0, 1, 2]))
    with pytest.raises(TypeError, match="targets"):
        ref.softmax_cross_entropy(z, np.zeros((2, 3), dtype=np.float32))
    with pytest.raises(ValueError, match="shape"):
        ref.softmax_cross_entropy(z, np.zeros((2, 4)))


# -- sgd_step ------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("momentum,nesterov",
                         [(0.0, False), (0.9, False), (0.9, True), (0.5, True)])
@pytest.mark.parametrize("weight_decay", [0.0, 0.01])
def test_sgd_step_formulas(rng, dtype, momentum, nesterov, weight_decay):
    lr = 0.1
    p = rand(rng, (4, 3), dtype)
    v = np.zeros_like(p)
    p_ref = p.astype(np.float64)
    v_ref = np.zeros_like(p_ref)
    for _ in range(3):
        g = rand(rng, p.shape, dtype)
        grad_copy = g.copy()
        ref.sgd_step(p, g, v if momentum else None, lr=lr, momentum=momentum,
                     nesterov=nesterov, weight_decay=weight_decay)
        np.testing.assert_array_equal(g, grad_copy)  # grad is not modified
        # Formula, written element by element.
        for i in np.ndindex(p.shape):
            gi = float(g[i]) + weight_decay * p_ref[i]
            if momentum == 0.0:
                p_ref[i] -= lr * gi
            else:
                v_ref[i] = momentum * v_ref[i] + gi
                step = gi + momentum * v_ref[i] if nesterov else v_ref[i]
                p_ref[i] -= lr * step
        np.testing.assert_allclose(p, p_ref, **tol(dtype))
        if momentum:
            np.testing.assert_allclose(v, v_ref, **tol(dtype))


def test_sgd_step_validation():
    p = np.zeros(3)
    with pytest.raises(ValueError, match="velocity"):
        ref.sgd_step(p, np.ones(3), None, lr=0.1, momentum=0.9)
    with pytest.raises(ValueError, match="grad"):
        ref.sgd_step(p, np.ones(4), None, lr=0.1)
    with pytest.raises(TypeError, match="param"):
        ref.sgd_step(np.zeros(3, dtype=np.int32), np.ones(3), None, lr=0.1)


def test_runtime_info():
    ref.set_num_threads(4)
    assert ref.get_num_threads() == 1
    assert ref.backend_info()["backend"] == "numpy"
    with pytest.raises(ValueError):
        ref.set_num_threads(0)
    assert ref.FUSED_ACTIVATIONS == ("linear", "relu", "sigmoid", "tanh", "step", "leaky_relu",
                                     "elu")
