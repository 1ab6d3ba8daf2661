"""XOR: a hidden layer learns it; a linear classifier cannot."""
import numpy as np
import pytest

import retroprop as rp
from retroprop.layers import Dense

X = np.array([[0, 0], [0, 1], [1, 0], [1, 1]], dtype=np.float32)
Y = np.array([0, 1, 1, 0])
EPOCHS = 300


def train(layers, seed=0):
    model = rp.Sequential(layers, input_shape=(2,), seed=seed)
    trainer = rp.Trainer(model, "categorical_crossentropy",
                         rp.optim.SGD(lr=0.1, momentum=0.9), metrics=["accuracy"])
    history = trainer.fit(X, Y, epochs=EPOCHS, batch_size=4, verbose=0, seed=seed)
    return model, trainer, history


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_hidden_layer_learns_xor(seed):
    model, trainer, history = train([Dense(8, activation="tanh"),
                                     Dense(2, activation="softmax")], seed=seed)
    predicted = np.argmax(model.predict(X), axis=1)
    np.testing.assert_array_equal(predicted, Y)
    result = trainer.evaluate(X, Y)
    assert result["accuracy"] == 1.0
    assert result["loss"] < 0.1
    assert history.history["loss"][-1] < history.history["loss"][0]


def test_xor_training_is_deterministic():
    first, _, h1 = train([Dense(8, activation="tanh"), Dense(2, activation="softmax")])
    second, _, h2 = train([Dense(8, activation="tanh"), Dense(2, activation="softmax")])
    assert h1.history["loss"] == h2.history["loss"]
    for a, b in zip(first.get_weights(), second.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_no_hidden_layer_cannot_learn_xor():
    # A softmax over an affine function of x is a linear classifier: at most
    # 3 of the 4 XOR points can be on the right side of one line.
    model, trainer, _ = train([Dense(2, activation="softmax")])
    assert trainer.evaluate(X, Y)["accuracy"] <= 0.75
    assert np.mean(np.argmax(model.predict(X), axis=1) == Y) <= 0.75
