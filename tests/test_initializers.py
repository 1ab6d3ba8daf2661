"""Initializers with parameters: values, and surviving model.save / rp.load_model."""
import functools

import numpy as np
import pytest

import retroprop as rp
from retroprop import initializers as I


def rng():
    return np.random.default_rng(0)


def test_uniform_normal_truncated_values():
    w = I.Uniform(0.3)((200, 300), rng(), "float64")
    assert w.min() >= -0.3 and w.max() <= 0.3 and w.max() > 0.29
    w = I.Normal(2.0, mean=1.0)((400, 400), rng(), "float64")
    assert w.mean() == pytest.approx(1.0, abs=0.02) and w.std() == pytest.approx(2.0, rel=0.01)
    w = I.TruncatedNormal(0.5)((400, 400), rng(), "float64")
    assert np.abs(w).max() <= 1.0 and np.abs(w).max() > 0.99
    # The std of a normal cut at 2 sigma is 0.8796 sigma.
    assert w.std() == pytest.approx(0.5 * 0.8796, rel=0.01)
    assert I.Constant(0.25)((3,), None).tolist() == [0.25] * 3


@pytest.mark.parametrize("shape", [(5, 3), (3, 8), (3, 3, 4, 8), (7, 7)])
def test_orthogonal(shape):
    w = I.Orthogonal(gain=2.0)(shape, rng(), "float64")
    assert w.shape == shape
    m = w.reshape(-1, shape[-1])
    small = min(m.shape)
    gram = m.T @ m if m.shape[0] >= m.shape[1] else m @ m.T
    np.testing.assert_allclose(gram, 4.0 * np.eye(small), atol=1e-12)
    with pytest.raises(ValueError, match="rank >= 2"):
        I.Orthogonal()((5,), rng())


def test_variance_scaling_matches_named_initializers():
    shape = (300, 200)
    np.testing.assert_array_equal(I.VarianceScaling(1.0, "fan_avg", "uniform")(shape, rng()),
                                  I.glorot_uniform(shape, rng()))
    np.testing.assert_array_equal(I.VarianceScaling(2.0, "fan_in", "normal")(shape, rng()),
                                  I.he_normal(shape, rng()))
    np.testing.assert_array_equal(I.HeNormal()(shape, rng()), I.he_normal(shape, rng()))
    with pytest.raises(ValueError, match="mode"):
        I.VarianceScaling(mode="fan_sum")


@pytest.mark.parametrize("bad", [lambda: I.Uniform(-1), lambda: I.Normal(float("nan")),
                                 lambda: I.Orthogonal(0), lambda: I.Constant(float("inf"))])
def test_bad_parameters_are_refused(bad):
    with pytest.raises(ValueError):
        bad()


class ScaledOnes(I.Initializer):
    """A user's initializer with a parameter."""

    def __init__(self, scale):
        self.scale = scale

    def __call__(self, shape, rng=None, dtype="float32"):
        return np.full(shape, self.scale, dtype=dtype)

    def get_config(self):
        return {"scale": self.scale}


def my_init(shape, rng, dtype="float32"):
    return np.full(shape, 0.5, dtype=dtype)


INITIALIZERS = [I.Uniform(0.1), I.Normal(0.2), I.TruncatedNormal(0.3), I.Orthogonal(1.5),
                I.Constant(0.125), I.VarianceScaling(2.0, "fan_out", "uniform"),
                I.GlorotNormal(), functools.partial(I.uniform, limit=0.07), ScaledOnes(0.75)]


@pytest.mark.parametrize("init", INITIALIZERS, ids=repr)
def test_parameterised_initializers_survive_save_and_load(tmp_path, init):
    model = rp.Sequential([
        rp.layers.Conv2D(3, 3, kernel_initializer=init, bias_initializer=I.Constant(0.1)),
        rp.layers.BatchNormalization(gamma_initializer=I.Constant(2.0)),
        rp.layers.Flatten(),
        rp.layers.Dense(4, kernel_initializer=init),
        rp.layers.PReLU(alpha_initializer=I.Constant(0.3)),
    ], input_shape=(6, 6, 2), seed=0)
    path = tmp_path / "m.rpz"
    model.save(path)
    loaded = rp.load_model(path)
    x = np.random.default_rng(1).standard_normal((2, 6, 6, 2)).astype(np.float32)
    np.testing.assert_array_equal(loaded.predict(x), model.predict(x))
    # The rebuilt layers hold equal initializers: a fresh model from the saved
    # config starts from the same weights as the original.
    rebuilt = rp.Sequential.from_config(loaded.get_config())
    for a, b in zip(rebuilt.get_weights(), rp.Sequential.from_config(model.get_config())
                    .get_weights()):
        np.testing.assert_array_equal(a, b)
    assert loaded.layers[0].get_config()["bias_initializer"] == \
        {"class_name": "Constant", "config": {"value": 0.1}}


def test_registered_function_survives_save_and_load(tmp_path):
    I.register(my_init)
    model = rp.Sequential([rp.layers.Dense(2, kernel_initializer=my_init)], input_shape=(3,))
    model.save(tmp_path / "m.rpz")
    assert rp.load_model(tmp_path / "m.rpz").layers[0].get_config()["kernel_initializer"] \
        == "my_init"


def test_unsaveable_initializer_is_refused_with_advice(tmp_path):
    model = rp.Sequential([rp.layers.Dense(2, kernel_initializer=lambda s, r, d: np.ones(s, d))],
                          input_shape=(3,))
    with pytest.raises(ValueError, match="cannot be saved.*Uniform.*register"):
        model.save(tmp_path / "m.rpz")
    assert not (tmp_path / "m.rpz").exists()


def test_unknown_names_and_classes():
    with pytest.raises(ValueError, match="unknown initializer 'xavier'"):
        I.get("xavier")
    with pytest.raises(ValueError, match="unknown initializer class 'Nope'"):
        I.get({"class_name": "Nope", "config": {}})
    with pytest.raises(ValueError, match="bad config"):
        I.get({"class_name": "Uniform", "config": {"width": 1}})


def test_subclass_without_call_names_the_method():
    class Empty(I.Initializer):
        pass

    with pytest.raises(NotImplementedError, match="Empty must implement __call__"):
        Empty()((2,), rng())
