"""mse/mae with reduction="mean"/"sum", the course's half-squared error and the
KL divergence: values against hand-computed numbers and NumPy/PyTorch,
gradients against finite differences, bad arguments, configs."""
import numpy as np
import pytest

import retroprop as rp
from retroprop import losses
from retroprop.layers import Dense


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


Y = np.array([[1.0, 2.0], [3.0, -1.0], [0.5, 0.0]])
P = np.array([[1.5, 1.0], [3.0, 2.0], [0.25, 0.125]])


def test_mse_mean_and_sum_by_hand():
    sq = (P - Y) ** 2               # [[.25, 1], [0, 9], [.0625, .015625]]
    mean = losses.get("mse")
    total = losses.get("mse", reduction="sum")
    assert mean(Y, P) == pytest.approx(sq.mean())
    # "sum": each sample's mean over its 2 outputs, added over the 3 samples.
    assert total(Y, P) == pytest.approx(sq.mean(axis=1).sum())
    assert total(Y, P) == pytest.approx(3 * mean(Y, P))
    # One output: the sum of squared errors.
    y1, p1 = np.array([1.0, 2.0, 4.0]), np.array([[0.0], [2.5], [4.0]])
    assert total(y1, p1) == pytest.approx(1.0 + 0.25 + 0.0)


def test_mae_mean_and_sum_by_hand():
    ab = np.abs(P - Y)
    assert losses.get("mae")(Y, P) == pytest.approx(ab.mean())
    assert losses.get("mae", reduction="sum")(Y, P) == pytest.approx(ab.mean(axis=1).sum())


def test_half_squared_error_is_the_course_cost():
    loss = losses.get("half_mse")
    assert isinstance(loss, losses.HalfSquaredError)
    # One sample, one output: C = 1/2 (a - y)^2, dC/da = a - y.
    assert loss([0.0], np.array([[0.75]])) == pytest.approx(0.5 * 0.75 ** 2)
    np.testing.assert_allclose(loss.gradient([0.0], np.array([[0.75]])), [[0.75]])
    # Several outputs: 1/2 sum_j per sample, mean over the batch (Nielsen's C).
    expected = 0.5 * ((P - Y) ** 2).sum(axis=1).mean()
    assert loss(Y, P) == pytest.approx(expected)
    np.testing.assert_allclose(loss.gradient(Y, P), (P - Y) / 3)
    total = losses.get("half_squared_error", reduction="sum")
    assert total(Y, P) == pytest.approx(0.5 * ((P - Y) ** 2).sum())
    np.testing.assert_allclose(total.gradient(Y, P), P - Y)


@pytest.mark.parametrize("name", ["mse", "mae", "half_mse", "kl_divergence"])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_gradients_match_finite_differences(name, reduction):
    rng = np.random.default_rng(0)
    if name == "kl_divergence":
        y = rng.dirichlet(np.ones(4), size=5)
        y[0, 1] = 0.0                                 # a zero target term
        y[0] /= y[0].sum()
        p = rng.dirichlet(np.ones(4), size=5)
    else:
        y = rng.standard_normal((5, 4))
        p = y + rng.uniform(0.05, 1.0, (5, 4)) * rng.choice([-1, 1], (5, 4))   # off mae's kink
    loss = losses.get(name, reduction=reduction)
    np.testing.assert_allclose(loss.gradient(y, p), numeric_grad(loss, y, p), rtol=1e-6,
                               atol=1e-8)


def test_kl_divergence_against_numpy_and_torch():
    rng = np.random.default_rng(1)
    y = rng.dirichlet(np.ones(5), size=7)
    y[2] = np.eye(5)[3]                                  # one-hot row: zeros inside
    p = rng.dirichlet(np.ones(5), size=7)
    kl = losses.get("kl_divergence")
    terms = np.where(y > 0, y * np.log(np.where(y > 0, y, 1) / p), 0.0)
    assert kl(y, p) == pytest.approx(terms.sum(axis=1).mean(), rel=1e-12)
    assert losses.get("kld", reduction="sum")(y, p) == pytest.approx(terms.sum(), rel=1e-12)
    # One-hot targets: KL = cross-entropy (the target's entropy is 0).
    onehot = np.eye(5)[[0, 3, 1]]
    assert kl(onehot, p[:3]) == pytest.approx(losses.get("crossentropy")(onehot, p[:3]))
    torch = pytest.importorskip("torch")
    t = torch.tensor(p, requires_grad=True)
    ref = torch.nn.functional.kl_div(torch.log(t), torch.tensor(y), reduction="batchmean")
    ref.backward()
    assert kl(y, p) == pytest.approx(ref.item(), rel=1e-12)
    np.testing.assert_allclose(kl.gradient(y, p), t.grad.numpy(), rtol=1e-10)


def test_mse_sum_against_torch():
    torch = pytest.importorskip("torch")
    t = torch.tensor(P, requires_grad=True)
    ref = torch.nn.functional.mse_loss(t, torch.tensor(Y), reduction="sum")
    ref.backward()
    # torch's "sum" adds every element; ours adds per-sample means (Keras):
    # the same up to the factor of outputs per sample (2 here).
    loss = losses.get("mse", reduction="sum")
    assert loss(Y, P) * 2 == pytest.approx(ref.item())
    np.testing.assert_allclose(loss.gradient(Y, P) * 2, t.grad.numpy())


def test_kl_extreme_predictions_are_finite():
    y = np.array([[0.5, 0.5, 0.0], [0.0, 0.0, 1.0]])
    p = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    kl = losses.get("kl_divergence")
    assert np.isfinite(kl(y, p))
    assert np.all(np.isfinite(kl.gradient(y, p)))
    assert kl(y[1:], p[1:]) == 0.0


def test_bad_arguments():
    with pytest.raises(ValueError, match="reduction must be one of mean, sum, got 'none'"):
        losses.get("mse", reduction="none")
    with pytest.raises(ValueError, match="reduction"):
        losses.KLDivergence(reduction="batch")
    with pytest.raises(ValueError, match="eps must be in"):
        losses.KLDivergence(eps=0)
    with pytest.raises(ValueError, match=r"probabilities >= 0.*-0.5"):
        losses.get("kl_divergence")(np.array([[1.5, -0.5]]), np.array([[0.5, 0.5]]))
    with pytest.raises(ValueError, match="per-sample shape"):
        losses.get("half_mse")(np.zeros((2, 3)), np.zeros((2, 2)))


def test_configs_round_trip():
    for loss in (losses.MeanSquaredError("sum"), losses.MeanAbsoluteError("sum"),
                 losses.HalfSquaredError("sum"), losses.KLDivergence("sum", eps=1e-6)):
        again = type(loss)(**loss.get_config())
        assert again.get_config() == loss.get_config()
        assert loss.serialize()["class_name"] == type(loss).__name__
    assert losses.get("mse").get_config() == {"reduction": "mean"}


@pytest.mark.parametrize("name,last", [("half_mse", "sigmoid"), ("mse", "tanh"),
                                       ("kl_divergence", "softmax")])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_model_gradcheck(name, last, reduction):
    x = np.random.default_rng(2).standard_normal((6, 4))
    y = np.random.default_rng(3).dirichlet(np.ones(3), size=6)
    model = rp.Sequential([Dense(5, activation="tanh"), Dense(3, activation=last)],
                          input_shape=(4,), dtype="float64", seed=0)
    assert rp.gradcheck(model, x, y, loss=losses.get(name, reduction=reduction)) < 1e-6


def test_trains_with_sum_reduction():
    # Fitting y = 2x - 1 with the summed half-squared error and plain SGD.
    x = np.linspace(-1, 1, 32).reshape(-1, 1)
    y = 2 * x - 1
    model = rp.Sequential([Dense(1)], input_shape=(1,), seed=0)
    trainer = rp.Trainer(model, losses.HalfSquaredError(reduction="sum"),
                         rp.optim.SGD(lr=0.02), metrics=())
    history = trainer.fit(x, y, epochs=60, batch_size=8, verbose=0)
    assert history.history["loss"][-1] < 1e-4
    np.testing.assert_allclose(model.layers[0].params["W"], [[2.0]], atol=1e-2)
