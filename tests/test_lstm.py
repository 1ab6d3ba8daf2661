"""LSTM: backprop through time against finite differences, a NumPy loop and
PyTorch's nn.LSTM; both backends; errors; config; a memory task."""
import numpy as np
import pytest

import retroprop as rp
from retroprop.backend import cpu
from retroprop.backend import numpy_ref as ref
from retroprop.gradcheck import check_layer_gradients
from retroprop.layers import LSTM, Dense, SimpleRNN


def built(layer, shape, dtype="float64", backend=None, seed=0):
    layer.build(shape, dtype, np.random.default_rng(seed), backend=backend)
    return layer


def sigmoid(z):
    return 1 / (1 + np.exp(-z))


def numpy_lstm(x, w, u, b):
    n, steps, _ = x.shape
    k = u.shape[0]
    h = np.zeros((n, k))
    c = np.zeros((n, k))
    out = []
    for t in range(steps):
        z = x[:, t] @ w + h @ u + b
        i, f, g, o = sigmoid(z[:, :k]), sigmoid(z[:, k:2 * k]), np.tanh(z[:, 2 * k:3 * k]), \
            sigmoid(z[:, 3 * k:])
        c = f * c + i * g
        h = o * np.tanh(c)
        out.append(h)
    return np.stack(out, axis=1)


@pytest.mark.parametrize("return_sequences", [False, True])
@pytest.mark.parametrize("steps,features,units", [(1, 1, 1), (5, 3, 4), (6, 2, 9), (3, 11, 2)])
def test_gradients(steps, features, units, return_sequences):
    layer = LSTM(units, return_sequences=return_sequences, bias_initializer="glorot_uniform")
    assert check_layer_gradients(layer, (steps, features)) < 1e-6


def test_forward_against_numpy_and_forget_bias():
    layer = built(LSTM(5, return_sequences=True), (7, 3))
    p = layer.params
    np.testing.assert_array_equal(p["b"][5:10], 1.0)          # unit_forget_bias
    np.testing.assert_array_equal(np.delete(p["b"], np.s_[5:10]), 0.0)
    x = np.random.default_rng(1).standard_normal((4, 7, 3))
    np.testing.assert_allclose(layer.forward(x), numpy_lstm(x, p["W"], p["U"], p["b"]),
                               rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("return_sequences", [False, True])
def test_against_torch(dtype, return_sequences):
    torch = pytest.importorskip("torch")
    steps, features, units, n = 8, 4, 6, 3
    layer = built(LSTM(units, return_sequences=return_sequences,
                       bias_initializer="glorot_uniform"), (steps, features), dtype)
    x = np.random.default_rng(2).standard_normal((n, steps, features)).astype(dtype)
    y = layer.forward(x)
    dy = np.random.default_rng(3).standard_normal(y.shape).astype(dtype)
    dx = layer.backward(dy)
    tdtype = torch.float32 if dtype == "float32" else torch.float64
    lstm = torch.nn.LSTM(features, units, batch_first=True, dtype=tdtype)
    with torch.no_grad():        # same gate order i, f, g, o; weights transposed
        lstm.weight_ih_l0.copy_(torch.tensor(layer.params["W"].T))
        lstm.weight_hh_l0.copy_(torch.tensor(layer.params["U"].T))
        lstm.bias_ih_l0.copy_(torch.tensor(layer.params["b"]))
        lstm.bias_hh_l0.zero_()
    tx = torch.tensor(x, requires_grad=True)
    seq, _ = lstm(tx)
    ty = seq if return_sequences else seq[:, -1]
    ty.backward(torch.tensor(dy))
    tol = dict(rtol=2e-5, atol=2e-5) if dtype == "float32" else dict(rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(y, ty.detach().numpy(), **tol)
    np.testing.assert_allclose(dx, tx.grad.numpy(), **tol)
    np.testing.assert_allclose(layer.grads["W"], lstm.weight_ih_l0.grad.numpy().T, **tol)
    np.testing.assert_allclose(layer.grads["U"], lstm.weight_hh_l0.grad.numpy().T, **tol)
    np.testing.assert_allclose(layer.grads["b"], lstm.bias_ih_l0.grad.numpy(), **tol)


def test_backends_agree():
    x = np.random.default_rng(4).standard_normal((2, 5, 3))
    out = []
    for backend in (cpu, ref):
        layer = built(LSTM(4, return_sequences=True), (5, 3), backend=backend)
        y = layer.forward(x).copy()
        out.append((y, layer.backward(np.ones_like(y)).copy(), layer.grads["U"].copy()))
    for a, b in zip(*out):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-13)


def test_errors_config_summary_save(tmp_path):
    with pytest.raises(ValueError, match="units must be a positive integer"):
        LSTM(0)
    with pytest.raises(ValueError, match=r"expects sequences \(N, timesteps, features\)"):
        built(LSTM(3), (4,))
    with pytest.raises(RuntimeError, match="backward called before forward"):
        built(LSTM(3), (4, 2)).backward(np.zeros((1, 3)))
    layer = LSTM(4, return_sequences=True, recurrent_regularizer=rp.regularizers.L2(1e-3),
                 name="lstm")
    assert LSTM.from_config(layer.get_config()).get_config() == layer.get_config()
    model = rp.Sequential([layer, LSTM(3), Dense(2, activation="softmax")], input_shape=(5, 2),
                          dtype="float64", seed=0)
    text = model.summary(print_fn=None)
    assert "lstm (LSTM)" in text and "(None, 5, 4)" in text
    assert layer.count_params() == 4 * (2 * 4 + 4 * 4 + 4)
    x = np.random.default_rng(5).standard_normal((6, 5, 2))
    assert rp.gradcheck(model, x, [0, 1, 1, 0, 1, 0]) < 1e-6
    model.save(tmp_path / "l.rpz")
    np.testing.assert_array_equal(rp.load_model(tmp_path / "l.rpz").predict(x), model.predict(x))


def test_remembers_longer_than_a_simple_rnn():
    # The label is the sign of the first of 25 inputs.
    rng = np.random.default_rng(6)
    x = rng.standard_normal((512, 25, 1)).astype(np.float32)
    y = (x[:, 0, 0] > 0).astype(int)
    accuracy = {}
    for name, cell in (("lstm", LSTM(16)), ("rnn", SimpleRNN(16))):
        model = rp.Sequential([cell, Dense(2, activation="softmax")], input_shape=(25, 1), seed=0)
        trainer = rp.Trainer(model, "categorical_crossentropy", rp.optim.Adam(lr=0.01))
        trainer.fit(x, y, epochs=15, batch_size=32, verbose=0)
        accuracy[name] = trainer.evaluate(x, y)["accuracy"]
    assert accuracy["lstm"] > 0.95
    assert accuracy["lstm"] > accuracy["rnn"]
