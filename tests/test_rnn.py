"""SimpleRNN: backprop through time against finite differences, a NumPy loop
and PyTorch's nn.RNN; both backends; awkward shapes; errors; config; a task."""
import numpy as np
import pytest

import retroprop as rp
from retroprop.backend import cpu
from retroprop.backend import numpy_ref as ref
from retroprop.gradcheck import check_layer_gradients
from retroprop.layers import Dense, SimpleRNN
from retroprop.layers.rnn import orthogonal


def built(layer, shape, dtype="float64", backend=None, seed=0):
    layer.build(shape, dtype, np.random.default_rng(seed), backend=backend)
    return layer


def numpy_rnn(x, w, u, b, act=np.tanh):
    """The course's recurrence, one step at a time."""
    n, steps, _ = x.shape
    h = np.zeros((n, u.shape[0]))
    out = []
    for t in range(steps):
        h = act(x[:, t] @ w + h @ u + b)
        out.append(h)
    return np.stack(out, axis=1)


# (timesteps, features, units)
SHAPES = [(1, 1, 1), (5, 3, 4), (7, 2, 17), (3, 13, 2)]


@pytest.mark.parametrize("return_sequences", [False, True])
@pytest.mark.parametrize("activation", ["tanh", "relu", "sigmoid", "gelu"])
@pytest.mark.parametrize("steps,features,units", SHAPES)
def test_gradients(steps, features, units, activation, return_sequences):
    layer = SimpleRNN(units, activation=activation, return_sequences=return_sequences,
                      recurrent_initializer="glorot_uniform", bias_initializer="glorot_uniform")
    x = np.random.default_rng(1).standard_normal((3, steps, features))
    if activation == "relu":
        x = np.where(np.abs(x) < 0.05, 0.5, x)   # away from relu's kink
    assert check_layer_gradients(layer, (steps, features), x=x) < 1e-6


@pytest.mark.parametrize("steps,features,units", SHAPES)
def test_forward_against_a_numpy_loop(steps, features, units):
    layer = built(SimpleRNN(units, return_sequences=True, bias_initializer="ones"),
                  (steps, features))
    x = np.random.default_rng(2).standard_normal((4, steps, features))
    p = layer.params
    expected = numpy_rnn(x, p["W"], p["U"], p["b"])
    np.testing.assert_allclose(layer.forward(x), expected, rtol=1e-12, atol=1e-14)
    last = built(SimpleRNN(units, bias_initializer="ones"), (steps, features))
    np.testing.assert_allclose(last.forward(x), expected[:, -1], rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("return_sequences", [False, True])
def test_against_torch(dtype, return_sequences):
    torch = pytest.importorskip("torch")
    steps, features, units, n = 9, 5, 6, 4
    layer = built(SimpleRNN(units, return_sequences=return_sequences,
                            bias_initializer="glorot_uniform"), (steps, features), dtype)
    x = np.random.default_rng(3).standard_normal((n, steps, features)).astype(dtype)
    y = layer.forward(x)
    dy = np.random.default_rng(4).standard_normal(y.shape).astype(dtype)
    dx = layer.backward(dy)
    tdtype = torch.float32 if dtype == "float32" else torch.float64
    rnn = torch.nn.RNN(features, units, batch_first=True, nonlinearity="tanh", dtype=tdtype)
    with torch.no_grad():
        rnn.weight_ih_l0.copy_(torch.tensor(layer.params["W"].T))
        rnn.weight_hh_l0.copy_(torch.tensor(layer.params["U"].T))
        rnn.bias_ih_l0.copy_(torch.tensor(layer.params["b"]))
        rnn.bias_hh_l0.zero_()
    tx = torch.tensor(x, requires_grad=True)
    seq, _ = rnn(tx)
    ty = seq if return_sequences else seq[:, -1]
    ty.backward(torch.tensor(dy))
    tol = dict(rtol=2e-5, atol=2e-5) if dtype == "float32" else dict(rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(y, ty.detach().numpy(), **tol)
    np.testing.assert_allclose(dx, tx.grad.numpy(), **tol)
    np.testing.assert_allclose(layer.grads["W"], rnn.weight_ih_l0.grad.numpy().T, **tol)
    np.testing.assert_allclose(layer.grads["U"], rnn.weight_hh_l0.grad.numpy().T, **tol)
    np.testing.assert_allclose(layer.grads["b"], rnn.bias_ih_l0.grad.numpy(), **tol)


def test_backends_agree():
    x = np.random.default_rng(5).standard_normal((3, 6, 4))
    results = []
    for backend in (cpu, ref):
        layer = built(SimpleRNN(5, return_sequences=True), (6, 4), backend=backend)
        y = layer.forward(x).copy()
        dx = layer.backward(np.ones_like(y)).copy()
        results.append((y, dx, layer.grads["U"].copy()))
    for a, b in zip(*results):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-13)


def test_orthogonal_initializer():
    rng = np.random.default_rng(6)
    for shape in [(5, 5), (3, 7), (7, 3), (1, 1)]:
        q = orthogonal(shape, rng, "float64")
        k = min(shape)
        gram = q.T @ q if shape[0] >= shape[1] else q @ q.T
        np.testing.assert_allclose(gram, np.eye(k), atol=1e-12)


def test_errors():
    with pytest.raises(ValueError, match="units must be a positive integer"):
        SimpleRNN(0)
    with pytest.raises(ValueError, match="softmax is not an elementwise activation"):
        SimpleRNN(3, activation="softmax")
    with pytest.raises(ValueError, match="unknown activation"):
        SimpleRNN(3, activation="sin")
    with pytest.raises(ValueError, match=r"expects sequences \(N, timesteps, features\)"):
        built(SimpleRNN(3), (5,))
    layer = built(SimpleRNN(3), (4, 2))
    with pytest.raises(RuntimeError, match="backward called before forward"):
        layer.backward(np.zeros((1, 3)))
    with pytest.raises(ValueError, match="expects input of shape"):
        layer.forward(np.zeros((2, 5, 2)))
    layer.forward(np.zeros((2, 4, 2)))
    with pytest.raises(ValueError, match="dy must have shape"):
        layer.backward(np.zeros((2, 4, 3)))


def test_config_summary_regularizers_and_save(tmp_path):
    layer = SimpleRNN(4, activation="relu", return_sequences=True,
                      recurrent_regularizer=rp.regularizers.L2(1e-2), name="rnn")
    again = SimpleRNN.from_config(layer.get_config())
    assert again.get_config() == layer.get_config()
    model = rp.Sequential([layer, SimpleRNN(3), Dense(2, activation="softmax")],
                          input_shape=(5, 2), dtype="float64", seed=0)
    text = model.summary(print_fn=None)
    assert "rnn (SimpleRNN)" in text and "(None, 5, 4)" in text
    assert layer.count_params() == 2 * 4 + 4 * 4 + 4
    x = np.random.default_rng(7).standard_normal((6, 5, 2))
    y = [0, 1, 1, 0, 1, 0]
    assert rp.gradcheck(model, x, y) < 1e-6        # includes the recurrent L2 penalty
    assert model.regularization_loss() > 0
    model.save(tmp_path / "r.rpz")
    np.testing.assert_array_equal(rp.load_model(tmp_path / "r.rpz").predict(x), model.predict(x))


def test_learns_to_remember_the_first_input():
    # The label is the sign of the first element of a 6-step sequence: the
    # RNN must carry it through five steps of noise.
    rng = np.random.default_rng(8)
    x = rng.standard_normal((256, 6, 1)).astype(np.float32)
    y = (x[:, 0, 0] > 0).astype(int)
    model = rp.Sequential([SimpleRNN(8), Dense(2, activation="softmax")], input_shape=(6, 1),
                          seed=0)
    trainer = rp.Trainer(model, "categorical_crossentropy", rp.optim.Adam(lr=0.01))
    trainer.fit(x, y, epochs=40, batch_size=32, verbose=0)
    assert trainer.evaluate(x, y)["accuracy"] > 0.95
