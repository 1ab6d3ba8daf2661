"""Activations and losses as plain functions on NumPy arrays (issue 25's Python API)."""
import math

import numpy as np
import pytest

import retroprop as rp
from retroprop import activations


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


# Independent textbook formulas, and their derivatives.
REFERENCE = {
    "linear": (lambda x: x, lambda x: np.ones_like(x)),
    "relu": (lambda x: np.maximum(x, 0), lambda x: (x > 0).astype(float)),
    "sigmoid": (_sigmoid, lambda x: _sigmoid(x) * (1 - _sigmoid(x))),
    "tanh": (np.tanh, lambda x: 1 - np.tanh(x) ** 2),
    "step": (lambda x: (x >= 0).astype(float), lambda x: np.zeros_like(x)),
    "arctan": (np.arctan, lambda x: 1 / (1 + x ** 2)),
    "leaky_relu": (lambda x: np.where(x > 0, x, 0.01 * x), lambda x: np.where(x > 0, 1, 0.01)),
    "elu": (lambda x: np.where(x > 0, x, np.exp(x) - 1), lambda x: np.where(x > 0, 1, np.exp(x))),
    "softplus": (lambda x: np.log1p(np.exp(x)), _sigmoid),
    "gelu": (lambda x: 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3))),
             None),
    "swish": (lambda x: x * _sigmoid(x),
              lambda x: _sigmoid(x) + x * _sigmoid(x) * (1 - _sigmoid(x))),
}


def points():
    x = np.linspace(-3, 3, 61)
    return x[np.abs(x) > 1e-9]      # away from the kinks at 0


@pytest.mark.parametrize("name", sorted(REFERENCE))
def test_module_function_and_get_are_callable(name):
    x = points()
    ref, dref = REFERENCE[name]
    fn = getattr(activations, name)
    np.testing.assert_allclose(fn(x), ref(x), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(activations.get(name)(x), ref(x), rtol=1e-12, atol=1e-12)
    # The derivative, against the formula and against central differences.
    h = 1e-6
    numeric = (fn(x + h) - fn(x - h)) / (2 * h)
    np.testing.assert_allclose(fn.derivative(x), numeric, atol=1e-6)
    if dref is not None:
        np.testing.assert_allclose(fn.derivative(x), dref(x), rtol=1e-12, atol=1e-12)


def test_input_is_not_modified_and_dtypes():
    x = np.array([-1.0, 2.0], dtype=np.float32)
    y = activations.relu(x)
    assert y.dtype == np.float32 and x.tolist() == [-1.0, 2.0]
    assert activations.relu([-1, 3]).dtype == np.float64       # ints -> float64
    assert activations.sigmoid(0) == 0.5                        # a scalar in, a scalar out
    assert activations.tanh.derivative(0.0) == 1.0
    strided = np.arange(12.0).reshape(3, 4)[:, ::2] - 5         # non-contiguous
    np.testing.assert_array_equal(activations.relu(strided), np.maximum(strided, 0))
    with pytest.raises(TypeError, match="expected numbers"):
        activations.relu(np.array(["a"]))


def test_hyper_parameters_as_keywords():
    x = np.array([-2.0, 1.0])
    np.testing.assert_allclose(activations.leaky_relu(x, alpha=0.2), [-0.4, 1.0])
    np.testing.assert_allclose(activations.get("leaky_relu", alpha=0.2)(x), [-0.4, 1.0])
    np.testing.assert_allclose(activations.sigmoid(x, slope=3.0), _sigmoid(3 * x))
    np.testing.assert_allclose(activations.sigmoid.derivative(x, slope=3.0),
                               3 * _sigmoid(3 * x) * (1 - _sigmoid(3 * x)))
    np.testing.assert_allclose(activations.elu(x, alpha=0.5), [0.5 * (np.exp(-2) - 1), 1.0])
    with pytest.raises(TypeError, match="does not accept"):
        activations.relu(x, alpha=1.0)


def test_softmax_function_and_gradient():
    x = np.array([[1.0, 2.0, 3.0], [0.0, 0.0, 0.0]])
    e = np.exp(x - x.max(axis=1, keepdims=True))
    p = e / e.sum(axis=1, keepdims=True)
    np.testing.assert_allclose(activations.softmax(x), p, rtol=1e-12)
    np.testing.assert_allclose(activations.softmax(x[0]), p[0], rtol=1e-12)   # 1-D: one row
    dy = np.array([[1.0, -2.0, 0.5], [0.3, 0.1, -0.7]])
    jac = np.stack([np.diag(r) - np.outer(r, r) for r in p])
    np.testing.assert_allclose(activations.softmax.gradient(x, dy),
                               np.einsum("nij,ni->nj", jac, dy), rtol=1e-12, atol=1e-15)
    with pytest.raises(ValueError, match="not elementwise.*gradient"):
        activations.softmax.derivative(x)
    with pytest.raises(ValueError, match="dy has shape"):
        activations.tanh.gradient(x, dy[:1])


def test_losses_are_callable():
    y = np.array([[1.0, 0.0], [0.0, 1.0]])
    p = np.array([[0.8, 0.2], [0.4, 0.6]])
    assert rp.losses.get("mse")(y, p) == pytest.approx(np.mean((y - p) ** 2))
    np.testing.assert_allclose(rp.losses.get("mse").gradient(y, p), 2 * (p - y) / p.size)
    assert rp.losses.get("categorical_crossentropy")([0, 1], p) == \
        pytest.approx(-np.mean(np.log([0.8, 0.6])))
