"""Losses: values against hand-computed numbers, gradients, stability, fusion."""
import numpy as np
import pytest

import retroprop as rp
from retroprop import losses
from retroprop.layers import Activation, Dense
from retroprop.trainer import uses_fused_output

TOL = 1e-6


def numeric_grad(loss, y, p, eps=1e-6):
    """Central differences of loss(y, p) w.r.t. every entry of p (float64)."""
    p = np.array(p, dtype=np.float64)
    g = np.zeros_like(p)
    for i in range(p.size):
        old = p.flat[i]
        p.flat[i] = old + eps
        plus = loss(y, p)
        p.flat[i] = old - eps
        minus = loss(y, p)
        p.flat[i] = old
        g.flat[i] = (plus - minus) / (2 * eps)
    return g


def test_hinge_seed_numbers():
    # Row 0: max(0, 4.1-2.3+1) + max(0, -2.1-2.3+1) = 2.8 + 0
    # Row 1: max(0, 1.7-5.4+1) + max(0, 2.3-5.4+1) = 0
    # Row 2: max(0, 1.7+1.3+1) + max(0, 1.4+1.3+1) = 4.0 + 3.7 = 7.7
    scores = np.array([[2.3, 4.1, -2.1], [1.7, 5.4, 2.3], [1.7, 1.4, -1.3]])
    loss = losses.get("hinge")
    assert loss([0, 1, 2], scores) == pytest.approx((2.8 + 0 + 7.7) / 3)
    assert loss([0, 1, 2], scores) == pytest.approx(3.5)
    assert loss(np.eye(3), scores) == pytest.approx(3.5)   # one-hot targets too
    g = loss.gradient([0, 1, 2], scores)
    np.testing.assert_allclose(g * 3, [[-1, 1, 0], [0, 0, 0], [1, 1, -2]])


def test_cross_entropy_seed_number():
    loss = losses.get("categorical_crossentropy")
    assert loss([0], np.array([[0.8, 0.15, 0.05]])) == pytest.approx(0.2231, abs=1e-4)
    assert loss([0], np.array([[0.8, 0.15, 0.05]])) == pytest.approx(-np.log(0.8))


def test_mae_value_and_gradient():
    y = np.array([[1.0, 2.0], [3.0, -1.0]])
    p = np.array([[1.5, 1.0], [3.0, 2.0]])
    loss = losses.get("mae")
    assert loss(y, p) == pytest.approx((0.5 + 1.0 + 0.0 + 3.0) / 4)
    np.testing.assert_allclose(loss.gradient(y, p), [[0.25, -0.25], [0.0, 0.25]])
    q = p + np.array([[0.01, 0.02], [0.03, -0.04]])    # away from the kink
    np.testing.assert_allclose(loss.gradient(y, q), numeric_grad(loss, y, q), atol=1e-8)


def bce_reference(y, p):
    return -np.mean(y * np.log(p) + (1 - y) * np.log(1 - p))


def test_binary_crossentropy_probabilities_and_logits():
    rng = np.random.default_rng(0)
    y = (rng.random((5, 3)) > 0.5).astype(float)
    z = rng.standard_normal((5, 3))
    p = 1 / (1 + np.exp(-z))
    bce = losses.get("binary_crossentropy")
    bce_logits = losses.get("binary_crossentropy", from_logits=True)
    assert bce(y, p) == pytest.approx(bce_reference(y, p), rel=1e-12)
    assert bce_logits(y, z) == pytest.approx(bce_reference(y, p), rel=1e-12)
    np.testing.assert_allclose(bce.gradient(y, p), numeric_grad(bce, y, p), rtol=1e-6)
    np.testing.assert_allclose(bce_logits.gradient(y, z), (p - y) / y.size, rtol=1e-10)
    np.testing.assert_allclose(bce_logits.gradient(y, z), numeric_grad(bce_logits, y, z),
                               rtol=1e-6, atol=1e-10)
    # (N,) targets for a single-output model.
    assert bce(y[:, 0], p[:, :1]) == pytest.approx(bce_reference(y[:, :1], p[:, :1]))


def test_categorical_crossentropy_from_logits():
    rng = np.random.default_rng(1)
    z = rng.standard_normal((4, 5))
    ids = np.array([0, 3, 4, 1])
    p = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
    loss = losses.get("categorical_crossentropy", from_logits=True)
    assert loss(ids, z) == pytest.approx(-np.mean(np.log(p[np.arange(4), ids])))
    np.testing.assert_allclose(loss.gradient(ids, z), numeric_grad(loss, ids, z), atol=1e-9)


def test_against_torch():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(2)
    z = rng.standard_normal((6, 4))
    y = (rng.random((6, 4)) > 0.5).astype(float)
    expected = torch.nn.functional.binary_cross_entropy_with_logits(
        torch.tensor(z), torch.tensor(y))
    assert losses.get("binary_crossentropy", from_logits=True)(y, z) == pytest.approx(
        float(expected))
    ids = rng.integers(0, 4, size=6)
    expected = torch.nn.functional.multi_margin_loss(torch.tensor(z), torch.tensor(ids))
    # PyTorch divides the per-sample sum by the number of classes.
    assert losses.get("hinge")(ids, z) == pytest.approx(float(expected) * 4)


@pytest.mark.parametrize("name,kwargs,targets", [
    ("binary_crossentropy", {"from_logits": True}, "binary"),
    ("categorical_crossentropy", {"from_logits": True}, "ids"),
    ("hinge", {}, "ids"),
    ("mae", {}, "binary"),
])
def test_extreme_logits_finite(name, kwargs, targets):
    z = np.array([[1e4, -1e4, 0.0], [-1e4, 1e4, 3.0]])
    y = np.array([[1.0, 0.0, 1.0], [1.0, 0.0, 0.0]]) if targets == "binary" else [1, 0]
    loss = losses.get(name, **kwargs)
    with np.errstate(over="raise", invalid="raise", divide="raise"):
        value = loss(y, z)
        grad = loss.gradient(y, z)
    assert np.isfinite(value) and np.all(np.isfinite(grad))
    if name != "mae":
        assert value > 1e3    # the confidently wrong entries are counted, not clipped away


@pytest.mark.parametrize("name", ["binary_crossentropy", "categorical_crossentropy"])
def test_probabilities_exactly_zero_and_one_finite(name):
    p = np.array([[1.0, 0.0], [0.0, 1.0]])
    y = np.array([[1.0, 0.0], [1.0, 0.0]])
    loss = losses.get(name)
    with np.errstate(over="raise", invalid="raise", divide="raise"):
        value = loss(y, p)
        grad = loss.gradient(y, p)
    assert np.isfinite(value) and np.all(np.isfinite(grad))
    assert value > 1.0       # the wrong row still costs a lot


# -- the fused paths --------------------------------------------------------------------

def binary_data(n=8, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, 4))
    y = (rng.random((n, 2)) > 0.5).astype(float)
    return x, y


def test_fusion_is_detected():
    sig = rp.Sequential([Dense(2, activation="sigmoid")], input_shape=(3,))
    slope = rp.Sequential([Dense(2, activation=rp.activations.Sigmoid(2.0))], input_shape=(3,))
    soft = rp.Sequential([Dense(2, activation="softmax")], input_shape=(3,))
    bce = losses.get("binary_crossentropy")
    assert uses_fused_output(sig, bce)
    assert not uses_fused_output(slope, bce)
    assert not uses_fused_output(soft, bce)
    assert not uses_fused_output(sig, losses.get("binary_crossentropy", from_logits=True))
    assert uses_fused_output(soft, losses.get("categorical_crossentropy"))
    assert not uses_fused_output(sig, losses.get("categorical_crossentropy"))
    assert not uses_fused_output(soft, losses.get("hinge"))


@pytest.mark.parametrize("last", ["dense_sigmoid", "activation_layer", "slope"])
def test_binary_crossentropy_gradcheck(last):
    x, y = binary_data()
    if last == "dense_sigmoid":
        layers = [Dense(5, activation="tanh"), Dense(2, activation="sigmoid")]
    elif last == "activation_layer":
        layers = [Dense(5, activation="tanh"), Dense(2), Activation("sigmoid")]
    else:
        layers = [Dense(5, activation="tanh"), Dense(2, activation=rp.activations.Sigmoid(1.5))]
    model = rp.Sequential(layers, input_shape=(4,), dtype="float64", seed=1)
    assert rp.gradcheck(model, x, y, loss="binary_crossentropy") < TOL


@pytest.mark.parametrize("name,kwargs", [("binary_crossentropy", {"from_logits": True}),
                                         ("categorical_crossentropy", {"from_logits": True}),
                                         ("hinge", {}), ("mae", {})])
def test_linear_output_gradcheck(name, kwargs):
    x, y = binary_data(seed=3)
    if name in ("categorical_crossentropy", "hinge"):
        y = np.array([0, 1, 1, 0, 1, 0, 0, 1])
    model = rp.Sequential([Dense(5, activation="tanh"), Dense(2)], input_shape=(4,),
                          dtype="float64", seed=2)
    assert rp.gradcheck(model, x, y, loss=losses.get(name, **kwargs)) < TOL


def test_fused_sigmoid_extreme_logits_finite():
    # Saturated sigmoid outputs: the fused gradient (p - y) / size stays exact.
    model = rp.Sequential([Dense(1, activation="sigmoid", bias_initializer="zeros")],
                          input_shape=(1,), dtype="float64", seed=0)
    model.layers[0].params["W"][...] = 1e4
    x = np.array([[1.0], [-1.0]])
    trainer = rp.Trainer(model, "binary_crossentropy", rp.optim.SGD(lr=0.1))
    logs = trainer.evaluate(x, np.array([0.0, 1.0]))
    assert np.isfinite(logs["loss"]) and logs["loss"] > 10


def test_binary_classifier_learns():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((200, 2))
    y = (x[:, 0] + x[:, 1] > 0).astype(float)
    model = rp.Sequential([Dense(1, activation="sigmoid")], input_shape=(2,), seed=0)
    trainer = rp.Trainer(model, "binary_crossentropy", rp.optim.SGD(lr=0.5))
    history = trainer.fit(x, y, epochs=20, batch_size=20, verbose=0)
    assert history.history["loss"][-1] < 0.5 * history.history["loss"][0]
    accuracy = np.mean((model.predict(x)[:, 0] > 0.5) == (y > 0.5))
    assert accuracy > 0.95


def test_config_and_names():
    assert losses.get("binary_crossentropy", from_logits=True).get_config()["from_logits"]
    assert losses.get("hinge").get_config() == {"margin": 1.0}
    for name in ("mae", "binary_crossentropy", "hinge"):
        assert name in losses.names()
