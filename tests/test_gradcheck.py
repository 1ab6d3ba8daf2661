"""Backprop gradients against central finite differences (float64)."""
import numpy as np
import pytest

import retroprop as rp
from retroprop.layers import Activation, Dense

TOL = 1e-6
ACTIVATIONS = ["linear", "relu", "sigmoid", "tanh", "softmax"]


def data(n=6, features=4, classes=3, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, features))
    ids = rng.integers(0, classes, size=n)
    return x, ids, np.eye(classes)[ids]


def assert_away_from_relu_kinks(model, x, margin=1e-3):
    """Finite differences across relu's kink are meaningless: check the data avoids it."""
    h = np.asarray(x, dtype=np.float64)
    for layer in model.layers:
        z = h @ layer.params["W"] + layer.params.get("b", 0.0)
        if layer.activation.name == "relu":
            assert np.min(np.abs(z)) > margin
        h = layer.forward(h).copy()


@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_dense_every_activation_mse(activation):
    x, _, onehot = data()
    model = rp.Sequential([Dense(3, activation=activation, bias_initializer="normal")],
                          input_shape=(4,), dtype="float64", seed=1)
    assert_away_from_relu_kinks(model, x)
    assert rp.gradcheck(model, x, onehot, loss="mse") < TOL


@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_dense_layer_alone(activation):
    layer = Dense(5, activation=activation, bias_initializer="normal")
    assert rp.check_layer_gradients(layer, (4,), batch_size=3, seed=2) < TOL


@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_activation_layer_alone(activation):
    layer = Activation(activation)
    assert rp.check_layer_gradients(layer, (6,), batch_size=3, seed=3) < TOL


@pytest.mark.parametrize("targets", ["ids", "onehot"])
@pytest.mark.parametrize("output", ["softmax", "sigmoid"])
def test_categorical_crossentropy(targets, output):
    # softmax output: the fused softmax + cross-entropy path;
    # sigmoid output: the plain cross-entropy gradient on probabilities.
    x, ids, onehot = data(n=7)
    model = rp.Sequential([Dense(6, activation="tanh"), Dense(3, activation=output)],
                          input_shape=(4,), dtype="float64", seed=4)
    y = ids if targets == "ids" else onehot
    assert rp.gradcheck(model, x, y, loss="categorical_crossentropy") < TOL


@pytest.mark.parametrize("targets", ["ids", "onehot"])
def test_crossentropy_from_logits(targets):
    x, ids, onehot = data(n=5)
    model = rp.Sequential([Dense(6, activation="sigmoid"), Dense(3)],
                          input_shape=(4,), dtype="float64", seed=5)
    loss = rp.losses.CategoricalCrossentropy(from_logits=True)
    assert rp.gradcheck(model, x, ids if targets == "ids" else onehot, loss=loss) < TOL


def test_softmax_as_separate_activation_layer():
    x, ids, _ = data()
    model = rp.Sequential([Dense(3), Activation("softmax")],
                          input_shape=(4,), dtype="float64", seed=6)
    assert rp.gradcheck(model, x, ids) < TOL


def test_mse_regression_with_column_targets():
    x, _, _ = data()
    y = np.sin(x.sum(axis=1))
    model = rp.Sequential([Dense(5, activation="tanh"), Dense(1)],
                          input_shape=(4,), dtype="float64", seed=7)
    assert rp.gradcheck(model, x, y, loss="mse") < TOL


def test_four_layer_mlp():
    x, ids, _ = data(n=8, features=5, classes=4, seed=8)
    model = rp.Sequential([
        Dense(7, activation="relu", bias_initializer="normal"),
        Dense(6, activation="tanh"),
        Dense(5, activation="sigmoid"),
        Dense(4, activation="softmax"),
    ], input_shape=(5,), dtype="float64", seed=9)
    assert_away_from_relu_kinks(model, x)
    worst, details = rp.gradcheck(model, x, ids, return_details=True)
    assert worst < TOL
    assert set(details) == {f"{name}/{p}" for name in ("dense", "dense_1", "dense_2", "dense_3")
                            for p in ("W", "b")} | {"input"}


@pytest.mark.parametrize("regularizer", [rp.regularizers.L1(0.01), rp.regularizers.L2(0.05),
                                         rp.regularizers.L1L2(0.01, 0.02)])
def test_regularizers(regularizer):
    x, ids, _ = data()
    model = rp.Sequential([
        Dense(5, activation="tanh", kernel_regularizer=regularizer,
              bias_regularizer=regularizer, bias_initializer="normal"),
        Dense(3, activation="softmax", kernel_regularizer=regularizer),
    ], input_shape=(4,), dtype="float64", seed=10)
    assert model.regularization_loss() > 0
    assert rp.gradcheck(model, x, ids) < TOL


def test_sampled_entries():
    x, ids, _ = data(n=4, features=10)
    model = rp.Sequential([Dense(20, activation="tanh"), Dense(3, activation="softmax")],
                          input_shape=(10,), dtype="float64", seed=11)
    assert rp.gradcheck(model, x, ids, max_params_per_tensor=5, seed=3) < TOL


def test_gradcheck_detects_a_wrong_gradient():
    x, ids, _ = data()
    model = rp.Sequential([Dense(5, activation="tanh"), Dense(3, activation="softmax")],
                          input_shape=(4,), dtype="float64", seed=12)
    layer = model.layers[0]
    original_backward = layer.backward

    def wrong_backward(dy, need_dx=True):
        dx = original_backward(dy, need_dx=need_dx)
        layer.grads["W"] *= 1.01  # a 1% error
        return dx

    layer.backward = wrong_backward
    worst, details = rp.gradcheck(model, x, ids, return_details=True)
    assert details["dense/W"] > 1e-3
    assert details["dense/b"] < TOL
    assert worst > 1e-3


def test_gradcheck_leaves_weights_unchanged():
    x, ids, _ = data()
    model = rp.Sequential([Dense(5, activation="tanh"), Dense(3, activation="softmax")],
                          input_shape=(4,), dtype="float64", seed=13)
    before = model.get_weights()
    x_before = x.copy()
    rp.gradcheck(model, x, ids)
    for a, b in zip(before, model.get_weights()):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(x, x_before)


def test_gradcheck_requires_float64():
    x, ids, _ = data()
    model = rp.Sequential([Dense(3, activation="softmax")], input_shape=(4,), seed=0)
    with pytest.raises(ValueError, match="float64"):
        rp.gradcheck(model, x, ids)
