"""rp.minimize (gradient descent on a plain function), rp.mc_predict (MC dropout)
and rp.pruning (magnitude pruning kept through training)."""
import numpy as np
import pytest

import retroprop as rp
from retroprop import pruning
from retroprop.layers import Dense, Dropout
from retroprop.minimize import numerical_gradient

# -- minimize ------------------------------------------------------------------------


def quadratic(x):
    return x[0] ** 2 + 10.0 * x[1] ** 2


def quadratic_grad(x):
    return np.array([2.0 * x[0], 20.0 * x[1]])


def test_minimize_stops_when_the_gradient_is_small():
    result = rp.minimize(quadratic, [3.0, -2.0], grad=quadratic_grad, lr=0.05, eps=1e-6)
    assert result.converged and result.grad_norm <= 1e-6
    np.testing.assert_allclose(result.x, [0.0, 0.0], atol=1e-6)
    # Plain gradient descent: x_{k+1} = x_k (1 - 2 lr) along x, so the number of
    # steps is the first k with 6 * 0.9^k <= 1e-6 (the y part decays faster).
    assert result.steps == int(np.ceil(np.log(1e-6 / 6.0) / np.log(0.9)))
    assert result.history["grad_norm"][-1] <= 1e-6 < result.history["grad_norm"][-2]
    assert len(result.history["x"]) == result.steps + 1
    assert all(a >= b for a, b in zip(result.history["f"], result.history["f"][1:]))


def test_minimize_numerical_gradient_and_optimizers():
    rosen = lambda v: (1 - v[0]) ** 2 + 100 * (v[1] - v[0] ** 2) ** 2  # noqa: E731
    x0 = np.array([-1.2, 1.0])
    g = numerical_gradient(rosen, x0)
    exact = np.array([-2 * (1 - x0[0]) - 400 * x0[0] * (x0[1] - x0[0] ** 2),
                      200 * (x0[1] - x0[0] ** 2)])
    np.testing.assert_allclose(g, exact, rtol=1e-7)
    adam = rp.minimize(rosen, x0, optimizer=rp.optim.Adam(lr=0.02), eps=1e-4, max_steps=20000)
    assert adam.converged
    np.testing.assert_allclose(adam.x, [1.0, 1.0], atol=1e-3)
    capped = rp.minimize(rosen, x0, lr=1e-3, max_steps=50)
    assert capped.steps == 50 and not capped.converged


def test_minimize_too_large_a_step_is_reported():
    with pytest.raises(ValueError, match="not finite at step"):
        rp.minimize(quadratic, [1.0, 1.0], grad=quadratic_grad, lr=2.0, max_steps=5000)


def test_minimize_bad_arguments():
    with pytest.raises(TypeError, match="f must be callable"):
        rp.minimize(3, [1.0])
    with pytest.raises(ValueError, match="x0 must be a non-empty finite array"):
        rp.minimize(quadratic, [np.nan, 1.0])
    with pytest.raises(ValueError, match="eps must be a finite number >= 0"):
        rp.minimize(quadratic, [1.0, 1.0], eps=-1)
    with pytest.raises(ValueError, match="max_steps must be an integer >= 0"):
        rp.minimize(quadratic, [1.0, 1.0], max_steps=1.5)
    with pytest.raises(ValueError, match="grad returned shape"):
        rp.minimize(quadratic, [1.0, 1.0], grad=lambda x: np.zeros(3))
    with pytest.raises(TypeError, match="optimizer must be a retroprop Optimizer"):
        rp.minimize(quadratic, [1.0, 1.0], optimizer="sgd")


# -- MC dropout ----------------------------------------------------------------------

def _dropout_model(dtype="float64"):
    return rp.Sequential([Dense(16, activation="relu"), Dropout(0.5, seed=1),
                          Dense(3, activation="softmax")], input_shape=(4,), dtype=dtype, seed=0)


def test_mc_predict_is_the_average_of_dropout_passes():
    model = _dropout_model()
    x = np.random.default_rng(0).standard_normal((5, 4))
    mean, std = rp.mc_predict(model, x, samples=7, seed=3, return_std=True)
    # The same passes by hand: generator seeded the same way, dropout on.
    drop = model.layers[1]
    kept = drop._rng
    drop._rng = np.random.default_rng([3, 0])
    passes = []
    for _ in range(7):
        h = model.layers[0].forward(x)
        h = drop.forward(h, training=True)
        passes.append(model.layers[2].forward(h).copy())
    drop._rng = kept
    np.testing.assert_allclose(mean, np.mean(passes, axis=0), rtol=1e-12)
    np.testing.assert_allclose(std, np.std(passes, axis=0), rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(mean.sum(axis=1), 1.0)
    assert std.max() > 0          # the passes differ
    # Reproducible with a seed, and the layer's own generator is left alone.
    np.testing.assert_array_equal(rp.mc_predict(model, x, samples=7, seed=3), mean)
    assert drop._rng is kept


def test_mc_predict_converges_to_the_average_network():
    # For a linear output after dropout the expectation is the ordinary prediction.
    model = rp.Sequential([Dense(8, activation="tanh"), Dropout(0.3, seed=0), Dense(2)],
                          input_shape=(3,), dtype="float64", seed=0)
    x = np.random.default_rng(1).standard_normal((4, 3))
    mc = rp.mc_predict(model, x, samples=4000, batch_size=3, seed=0)
    np.testing.assert_allclose(mc, model.predict(x), atol=0.03)


def test_mc_predict_errors():
    plain = rp.Sequential([Dense(2)], input_shape=(3,), seed=0)
    with pytest.raises(ValueError, match="has no Dropout layer"):
        rp.mc_predict(plain, np.zeros((1, 3)))
    with pytest.raises(ValueError, match="samples must be an integer >= 1"):
        rp.mc_predict(_dropout_model(), np.zeros((1, 4)), samples=0)
    with pytest.raises(ValueError, match="batch_size must be an integer >= 1"):
        rp.mc_predict(_dropout_model(), np.zeros((1, 4)), batch_size=-2)
    with pytest.raises(ValueError, match="expects input of shape"):
        rp.mc_predict(_dropout_model(), np.zeros((1, 5)))


# -- pruning --------------------------------------------------------------------------

def _mlp(seed=0):
    return rp.Sequential([Dense(32, activation="relu"), Dense(16, activation="relu"),
                          Dense(3, activation="softmax")], input_shape=(10,), seed=seed)


def test_magnitude_masks_prune_the_smallest_weights():
    model = _mlp()
    masks = pruning.magnitude_masks(model, 0.75)
    for layer in model.layers:
        w, keep = layer.params["W"], masks[f"{layer.name}/W"]
        assert (~keep).sum() == round(0.75 * w.size)
        assert np.abs(w[~keep]).max() <= np.abs(w[keep]).min()
    pruning.apply_masks(model, masks)
    report = pruning.sparsity(model)
    assert report["total"] == pytest.approx(0.75, abs=1e-3)
    assert all("/b" not in key for key in report)          # biases are not pruned
    text = pruning.summary(model)
    assert "dense/W" in text and "75.0%" in text


def test_global_scope_uses_one_threshold():
    model = _mlp()
    masks = pruning.magnitude_masks(model, 0.5, scope="global")
    kept = np.concatenate([np.abs(model.layers[i].params["W"])[masks[f"{l.name}/W"]]
                           for i, l in enumerate(model.layers)])
    cut = np.concatenate([np.abs(model.layers[i].params["W"])[~masks[f"{l.name}/W"]]
                          for i, l in enumerate(model.layers)])
    assert cut.max() <= kept.min()
    assert cut.size == round(0.5 * (cut.size + kept.size))


def test_pruned_weights_stay_pruned():
    model = _mlp()
    first = pruning.magnitude_masks(model, 0.3)
    pruning.apply_masks(model, first)
    for layer in model.layers:       # grow the pruned weights: they must stay pruned
        layer.params["W"] += 5.0 * ~first[f"{layer.name}/W"]
    second = pruning.magnitude_masks(model, 0.6, masks=first)
    for key in first:
        assert not np.any(second[key] & ~first[key])


def test_pruning_callback_keeps_masks_through_training():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((300, 10)).astype(np.float32)
    y = (x[:, :3].argmax(axis=1))
    model = _mlp()
    cb = pruning.Pruning(0.8, begin_epoch=1, end_epoch=4)
    trainer = rp.Trainer(model, "categorical_crossentropy",
                         rp.optim.SGD(lr=0.1, momentum=0.9), callbacks=[cb])
    history = trainer.fit(x, y, epochs=6, batch_size=32, verbose=0)
    # Zhu & Gupta's cubic ramp: 0 before epoch 1, then 0.8 (1 - (1 - p)^3).
    expected = [0.0] + [0.8 * (1 - (1 - p) ** 3) for p in (0, 1 / 3, 2 / 3)] + [0.8, 0.8]
    np.testing.assert_allclose(cb.history, expected, atol=2e-3)
    assert history.history["sparsity"] == cb.history
    for layer in model.layers:
        np.testing.assert_array_equal(layer.params["W"][~cb.masks[f"{layer.name}/W"]], 0.0)
    assert trainer.evaluate(x, y)["accuracy"] > 0.85        # still learns at 80% sparsity


def test_pruning_bad_arguments():
    with pytest.raises(ValueError, match="sparsity must be in"):
        pruning.magnitude_masks(_mlp(), 1.0)
    with pytest.raises(ValueError, match="scope must be"):
        pruning.magnitude_masks(_mlp(), 0.5, scope="net")
    with pytest.raises(ValueError, match="must not exceed"):
        pruning.Pruning(0.2, initial_sparsity=0.5)
    with pytest.raises(ValueError, match="end_epoch .* must not be before"):
        pruning.Pruning(0.5, begin_epoch=3, end_epoch=1)
    with pytest.raises(TypeError, match="target_sparsity must be a number"):
        pruning.Pruning("half")
    with pytest.raises(ValueError, match="no trainable parameters named"):
        pruning.magnitude_masks(rp.Sequential([Dropout(0.1)], input_shape=(3,)), 0.5)
    with pytest.raises(ValueError, match="mask for 'dense/W' has shape"):
        pruning.apply_masks(_mlp(), {"dense/W": np.ones((2, 2), bool)})
