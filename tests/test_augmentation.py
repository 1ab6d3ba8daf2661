"""Image augmentation layers: RandomFlip, RandomTranslation, RandomCrop."""
import numpy as np
import pytest

import retroprop as rp
from retroprop.gradcheck import check_layer_gradients, relative_error
from retroprop.layers import RandomCrop, RandomFlip, RandomTranslation
from retroprop.layers.augmentation import shift_images


def built(layer, shape, dtype="float64"):
    layer.build(shape, dtype, np.random.default_rng(0))
    return layer


def distinct_images(n, h, w, c=1, dtype=np.float64):
    """Every pixel of every image different, so any permutation is visible."""
    return np.arange(n * h * w * c, dtype=dtype).reshape(n, h, w, c)


# -- RandomFlip --------------------------------------------------------------------------

def test_flip_fraction_is_one_half():
    x = distinct_images(4000, 2, 3)
    y = built(RandomFlip("horizontal", seed=0), (2, 3, 1)).forward(x, training=True)
    flipped = np.all(y == x[:, :, ::-1], axis=(1, 2, 3))
    kept = np.all(y == x, axis=(1, 2, 3))
    assert np.all(flipped ^ kept)               # each image is exactly one of the two
    assert abs(flipped.mean() - 0.5) < 0.03     # 4000 coin flips: std 0.008


def test_flip_both_axes_draws_independently():
    x = distinct_images(4000, 3, 2)
    y = built(RandomFlip("horizontal_and_vertical", seed=1), (3, 2, 1)).forward(x, True)
    outcomes = [x, x[:, :, ::-1], x[:, ::-1], x[:, ::-1, ::-1]]
    matches = np.stack([np.all(y == o, axis=(1, 2, 3)) for o in outcomes])
    assert np.all(matches.sum(axis=0) == 1)
    np.testing.assert_allclose(matches.mean(axis=1), 0.25, atol=0.03)


def test_flip_exact_content_and_modes():
    x = np.array([[[[1.0], [2.0]], [[3.0], [4.0]]]])      # one 2x2 image: rows (1 2), (3 4)
    seen = {"horizontal": set(), "vertical": set()}
    for mode in seen:
        layer = built(RandomFlip(mode, seed=0), (2, 2, 1))
        for _ in range(20):
            seen[mode].add(tuple(layer.forward(x, training=True).ravel()))
    assert seen["horizontal"] == {(1, 2, 3, 4), (2, 1, 4, 3)}
    assert seen["vertical"] == {(1, 2, 3, 4), (3, 4, 1, 2)}


def test_flip_is_per_sample_and_keeps_channels():
    x = distinct_images(64, 2, 2, 3)
    y = built(RandomFlip("horizontal", seed=3), (2, 2, 3)).forward(x, training=True)
    flipped = np.all(y == x[:, :, ::-1], axis=(1, 2, 3))
    assert 0 < flipped.sum() < 64              # some flipped, some not, in one batch
    np.testing.assert_array_equal(y[flipped, :, :, 2], x[flipped, :, ::-1, 2])


# -- RandomTranslation ------------------------------------------------------------------

def test_shift_images_exact():
    img = np.arange(1.0, 17.0).reshape(1, 4, 4, 1)
    out = shift_images(img, [1], [-2], fill_value=-1.0)[0, :, :, 0]
    expected = np.array([[-1, -1, -1, -1],
                         [3, 4, -1, -1],
                         [7, 8, -1, -1],
                         [11, 12, -1, -1]], dtype=float)
    np.testing.assert_array_equal(out, expected)
    # Shifted entirely out of the frame: only fill.
    np.testing.assert_array_equal(shift_images(img, [4], [0], 5.0), 5.0)


def test_translation_fixed_range_is_an_exact_shift():
    # height_factor (0.5, 0.5) on 4 rows: 2 rows down; width (-0.25, -0.25): 1 column left.
    layer = built(RandomTranslation((0.5, 0.5), (-0.25, -0.25), fill_value=9.0, seed=0),
                  (4, 4, 2))
    x = distinct_images(3, 4, 4, 2)
    y = layer.forward(x, training=True)
    np.testing.assert_array_equal(y[:, 2:, :3], x[:, :2, 1:])
    np.testing.assert_array_equal(y[:, :2], 9.0)
    np.testing.assert_array_equal(y[:, :, 3], 9.0)


def test_translation_shifts_are_whole_pixels_spread_over_the_range():
    layer = built(RandomTranslation(0.5, 0.0, seed=2), (9, 1, 1))
    x = np.zeros((2000, 9, 1, 1))
    x[:, 4] = 1.0                              # a single lit row, in the middle
    y = layer.forward(x, training=True)
    lit = y[:, :, 0, 0]
    assert np.all(lit.sum(axis=1) == 1)        # never shifted out of the frame
    shifts = np.argmax(lit, axis=1) - 4
    # factor 0.5 of 9 rows: shifts rint(U(-4.5, 4.5)), i.e. -4..4 about equally often.
    counts = np.bincount(shifts + 4, minlength=9)
    assert len(counts) == 9
    np.testing.assert_allclose(counts / len(shifts), 1 / 9, atol=0.03)
    assert abs(shifts.mean()) < 0.2            # std of the mean ~0.06
    assert np.all(np.isin(y, [0.0, 1.0]))     # no interpolation


def test_translation_seeded():
    x = distinct_images(16, 5, 5)
    a = built(RandomTranslation(0.4, 0.4, seed=7), (5, 5, 1)).forward(x, training=True)
    b = built(RandomTranslation(0.4, 0.4, seed=7), (5, 5, 1)).forward(x, training=True)
    c = built(RandomTranslation(0.4, 0.4, seed=8), (5, 5, 1)).forward(x, training=True)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


# -- RandomCrop --------------------------------------------------------------------------

def test_crop_training_windows_cover_every_offset():
    x = distinct_images(500, 5, 6)
    layer = built(RandomCrop(3, 4, seed=0), (5, 6, 1))
    y = layer.forward(x, training=True)
    assert y.shape == (500, 3, 4, 1)
    offsets = set()
    for i in range(len(x)):
        top = int(y[i, 0, 0, 0] - x[i, 0, 0, 0]) // 6
        left = int(y[i, 0, 0, 0] - x[i, 0, 0, 0]) % 6
        np.testing.assert_array_equal(y[i], x[i, top:top + 3, left:left + 4])
        offsets.add((top, left))
    assert offsets == {(t, l) for t in range(3) for l in range(3)}


def test_crop_inference_is_the_centre():
    x = distinct_images(2, 5, 7)
    y = built(RandomCrop(3, 3), (5, 7, 1)).forward(x, training=False)
    np.testing.assert_array_equal(y, x[:, 1:4, 2:5])


def test_crop_with_padding():
    x = distinct_images(300, 4, 4) + 1.0            # no zero pixels in the images
    layer = built(RandomCrop(4, 4, padding=1, seed=0), (4, 4, 1))
    np.testing.assert_array_equal(layer.forward(x, training=False), x)   # centre = original
    y = layer.forward(x, training=True)
    shifted = [np.array_equal(y[i], x[i]) for i in range(len(x))]
    assert 0 < sum(shifted) < len(x)
    # Each output is the image moved by at most one pixel, zero padding coming in.
    for i in range(20):
        zero_rows = np.all(y[i, :, :, 0] == 0, axis=1).sum()
        zero_cols = np.all(y[i, :, :, 0] == 0, axis=0).sum()
        assert zero_rows <= 1 and zero_cols <= 1
        assert np.count_nonzero(y[i]) >= 9
    assert built(RandomCrop(2, 3, padding=(0, 2)), (4, 4, 1)).output_shape == (2, 3, 1)


# -- common behaviour ---------------------------------------------------------------------

LAYERS = [
    (lambda: RandomFlip("horizontal_and_vertical", seed=0), (4, 5, 2)),
    (lambda: RandomTranslation(0.5, (-0.4, 0.3), fill_value=0.5, seed=0), (4, 5, 2)),
    (lambda: RandomCrop(3, 4, padding=(1, 2), seed=0), (4, 5, 2)),
]
IDS = ["flip", "translation", "crop"]


@pytest.mark.parametrize("make,shape", LAYERS, ids=IDS)
def test_identity_at_inference(make, shape):
    layer = built(make(), shape)
    x = np.random.default_rng(0).standard_normal((3,) + shape)
    y = layer.forward(x, training=False)
    if isinstance(layer, RandomCrop):
        np.testing.assert_array_equal(y, x[:, 0:3, 0:4])   # padded (6, 9): window at (1, 2)
    else:
        np.testing.assert_array_equal(y, x)
        np.testing.assert_array_equal(layer.backward(np.ones_like(x)), 1.0)


@pytest.mark.parametrize("make,shape", LAYERS, ids=IDS)
def test_gradcheck_with_the_draw_fixed(make, shape):
    # A fresh layer with the same seed makes the same first draw, so the
    # finite differences see one fixed linear map.
    layer = built(make(), shape)
    rng = np.random.default_rng(1)
    x = rng.standard_normal((6,) + shape)
    weights = rng.standard_normal((6,) + layer.output_shape)

    def objective():
        return float(np.sum(built(make(), shape).forward(x, training=True) * weights))

    layer.forward(x, training=True)
    analytic = layer.backward(weights.copy())
    eps = 1e-5
    numeric = np.empty(x.size)
    flat = x.reshape(-1)
    for i in range(x.size):
        original = flat[i]
        flat[i] = original + eps
        plus = objective()
        flat[i] = original - eps
        minus = objective()
        flat[i] = original
        numeric[i] = (plus - minus) / (2 * eps)
    assert relative_error(analytic.reshape(-1), numeric) < 1e-6
    assert np.abs(analytic).sum() > 0
    # Inference path, with the library's own checker.
    assert check_layer_gradients(make(), shape) < 1e-6


@pytest.mark.parametrize("make,shape", LAYERS, ids=IDS)
def test_backward_is_the_transpose(make, shape):
    # <L x, g> == <x, L^T g> for the linear part (fill 0 so the map is linear).
    layer = built(make(), shape)
    if isinstance(layer, RandomTranslation):
        layer.fill_value = 0.0
    rng = np.random.default_rng(2)
    x = rng.standard_normal((32,) + shape)
    y = layer.forward(x, training=True)
    g = rng.standard_normal(y.shape)
    assert np.sum(y * g) == pytest.approx(np.sum(x * layer.backward(g)), rel=1e-12)
    assert layer.backward(g, need_dx=False) is None


@pytest.mark.parametrize("make,shape", LAYERS, ids=IDS)
def test_seeded_config_roundtrip_and_dtype(make, shape):
    layer = make()
    clone = rp.layers.deserialize(layer.serialize())
    assert clone.get_config() == layer.get_config()
    x = np.random.default_rng(0).standard_normal((8,) + shape).astype(np.float32)
    a = built(layer, shape, "float32").forward(x, training=True)
    b = built(clone, shape, "float32").forward(x, training=True)
    assert a.dtype == np.float32
    np.testing.assert_array_equal(a, b)


def test_in_a_model_trains_saves_and_predicts_deterministically(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((64, 6, 6, 1)).astype(np.float32)
    y = (x.mean(axis=(1, 2, 3)) > 0).astype(np.int64)
    model = rp.Sequential([
        RandomFlip("horizontal", seed=1),
        RandomTranslation(0.2, 0.2, seed=2),
        RandomCrop(6, 6, padding=1, seed=3),
        rp.layers.Conv2D(4, 3, activation="relu"),
        rp.layers.Flatten(),
        rp.layers.Dense(2, activation="softmax"),
    ], input_shape=(6, 6, 1), seed=0)
    trainer = rp.Trainer(model, "categorical_crossentropy", rp.optim.Adam(lr=0.01))
    history = trainer.fit(x, y, epochs=15, batch_size=16, verbose=0)
    assert history.history["loss"][-1] < history.history["loss"][0]
    np.testing.assert_array_equal(model.predict(x), model.predict(x))
    path = str(tmp_path / "aug.rpz")
    model.save(path)
    restored = rp.load_model(path)
    assert [type(layer).__name__ for layer in restored.layers[:3]] == \
        ["RandomFlip", "RandomTranslation", "RandomCrop"]
    np.testing.assert_allclose(restored.predict(x), model.predict(x), rtol=1e-6)


def test_model_gradcheck_through_augmentation():
    model = rp.Sequential([RandomCrop(4, 4, padding=1), RandomFlip(), rp.layers.Flatten(),
                           rp.layers.Dense(3, activation="softmax")],
                          input_shape=(5, 4, 2), dtype="float64", seed=0)
    x = np.random.default_rng(0).standard_normal((4, 5, 4, 2))
    assert rp.gradcheck(model, x, np.array([0, 1, 2, 0])) < 1e-6


@pytest.mark.parametrize("make,match", [
    (lambda: RandomFlip("diagonal"), "RandomFlip: mode"),
    (lambda: RandomFlip(seed=-1), "RandomFlip: seed"),
    (lambda: RandomFlip(seed=1.5), "RandomFlip: seed"),
    (lambda: RandomTranslation(1.5, 0.1), "RandomTranslation: height_factor"),
    (lambda: RandomTranslation(0.1, (0.3, 0.1)), "RandomTranslation: width_factor"),
    (lambda: RandomTranslation(0.1, (0.1, 0.2, 0.3)), "RandomTranslation: width_factor"),
    (lambda: RandomTranslation("a", 0.1), "RandomTranslation: height_factor"),
    (lambda: RandomTranslation(0.1, 0.1, fill_value=float("nan")), "RandomTranslation: fill"),
    (lambda: RandomCrop(0, 3), "RandomCrop: height"),
    (lambda: RandomCrop(3, 2.5), "RandomCrop: width"),
    (lambda: RandomCrop(3, 3, padding=-1), "RandomCrop: padding"),
    (lambda: RandomCrop(3, 3, padding=(1, 2, 3)), "RandomCrop: padding"),
])
def test_bad_arguments(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_bad_input_shapes():
    with pytest.raises(ValueError, match=r"RandomCrop: crop size \(5, 5\) is larger"):
        built(RandomCrop(5, 5, padding=0), (4, 6, 1))
    with pytest.raises(ValueError, match="RandomFlip: expects images"):
        built(RandomFlip(), (10,))
    layer = built(RandomTranslation(0.1, 0.1), (4, 4, 1))
    with pytest.raises(ValueError, match="expects input of shape"):
        layer.forward(np.zeros((2, 4, 5, 1)), training=True)
    with pytest.raises(RuntimeError, match="before forward"):
        built(RandomFlip(), (2, 2, 1)).backward(np.zeros((1, 2, 2, 1)))
