"""Normalization: adapt on the training set, standardize, save with the model."""
import numpy as np
import pytest

import retroprop as rp
from retroprop.gradcheck import check_layer_gradients
from retroprop.layers import Dense, Flatten, Normalization


def built(layer, shape, dtype="float64"):
    layer.build(shape, dtype, np.random.default_rng(0))
    return layer


def test_adapt_gives_zero_mean_unit_variance_per_feature():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((500, 4)) * [1.0, 10.0, 0.1, 3.0] + [5.0, -2.0, 1e4, 0.0]
    layer = built(Normalization(), (4,)).adapt(x)
    assert layer.state["mean"].shape == (4,)
    np.testing.assert_allclose(layer.state["mean"], x.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(layer.state["variance"], x.var(axis=0), rtol=1e-10)
    y = layer.forward(x)
    np.testing.assert_allclose(y.mean(axis=0), 0.0, atol=1e-9)
    np.testing.assert_allclose(y.std(axis=0), 1.0, rtol=1e-9)
    assert layer.state["count"][0] == 500


def test_chunked_adapt_equals_one_pass_even_with_a_large_offset():
    rng = np.random.default_rng(1)
    x = (rng.standard_normal((1001, 3)) + 1e6).astype(np.float32)
    a = built(Normalization(), (3,)).adapt(x, batch_size=7)
    b = built(Normalization(), (3,)).adapt(x, batch_size=5000)
    x64 = x.astype(np.float64)
    np.testing.assert_allclose(a.state["variance"], x64.var(axis=0), rtol=1e-9)
    np.testing.assert_allclose(a.state["mean"], b.state["mean"], rtol=1e-14)
    np.testing.assert_allclose(a.state["variance"], b.state["variance"], rtol=1e-9)


@pytest.mark.parametrize("axis,stat_shape", [(-1, (1, 1, 3)), (None, (1, 1, 1)),
                                             ((1, 2), (4, 5, 1)), (3, (1, 1, 3)),
                                             ((1, 2, 3), (4, 5, 3))])
def test_axes_on_images(axis, stat_shape):
    rng = np.random.default_rng(2)
    x = rng.standard_normal((20, 4, 5, 3)) * 2 + 1
    layer = built(Normalization(axis=axis), (4, 5, 3)).adapt(x)
    assert layer.state["mean"].shape == stat_shape
    kept = [i + 1 for i, s in enumerate(stat_shape) if s != 1]
    reduce = tuple(a for a in range(4) if a not in kept)
    np.testing.assert_allclose(layer.state["mean"], x.mean(axis=reduce, keepdims=True)[0],
                               rtol=1e-10, atol=1e-12)
    y = layer.forward(x)
    np.testing.assert_allclose(y.mean(axis=reduce), 0.0, atol=1e-10)


def test_adapt_before_build_and_explicit_statistics():
    x = np.arange(12.0).reshape(6, 2)
    layer = Normalization().adapt(x)
    model = rp.Sequential([layer, Dense(1)], input_shape=(2,), seed=0)
    np.testing.assert_allclose(layer.state["mean"], [5.0, 6.0])
    fixed = built(Normalization(mean=[1.0, 2.0], variance=[4.0, 0.0]), (2,))
    y = fixed.forward(np.array([[3.0, 2.0]]))
    np.testing.assert_allclose(y, [[1.0, 0.0]])          # variance 0: divided by epsilon, 0 stays 0
    assert model.layers[0].adapted and fixed.adapted


def test_against_torch_and_sklearn():
    sk = pytest.importorskip("sklearn.preprocessing")
    x = np.random.default_rng(3).standard_normal((50, 6)) * 3 + 2
    layer = built(Normalization(), (6,)).adapt(x)
    np.testing.assert_allclose(layer.forward(x), sk.StandardScaler().fit_transform(x), rtol=1e-10,
                               atol=1e-12)
    torch = pytest.importorskip("torch")
    t = torch.tensor(x, requires_grad=True)
    ty = (t - t.mean(0).detach()) / t.std(0, unbiased=False).detach()
    dy = np.random.default_rng(4).standard_normal(x.shape)
    ty.backward(torch.tensor(dy))
    layer.forward(x)
    np.testing.assert_allclose(layer.backward(dy), t.grad.numpy(), rtol=1e-10)


@pytest.mark.parametrize("axis,shape", [(-1, (5,)), (None, (3, 2)), ((1, 2), (3, 2, 2))])
def test_gradients(axis, shape):
    layer = Normalization(axis=axis)
    layer.adapt(np.random.default_rng(5).standard_normal((30,) + shape) * 2 + 1)
    assert check_layer_gradients(layer, shape) < 1e-6


def test_saved_and_loaded_with_the_model(tmp_path):
    rng = np.random.default_rng(6)
    x = (rng.standard_normal((64, 3, 3, 1)) * 40 + 120).astype(np.float32)
    y = rng.integers(0, 2, 64)
    norm = Normalization(axis=None)
    norm.adapt(x)
    model = rp.Sequential([norm, Flatten(), Dense(2, activation="softmax")],
                          input_shape=(3, 3, 1), seed=0)
    text = model.summary(print_fn=None)
    assert "normalization (Normalization)" in text and "Non-trainable params: 3" in text
    rp.Trainer(model, "categorical_crossentropy", rp.optim.SGD(lr=0.1)).fit(
        x, y, epochs=2, batch_size=16, verbose=0)
    # Training never touches the statistics.
    assert norm.state["mean"].ravel()[0] == pytest.approx(x.astype(np.float64).mean(), rel=1e-6)
    model.save(tmp_path / "n.rpz")
    loaded = rp.load_model(tmp_path / "n.rpz")
    assert loaded.layers[0].adapted
    np.testing.assert_array_equal(loaded.layers[0].state["mean"], norm.state["mean"])
    np.testing.assert_array_equal(loaded.predict(x), model.predict(x))


def test_errors():
    with pytest.raises(ValueError, match="axis 0 is the batch axis"):
        Normalization(axis=0)
    with pytest.raises(ValueError, match="axis must be None, an int or a tuple"):
        Normalization(axis="last")
    with pytest.raises(ValueError, match="give both mean and variance"):
        Normalization(mean=1.0)
    with pytest.raises(ValueError, match="variance must be >= 0"):
        Normalization(mean=0.0, variance=-1.0)
    with pytest.raises(ValueError, match="epsilon must be a positive"):
        Normalization(epsilon=0)
    with pytest.raises(ValueError, match="axis 4 is out of range"):
        built(Normalization(axis=4), (2, 2))
    layer = built(Normalization(), (3,))
    with pytest.raises(RuntimeError, match="call adapt"):
        layer.forward(np.zeros((2, 3)))
    with pytest.raises(ValueError, match="per-sample shape"):
        layer.adapt(np.zeros((4, 2)))
    with pytest.raises(ValueError, match="NaN or Inf at index"):
        layer.adapt(np.array([[1.0, 2.0, 3.0], [np.nan, 0.0, 0.0]]))
    with pytest.raises(TypeError, match="numeric"):
        layer.adapt(np.array([["a", "b", "c"]]))
    with pytest.raises(ValueError, match="non-empty batch"):
        layer.adapt(np.zeros((0, 3)))
    with pytest.raises(ValueError, match="do not fit"):
        built(Normalization(mean=[1.0, 2.0], variance=[1.0, 1.0]), (3,))


def test_config_round_trip():
    for layer in (Normalization(axis=(1, 2), epsilon=1e-3, name="n"),
                  Normalization(mean=[1.0, 2.0], variance=[3.0, 4.0]), Normalization(axis=None)):
        again = Normalization.from_config(layer.get_config())
        assert again.get_config() == layer.get_config()
