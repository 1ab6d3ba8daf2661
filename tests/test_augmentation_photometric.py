"""RandomRotation, RandomContrast, RandomBrightness: exact transforms against
NumPy/SciPy references, gradients (with the random draws held fixed), seeds,
inference identity, errors, configs."""
import numpy as np
import pytest

import retroprop as rp
from retroprop.layers import (Conv2D, Dense, Flatten, RandomBrightness, RandomContrast,
                              RandomRotation)


def built(layer, shape, dtype="float64"):
    layer.build(shape, dtype, np.random.default_rng(0))
    return layer


def fixed_draw_gradient_error(layer, x, seed=5, eps=1e-6):
    """Max relative error of backward against central differences, with the
    layer's generator reset before every forward (so every pass draws alike)."""
    weights = np.random.default_rng(99).standard_normal(layer.forward(x, True).shape)

    def objective(xx):
        layer._rng = np.random.default_rng(seed)
        return float(np.sum(layer.forward(xx, training=True) * weights))

    objective(x)
    dx = layer.backward(weights.copy()).copy()
    numeric = np.zeros_like(x)
    for i in range(x.size):
        old = x.flat[i]
        x.flat[i] = old + eps
        plus = objective(x)
        x.flat[i] = old - eps
        minus = objective(x)
        x.flat[i] = old
        numeric.flat[i] = (plus - minus) / (2 * eps)
    return float(np.max(np.abs(dx - numeric) / np.maximum(np.abs(dx) + np.abs(numeric), 1e-4)))


# -- RandomRotation -------------------------------------------------------------

def test_rotation_quarter_turn_is_rot90():
    x = np.arange(2 * 4 * 4 * 3, dtype=np.float64).reshape(2, 4, 4, 3)
    layer = built(RandomRotation((0.25, 0.25), seed=0), (4, 4, 3))       # +90 degrees
    y = layer.forward(x, training=True)
    np.testing.assert_allclose(y, np.rot90(x, k=1, axes=(1, 2)), atol=1e-9)
    half = built(RandomRotation((0.5, 0.5), interpolation="nearest"), (4, 4, 3))
    np.testing.assert_allclose(half.forward(x, training=True), x[:, ::-1, ::-1], atol=1e-9)


@pytest.mark.parametrize("interpolation,order", [("bilinear", 1), ("nearest", 0)])
@pytest.mark.parametrize("shape", [(5, 7, 2), (6, 6, 1), (1, 3, 1), (9, 4, 3)])
def test_rotation_against_scipy(interpolation, order, shape):
    ndimage = pytest.importorskip("scipy.ndimage")
    layer = built(RandomRotation(0.2, fill_value=-1.5, interpolation=interpolation, seed=3),
                  shape)
    x = np.random.default_rng(1).standard_normal((4,) + shape)
    y = layer.forward(x, training=True)
    h, w, _ = shape
    centre = np.array([(h - 1) / 2, (w - 1) / 2])
    for i, angle in enumerate(layer.angles):
        c, s = np.cos(angle), np.sin(angle)
        matrix = np.array([[c, s], [-s, c]])
        offset = centre - matrix @ centre
        for ch in range(shape[2]):
            expected = ndimage.affine_transform(x[i, :, :, ch], matrix, offset=offset,
                                                order=order, mode="grid-constant", cval=-1.5)
            np.testing.assert_allclose(y[i, :, :, ch], expected, rtol=1e-9, atol=1e-9)
    assert np.all(np.abs(layer.angles) <= 0.2 * 2 * np.pi)


@pytest.mark.parametrize("interpolation", ["bilinear", "nearest"])
def test_rotation_gradient(interpolation):
    layer = built(RandomRotation(0.3, fill_value=0.7, interpolation=interpolation, seed=0),
                  (5, 4, 2))
    x = np.random.default_rng(2).standard_normal((2, 5, 4, 2))
    assert fixed_draw_gradient_error(layer, x) < 1e-6


# -- RandomContrast --------------------------------------------------------------

def test_contrast_formula_and_range():
    x = np.random.default_rng(3).uniform(0.2, 0.8, (200, 3, 4, 2))
    layer = built(RandomContrast((0.5, 0.25), value_range=None, seed=1), (3, 4, 2))
    y = layer.forward(x, training=True)
    f = layer.factors[:, None, None, None]
    mean = x.mean(axis=(1, 2), keepdims=True)
    np.testing.assert_allclose(y, (x - mean) * f + mean, rtol=1e-12)
    assert 0.5 <= layer.factors.min() and layer.factors.max() <= 1.25
    assert layer.factors.min() < 0.6 and layer.factors.max() > 1.15       # spans the range
    np.testing.assert_allclose(y.mean(axis=(1, 2)), x.mean(axis=(1, 2)), rtol=1e-12)


def test_contrast_clips_to_the_value_range():
    x = np.random.default_rng(4).uniform(0, 1, (50, 4, 4, 1))
    y = built(RandomContrast((0.0, 3.0), seed=2), (4, 4, 1)).forward(x, training=True)
    assert y.min() >= 0.0 and y.max() <= 1.0 and np.any(y == 1.0) and np.any(y == 0.0)


@pytest.mark.parametrize("value_range", [None, (0.0, 1.0)])
def test_contrast_gradient(value_range):
    layer = built(RandomContrast(0.9, value_range=value_range, seed=0), (3, 3, 2))
    x = np.random.default_rng(5).uniform(0.05, 0.95, (3, 3, 3, 2))
    assert fixed_draw_gradient_error(layer, x) < 1e-6


def test_contrast_against_torch_formula():
    torch = pytest.importorskip("torch")
    x = np.random.default_rng(6).uniform(0, 1, (3, 4, 5, 2))
    layer = built(RandomContrast(0.4, value_range=None, seed=7), (4, 5, 2))
    y = layer.forward(x, training=True)
    t = torch.tensor(x, requires_grad=True)
    f = torch.tensor(layer.factors)[:, None, None, None]
    m = t.mean(dim=(1, 2), keepdim=True)
    ty = (t - m) * f + m
    dy = np.random.default_rng(8).standard_normal(x.shape)
    ty.backward(torch.tensor(dy))
    np.testing.assert_allclose(y, ty.detach().numpy(), rtol=1e-12)
    np.testing.assert_allclose(layer.backward(dy), t.grad.numpy(), rtol=1e-12)


# -- RandomBrightness -----------------------------------------------------------

def test_brightness_offsets_and_clip():
    x = np.random.default_rng(9).uniform(0, 1, (300, 2, 2, 3))
    layer = built(RandomBrightness(0.2, seed=4), (2, 2, 3))
    y = layer.forward(x, training=True)
    expected = np.clip(x + layer.offsets[:, None, None, None], 0, 1)
    np.testing.assert_allclose(y, expected, rtol=1e-12)
    assert np.all(np.abs(layer.offsets) <= 0.2) and layer.offsets.std() > 0.08
    scaled = built(RandomBrightness((0.1, 0.1), value_range=(0, 255)), (2, 2, 3))
    np.testing.assert_allclose(scaled.forward(x * 100, training=True), x * 100 + 25.5)


@pytest.mark.parametrize("value_range", [None, (0.0, 1.0)])
def test_brightness_gradient(value_range):
    layer = built(RandomBrightness(0.5, value_range=value_range, seed=1), (3, 2, 2))
    x = np.random.default_rng(10).uniform(0.05, 0.95, (4, 3, 2, 2))
    assert fixed_draw_gradient_error(layer, x) < 1e-6


# -- shared behaviour -----------------------------------------------------------

LAYERS = [lambda: RandomRotation(0.1, seed=3), lambda: RandomContrast(0.3, seed=3),
          lambda: RandomBrightness(0.3, seed=3)]


@pytest.mark.parametrize("make", LAYERS)
def test_identity_at_inference_and_seeded(make):
    x = np.random.default_rng(11).uniform(0, 1, (8, 5, 5, 1)).astype(np.float32)
    layer = built(make(), (5, 5, 1), "float32")
    assert layer.forward(x) is x
    assert layer.backward(np.ones_like(x)) is not None
    a = layer.forward(x, training=True).copy()
    again = built(make(), (5, 5, 1), "float32").forward(x, training=True)
    np.testing.assert_array_equal(a, again)
    assert a.dtype == np.float32 and not np.array_equal(a, x)
    assert type(layer).from_config(layer.get_config()).get_config() == layer.get_config()


@pytest.mark.parametrize("make,match", [
    (lambda: RandomRotation(1.5), "factor must give -1 <= lower <= upper <= 1"),
    (lambda: RandomRotation(0.1, interpolation="cubic"), "interpolation must be"),
    (lambda: RandomRotation(0.1, fill_value=np.nan), "fill_value must be finite"),
    (lambda: RandomContrast(-0.1), "factor must give 0 <= lower <= 1"),
    (lambda: RandomContrast((1.5, 0.0)), "factor must give 0 <= lower <= 1"),
    (lambda: RandomContrast("x"), "factor must be a number"),
    (lambda: RandomBrightness((0.5, 0.1)), "lower <= upper"),
    (lambda: RandomBrightness(0.1, value_range=(1, 0)), "value_range must have finite low < high"),
    (lambda: RandomBrightness(0.1, value_range=5), "value_range must be None or a"),
    (lambda: RandomContrast(0.1, seed=-1), "seed must be None or an integer >= 0"),
])
def test_bad_arguments(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_in_a_model_with_summary_and_training():
    rng = np.random.default_rng(12)
    x = rng.uniform(0, 1, (32, 8, 8, 1)).astype(np.float32)
    y = rng.integers(0, 2, 32)
    model = rp.Sequential([RandomRotation(0.05, seed=0), RandomContrast(0.2, seed=1),
                           RandomBrightness(0.1, seed=2), Conv2D(2, 3, activation="relu"),
                           Flatten(), Dense(2, activation="softmax")],
                          input_shape=(8, 8, 1), seed=0)
    text = model.summary(print_fn=None)
    for name in ("RandomRotation", "RandomContrast", "RandomBrightness"):
        assert name in text
    history = rp.Trainer(model, "categorical_crossentropy", rp.optim.SGD(lr=0.1)).fit(
        x, y, epochs=2, batch_size=8, verbose=0)
    assert np.all(np.isfinite(history.history["loss"]))
    np.testing.assert_array_equal(model.predict(x), model.predict(x))   # deterministic inference
