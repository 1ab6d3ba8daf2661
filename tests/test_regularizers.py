"""L1 / L2 / L1L2 on the kernel and the bias of every weighted layer: loss and gradient."""
import numpy as np
import pytest

import retroprop as rp
from retroprop import regularizers
from retroprop.gradcheck import check_layer_gradients
from retroprop.layers import Conv1D, Conv2D, Dense, Flatten, PReLU

REGULARIZERS = [regularizers.L1(0.03), regularizers.L2(0.05), regularizers.L1L2(0.02, 0.04)]


def weighted_layers(reg):
    """(layer, per-sample input shape) for every layer type with weights."""
    return [
        (Dense(3, activation="tanh", kernel_regularizer=reg, bias_regularizer=reg,
               bias_initializer="normal"), (4,)),
        (Conv1D(2, 3, activation="tanh", kernel_regularizer=reg, bias_regularizer=reg,
                bias_initializer="normal"), (6, 2)),
        (Conv2D(2, 2, activation="sigmoid", kernel_regularizer=reg, bias_regularizer=reg,
                bias_initializer="normal"), (4, 3, 2)),
        (PReLU(alpha_regularizer=reg), (3, 4)),
    ]


@pytest.mark.parametrize("reg", REGULARIZERS, ids=repr)
@pytest.mark.parametrize("index", range(4), ids=["dense", "conv1d", "conv2d", "prelu"])
def test_penalty_value_and_gradcheck(reg, index):
    layer, shape = weighted_layers(reg)[index]
    # check_layer_gradients' objective includes regularization_loss(), so the
    # penalty's gradient is checked together with the data gradient.
    assert check_layer_gradients(layer, shape) < 1e-6
    expected = sum(reg(p) for p in layer.params.values())
    assert layer.regularization_loss() == pytest.approx(expected)
    assert layer.regularization_loss() > 0


def test_kernel_and_bias_penalties_are_separate():
    layer = Dense(2, kernel_regularizer=regularizers.L2(0.1), bias_initializer="ones",
                  bias_regularizer=regularizers.L1(0.5))
    layer.build((3,), "float64", np.random.default_rng(0))
    w = layer.params["W"]
    assert layer.regularization_loss() == pytest.approx(0.1 * np.sum(w * w) + 0.5 * 2)
    layer.forward(np.zeros((1, 3)))
    layer.backward(np.zeros((1, 2)))
    np.testing.assert_allclose(layer.grads["W"], 0.2 * w)     # data gradient is 0 here
    np.testing.assert_allclose(layer.grads["b"], 0.5)


def conv_model(reg, dtype="float32"):
    return rp.Sequential([
        Conv1D(3, 3, kernel_regularizer=reg, bias_regularizer=reg, bias_initializer="normal"),
        PReLU(kernel_regularizer=reg),
        Flatten(),
        Dense(3, activation="softmax", kernel_regularizer=reg, bias_regularizer=reg),
    ], input_shape=(6, 2), dtype=dtype, seed=0)


def test_counted_in_the_reported_loss_and_the_model_gradient():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((10, 6, 2))
    y = rng.integers(0, 3, size=10)
    reg = regularizers.L1L2(0.01, 0.02)
    plain = rp.Trainer(conv_model(None), "categorical_crossentropy", "sgd").evaluate(x, y)
    model = conv_model(reg)
    regular = rp.Trainer(model, "categorical_crossentropy", "sgd").evaluate(x, y)
    penalty = model.regularization_loss()
    assert penalty == pytest.approx(sum(
        reg(p) for layer, name, p, _ in model.parameters()))
    assert regular["loss"] == pytest.approx(plain["loss"] + penalty, rel=1e-5)
    assert rp.gradcheck(conv_model(reg, "float64"), x, y) < 1e-6


def test_strong_l2_shrinks_the_weights_in_training():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((32, 6, 2)).astype(np.float32)
    y = rng.integers(0, 3, size=32)
    norms = []
    for reg in (None, regularizers.L2(0.5)):
        model = conv_model(reg)
        rp.Trainer(model, "categorical_crossentropy", rp.optim.SGD(lr=0.05)).fit(
            x, y, epochs=20, batch_size=8, verbose=0)
        norms.append([float(np.abs(p).sum()) for _, _, p, _ in model.parameters()])
    assert all(r < 0.5 * n for n, r in zip(*norms))


def test_prelu_regularizer_config_and_errors():
    layer = PReLU(alpha_regularizer=regularizers.L2(0.3))
    clone = rp.layers.deserialize(layer.serialize())
    assert isinstance(clone.alpha_regularizer, regularizers.L2)
    assert clone.alpha_regularizer.l2 == 0.3
    assert PReLU(kernel_regularizer="l1").alpha_regularizer.l1 == 0.01
    with pytest.raises(ValueError, match="PReLU"):
        PReLU(alpha_regularizer="l1", kernel_regularizer="l2")
