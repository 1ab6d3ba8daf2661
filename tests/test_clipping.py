"""Gradient clipping on every optimizer: clipnorm, clipvalue, global_clipnorm."""
import numpy as np
import pytest

import retroprop as rp
from retroprop import optim
from retroprop.layers import Dense

ALL = [optim.SGD, optim.Adam, optim.AdamW, optim.RMSprop, optim.Adagrad]


def grads():
    return [np.array([3.0, 4.0]), np.array([[0.5, -12.0]])]   # norms 5 and ~12.01


def test_clipvalue_clips_each_entry():
    g = grads()
    optim.SGD(lr=0.1, clipvalue=1.0).clip_gradients(g)
    np.testing.assert_array_equal(g[0], [1.0, 1.0])
    np.testing.assert_array_equal(g[1], [[0.5, -1.0]])


def test_clipnorm_rescales_each_tensor():
    g = grads()
    before = g[1].copy()
    total = optim.SGD(lr=0.1, clipnorm=6.0).clip_gradients(g)
    assert total == pytest.approx(np.sqrt(25 + 0.25 + 144))
    np.testing.assert_array_equal(g[0], [3.0, 4.0])                    # norm 5 <= 6: kept
    np.testing.assert_allclose(g[1], before * 6.0 / np.linalg.norm(before))
    assert np.linalg.norm(g[1]) == pytest.approx(6.0)


def test_global_clipnorm_against_torch():
    torch = pytest.importorskip("torch")
    g = grads()
    params = [torch.nn.Parameter(torch.zeros(a.shape, dtype=torch.float64)) for a in g]
    for p, a in zip(params, g):
        p.grad = torch.tensor(a)
    torch.nn.utils.clip_grad_norm_(params, max_norm=2.0)
    optim.Adam(global_clipnorm=2.0).clip_gradients(g)
    for p, a in zip(params, g):
        np.testing.assert_allclose(a, p.grad.numpy(), rtol=1e-6)   # torch divides by norm + 1e-6
    assert np.sqrt(sum((a ** 2).sum() for a in g)) == pytest.approx(2.0)


def test_clipvalue_against_torch():
    torch = pytest.importorskip("torch")
    g = grads()
    params = [torch.nn.Parameter(torch.zeros(a.shape, dtype=torch.float64)) for a in g]
    for p, a in zip(params, g):
        p.grad = torch.tensor(a)
    torch.nn.utils.clip_grad_value_(params, clip_value=0.7)
    optim.SGD(clipvalue=0.7).clip_gradients(g)
    for p, a in zip(params, g):
        np.testing.assert_array_equal(a, p.grad.numpy())


@pytest.mark.parametrize("cls", ALL)
def test_every_optimizer_steps_with_clipped_gradients(cls):
    # A clipped step equals an unclipped step on the clipped gradient.
    w = np.array([1.0, -2.0, 0.5])
    g = np.array([30.0, -40.0, 0.0])        # norm 50
    clipped = cls(lr=0.1, clipnorm=1.0)
    plain = cls(lr=0.1)
    w1, w2 = w.copy(), w.copy()
    clipped.step([("w", w1, g.copy())])
    plain.step([("w", w2, g / 50.0)])
    np.testing.assert_allclose(w1, w2, rtol=1e-12)
    assert clipped.get_config()["clipnorm"] == 1.0
    again = optim.deserialize(clipped.serialize())
    assert again.clipnorm == 1.0 and again.clipvalue is None


def test_config_without_clipping_is_unchanged():
    assert "clipnorm" not in optim.SGD().get_config()
    config = optim.RMSprop(clipvalue=0.5, global_clipnorm=2.0).get_config()
    assert config["clipvalue"] == 0.5 and config["global_clipnorm"] == 2.0


@pytest.mark.parametrize("kwargs,exc,match", [
    (dict(clipnorm=0), ValueError, "clipnorm must be a positive finite number"),
    (dict(clipvalue=-1), ValueError, "clipvalue must be a positive finite number"),
    (dict(global_clipnorm=float("inf")), ValueError, "global_clipnorm must be"),
    (dict(clipnorm="big"), TypeError, "clipnorm must be a positive number or None"),
    (dict(clipvalue=True), TypeError, "clipvalue must be a positive number or None"),
    (dict(clipnorm=1.0, global_clipnorm=1.0), ValueError, "not both"),
])
def test_bad_arguments(kwargs, exc, match):
    for cls in ALL:
        with pytest.raises(exc, match=match):
            cls(**kwargs)


def test_nonfinite_gradient_is_not_hidden_by_clipping():
    # clipvalue would turn +inf into 1.0; the step must still be refused.
    w = np.array([1.0, 2.0])
    opt = optim.SGD(lr=0.1, clipvalue=1.0)
    bad = opt.apply_step([("w", w, np.array([np.inf, 0.5]))])
    assert bad == "w"
    np.testing.assert_array_equal(w, [1.0, 2.0])


def _exploding_data():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((64, 8)) * 50.0           # badly scaled inputs
    y = rng.integers(0, 3, 64)
    return x, y


def _mlp(seed=0):
    return rp.Sequential([Dense(16, activation="relu"), Dense(3, activation="softmax")],
                         input_shape=(8,), seed=seed)


def test_clipping_applies_on_the_one_call_training_step():
    """A Dense/softmax/cross-entropy model trains in one backend call per step
    (a step program); its gradients must still be clipped before the update."""
    x, y = _exploding_data()
    lr, c = 0.05, 0.5
    model = _mlp()
    start = [p.copy() for _, p, _ in model.named_parameters()]
    trainer = rp.Trainer(model, "categorical_crossentropy",
                         optim.SGD(lr=lr, global_clipnorm=c), metrics=())
    trainer.fit(x, y, epochs=1, batch_size=64, shuffle=False, verbose=0)
    # One plain-SGD step moves the weights by lr * (clipped gradient): norm <= lr * c.
    moved = np.sqrt(sum(((p - s) ** 2).sum()
                        for (_, p, _), s in zip(model.named_parameters(), start)))
    assert moved == pytest.approx(lr * c, rel=1e-4)
    # The same step layer by layer (a tiny reference: gradients from gradcheck's
    # backprop, then clipping by hand).
    ref = _mlp()
    ref.forward(x.astype(np.float32), training=True)
    loss = rp.losses.get("categorical_crossentropy")
    _, seed = loss.fused_with_softmax(ref.layers[-1].logits, y, ref.backend)
    ref.backward_from_logits(seed, input_grad=False)
    g = [gr.astype(np.float64) for _, _, gr in ref.named_parameters()]
    norm = np.sqrt(sum((a ** 2).sum() for a in g))
    assert norm > c * 10          # the clipping did something
    for (_, p, _), s, a in zip(model.named_parameters(), start, g):
        np.testing.assert_allclose(p, s - lr * a * (c / norm), rtol=1e-4, atol=1e-6)


def test_clipping_tames_an_exploding_step():
    x, y = _exploding_data()
    free = rp.Trainer(_mlp(), "categorical_crossentropy", optim.SGD(lr=1.0), metrics=())
    clipped = rp.Trainer(_mlp(), "categorical_crossentropy",
                         optim.SGD(lr=1.0, clipnorm=1.0), metrics=())
    # Without clipping the loss overflows within 5 epochs (the step is refused)...
    with pytest.raises(rp.NonFiniteError):
        free.fit(x, y, epochs=5, batch_size=16, verbose=0)
    # ...with it every step moves each tensor by at most lr * 1.0 and training goes on.
    h_clip = clipped.fit(x, y, epochs=5, batch_size=16, verbose=0)
    assert np.all(np.isfinite(h_clip.history["loss"]))
    assert h_clip.history["loss"][-1] < 50
