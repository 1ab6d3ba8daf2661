"""Losses of the user's own: a pair of functions, or a Loss subclass with value and grad."""
import numpy as np
import pytest

import retroprop as rp


def huber_value(y, p, delta=1.0):
    r = np.abs(p - y)
    return float(np.mean(np.where(r <= delta, 0.5 * r ** 2, delta * (r - 0.5 * delta))))


def huber_grad(y, p, delta=1.0):
    return np.clip(p - y, -delta, delta) / p.size


class Huber(rp.losses.Loss):
    name = "huber"

    def value(self, targets, y_pred):
        return huber_value(targets, y_pred)

    def grad(self, targets, y_pred):
        return huber_grad(targets, y_pred)


def regression_data(n=64, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, 3))
    y = x @ np.array([[1.0], [-2.0], [0.5]]) + 3 * (rng.random((n, 1)) < 0.1)   # outliers
    return x, y


def model64(seed=0):
    return rp.Sequential([rp.layers.Dense(5, activation="tanh"), rp.layers.Dense(1)],
                         input_shape=(3,), dtype="float64", seed=seed)


@pytest.mark.parametrize("loss", [(huber_value, huber_grad),
                                  rp.losses.FunctionLoss(huber_value, huber_grad), Huber(), Huber])
def test_custom_loss_gradients_are_exact(loss):
    x, y = regression_data()
    assert rp.gradcheck(model64(), x, y, loss=loss) < 1e-6


def test_function_pair_and_subclass_train_identically():
    x, y = regression_data()
    weights = []
    for loss in [(huber_value, huber_grad), Huber()]:
        model = model64()
        history = rp.Trainer(model, loss=loss, optimizer=rp.optim.SGD(lr=0.1), metrics=[]) \
            .fit(x, y, epochs=5, batch_size=16, seed=0, verbose=0)
        assert history.history["loss"][-1] < history.history["loss"][0]
        weights.append(model.get_weights())
    for a, b in zip(*weights):
        np.testing.assert_array_equal(a, b)


def test_function_loss_matches_builtin_mse():
    def mse(y, p):
        return np.mean((p - y) ** 2)

    def mse_grad(y, p):
        return 2 * (p - y) / p.size

    x, y = regression_data()
    results = []
    for loss in ["mse", (mse, mse_grad)]:
        model = model64()
        rp.Trainer(model, loss=loss, optimizer=rp.optim.SGD(lr=0.05), metrics=[]) \
            .fit(x, y, epochs=3, batch_size=16, seed=0, verbose=0)
        results.append(model.predict(x))
    np.testing.assert_allclose(results[0], results[1], rtol=1e-12)


def test_custom_loss_is_callable_like_the_builtins():
    loss = rp.losses.get((huber_value, huber_grad))
    y, p = np.array([0.0, 0.0]), np.array([0.5, 3.0])
    assert loss(y, p) == pytest.approx((0.125 + 2.5) / 2)     # (N,) taken as (N, 1) too
    np.testing.assert_allclose(loss.gradient(y[:, None], p[:, None]), [[0.25], [0.5]])
    assert loss.name == "huber_value"


def test_missing_method_is_named():
    class OnlyValue(rp.losses.Loss):
        def value(self, targets, y_pred):
            return 0.0

    class Nothing(rp.losses.Loss):
        pass

    with pytest.raises(TypeError, match=r"OnlyValue does not implement grad\(targets, y_pred\)"):
        rp.Trainer(model64(), loss=OnlyValue(), optimizer=rp.optim.SGD(lr=0.1))
    with pytest.raises(TypeError, match=r"value\(targets, y_pred\) and grad"):
        rp.losses.get(Nothing())
    # Called directly, the base methods say what to implement (not a bare NotImplementedError).
    with pytest.raises(NotImplementedError, match="OnlyValue must implement grad"):
        OnlyValue().gradient([1.0], [2.0])


def test_a_function_without_gradient_is_refused_with_advice():
    with pytest.raises(TypeError, match=r"needs its gradient.*\(value_fn, grad_fn\)"):
        rp.losses.get(huber_value)
    with pytest.raises(TypeError, match="grad_fn must be a function"):
        rp.losses.FunctionLoss(huber_value, "grad")


def test_bad_function_results_are_named():
    x, y = regression_data(8)
    wrong_shape = rp.losses.FunctionLoss(huber_value, lambda y, p: np.zeros(3), name="bad")
    with pytest.raises(ValueError, match=r"loss 'bad': grad_fn returned shape \(3,\)"):
        rp.gradcheck(model64(), x, y, loss=wrong_shape)
    not_scalar = rp.losses.FunctionLoss(lambda y, p: p - y, huber_grad, name="vec")
    with pytest.raises(TypeError, match="loss 'vec': value_fn must return a number"):
        not_scalar(y, y)
