"""Dropout statistics, initializer variances and fans, regularizers in Dense."""
import numpy as np
import pytest

import retroprop as rp
from retroprop import initializers, regularizers
from retroprop.gradcheck import check_layer_gradients
from retroprop.layers import Dense, Dropout


def built_dropout(rate, shape=(1000,), dtype="float64", seed=0):
    layer = Dropout(rate, seed=seed)
    layer.build(shape, dtype, np.random.default_rng(0))
    return layer


@pytest.mark.parametrize("rate", [0.1, 0.5, 0.8])
def test_dropout_statistics(rate):
    layer = built_dropout(rate)
    x = np.ones((200, 1000))
    y = layer.forward(x, training=True)
    dropped = np.mean(y == 0)
    assert abs(dropped - rate) < 0.01                       # fraction dropped ~ rate
    assert abs(y.mean() - 1.0) < 0.02                       # mean preserved (inverted scaling)
    np.testing.assert_allclose(np.unique(y), [0.0, 1.0 / (1.0 - rate)])


def test_dropout_identity_at_inference():
    layer = built_dropout(0.5)
    x = np.random.default_rng(1).standard_normal((4, 1000))
    np.testing.assert_array_equal(layer.forward(x, training=False), x)
    np.testing.assert_array_equal(layer.backward(np.ones_like(x)), 1.0)


def test_dropout_backward_uses_the_forward_mask():
    layer = built_dropout(0.3, dtype="float32")
    x = np.ones((3, 1000), dtype=np.float32)
    y = layer.forward(x, training=True)
    dy = np.full_like(x, 2.0)
    np.testing.assert_allclose(layer.backward(dy), 2.0 * y)
    assert layer.backward(dy).dtype == np.float32


def test_dropout_seeded_and_gradcheck():
    a = built_dropout(0.5, seed=5).forward(np.ones((2, 1000)), training=True)
    b = built_dropout(0.5, seed=5).forward(np.ones((2, 1000)), training=True)
    np.testing.assert_array_equal(a, b)
    assert check_layer_gradients(Dropout(0.5, seed=0), (6,)) < 1e-6   # inference path


def test_dropout_in_training_and_config():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((64, 4)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int64)
    model = rp.Sequential([Dense(16, activation="relu"), Dropout(0.5, seed=1),
                           Dense(2, activation="softmax")], input_shape=(4,), seed=0)
    trainer = rp.Trainer(model, "categorical_crossentropy", rp.optim.Adam(lr=0.01),
                         metrics=["accuracy"])
    trainer.fit(x, y, epochs=30, batch_size=16, verbose=0)
    assert trainer.evaluate(x, y)["accuracy"] > 0.9
    np.testing.assert_array_equal(model.predict(x), model.predict(x))  # deterministic
    clone = rp.layers.deserialize(Dropout(0.25, seed=3).serialize())
    assert clone.rate == 0.25 and clone.seed == 3
    with pytest.raises(ValueError, match="rate"):
        Dropout(1.0)


# -- initializers -------------------------------------------------------------------------

def test_constant_initializers():
    np.testing.assert_array_equal(initializers.get("constant")((2, 3), None), 0.0)
    w = initializers.Constant(0.25)((2, 3), None, dtype="float64")
    assert w.dtype == np.float64 and np.all(w == 0.25)


def test_fans_dense_and_conv():
    assert initializers.compute_fans((30, 20)) == (30, 20)
    assert initializers.compute_fans((3, 5, 4, 8)) == (3 * 5 * 4, 3 * 5 * 8)
    assert initializers.compute_fans((7,)) == (7, 7)


@pytest.mark.parametrize("name,variance", [
    ("glorot_uniform", lambda fi, fo: 2.0 / (fi + fo)),
    ("glorot_normal", lambda fi, fo: 2.0 / (fi + fo)),
    ("he_uniform", lambda fi, fo: 2.0 / fi),
    ("he_normal", lambda fi, fo: 2.0 / fi),
    ("lecun_normal", lambda fi, fo: 1.0 / fi),
    ("lecun_uniform", lambda fi, fo: 1.0 / fi),
])
@pytest.mark.parametrize("shape", [(400, 300), (3, 3, 64, 128)])
def test_initializer_variances(name, variance, shape):
    w = initializers.get(name)(shape, np.random.default_rng(0), dtype="float64")
    fan_in, fan_out = initializers.compute_fans(shape)
    assert abs(w.mean()) < 0.05 * np.sqrt(variance(fan_in, fan_out))
    assert w.var() == pytest.approx(variance(fan_in, fan_out), rel=0.03)


# -- regularizers ----------------------------------------------------------------------

@pytest.mark.parametrize("reg", [regularizers.L1(0.01), regularizers.L2(0.02),
                                 regularizers.L1L2(0.01, 0.02)], ids=repr)
def test_regularizers_in_dense_gradcheck(reg):
    layer = Dense(3, activation="tanh", kernel_regularizer=reg, bias_regularizer=reg,
                  bias_initializer="normal")
    assert check_layer_gradients(layer, (4,)) < 1e-6
    model = rp.Sequential([Dense(3, activation="softmax", kernel_regularizer=reg)],
                          input_shape=(4,), dtype="float64", seed=0)
    x = np.random.default_rng(0).standard_normal((5, 4))
    assert rp.gradcheck(model, x, np.array([0, 1, 2, 0, 1])) < 1e-6


def test_regularizer_formulas():
    w = np.array([[1.0, -2.0], [0.0, 3.0]])
    assert regularizers.L1(0.1)(w) == pytest.approx(0.6)
    assert regularizers.L2(0.1)(w) == pytest.approx(1.4)
    assert regularizers.L1L2(0.1, 0.1)(w) == pytest.approx(2.0)
    np.testing.assert_allclose(regularizers.L1L2(0.1, 0.1).gradient(w),
                               0.1 * np.sign(w) + 0.2 * w)


ISSUE_INITIALIZERS = ["zeros", "ones", "constant", "uniform", "normal", "glorot_uniform",
                      "glorot_normal", "he_uniform", "he_normal", "lecun_normal"]


@pytest.mark.parametrize("name", ISSUE_INITIALIZERS)
@pytest.mark.parametrize("shape", [(300, 200), (5, 5, 16, 32), (7, 64, 48)])
def test_every_initializer_by_name(name, shape):
    w = initializers.get(name)(shape, np.random.default_rng(0), dtype="float64")
    assert w.shape == shape and w.dtype == np.float64
    if name in ("zeros", "constant"):
        assert np.all(w == 0.0)
    elif name == "ones":
        assert np.all(w == 1.0)
    elif name == "uniform":           # U(-0.05, 0.05)
        assert np.abs(w).max() <= 0.05 and w.var() == pytest.approx(0.05 ** 2 / 3, rel=0.05)
    elif name == "normal":            # N(0, 0.05^2)
        assert w.std() == pytest.approx(0.05, rel=0.05)
    else:
        fan_in, fan_out = initializers.compute_fans(shape)
        assert w.var() == pytest.approx(
            (1.0 if name.startswith("lecun") else 2.0)
            / (fan_in + fan_out if name.startswith("glorot") else fan_in), rel=0.05)
