"""Activation functions and activation layers: values, gradients, stability."""
import math

import numpy as np
import pytest

import retroprop as rp
from retroprop import activations
from retroprop.gradcheck import check_layer_gradients
from retroprop.layers import ELU, Activation, Dense, LeakyReLU, PReLU, RReLU

TOL = 1e-6
NEW = ["step", "arctan", "leaky_relu", "elu", "softplus", "gelu", "swish", "mish"]
SMOOTH = ["linear", "sigmoid", "tanh", "softmax", "arctan", "elu", "softplus", "gelu", "swish",
          "mish", "relu", "leaky_relu"]


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


# Independent, textbook formulas (no shared helpers with the library).
REFERENCE = {
    "step": lambda x: np.where(x >= 0, 1.0, 0.0),
    "arctan": np.arctan,
    "leaky_relu": lambda x: np.where(x > 0, x, 0.01 * x),
    "elu": lambda x: np.where(x > 0, x, np.exp(x) - 1.0),
    "softplus": lambda x: np.log(1.0 + np.exp(x)),
    "gelu": lambda x: 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3))),
    "swish": lambda x: x / (1.0 + np.exp(-x)),
    "mish": lambda x: x * np.tanh(np.log(1.0 + np.exp(x))),
}


def data_away_from_kinks(shape, seed=0):
    """Standard normal data pushed at least 1e-2 away from 0 (relu-type kinks)."""
    x = np.random.default_rng(seed).standard_normal(shape)
    return np.where(np.abs(x) < 1e-2, 0.5, x)


@pytest.mark.parametrize("name", NEW)
def test_values_match_reference(name, backend):
    x = np.linspace(-6, 6, 241)
    y = activations.get(name).forward(x, backend)
    np.testing.assert_allclose(y, REFERENCE[name](x), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", SMOOTH)
def test_activation_layer_gradcheck(name):
    x = data_away_from_kinks((4, 5))
    assert check_layer_gradients(Activation(name), (5,), x=x) < TOL


@pytest.mark.parametrize("name", SMOOTH)
def test_dense_with_activation_gradcheck(name):
    layer = Dense(3, activation=name, bias_initializer="normal")
    rng = np.random.default_rng(3)
    layer.build((4,), "float64", rng)
    x = data_away_from_kinks((5, 4), seed=1)
    z = x @ layer.params["W"] + layer.params["b"]
    assert np.min(np.abs(z)) > 1e-3    # no relu-type kink inside the finite difference
    assert check_layer_gradients(layer, (4,), x=x) < TOL


@pytest.mark.parametrize("name", SMOOTH)
def test_model_gradcheck_mse(name):
    x = data_away_from_kinks((6, 4), seed=2)
    y = np.random.default_rng(4).standard_normal((6, 3))
    model = rp.Sequential([Dense(5, activation="tanh"), Dense(3, activation=name)],
                          input_shape=(4,), dtype="float64", seed=5)
    assert rp.gradcheck(model, x, y, loss="mse") < TOL


def test_step_heaviside_and_zero_gradient(backend):
    act = activations.get("step")
    x = np.array([-2.0, -1e-300, 0.0, 1e-300, 3.0])
    y = act.forward(x, backend)
    np.testing.assert_array_equal(y, [0, 0, 1, 1, 1])     # H(0) = 1
    dx = act.backward(y, np.ones_like(x), backend, x=x)
    np.testing.assert_array_equal(dx, 0.0)
    assert "zero" in type(act).__doc__ or "0" in type(act).__doc__


def test_sigmoid_slope_values_and_gradient(backend):
    x = np.linspace(-3, 3, 13)
    act = activations.Sigmoid(2.5)
    np.testing.assert_allclose(act.forward(x, backend), _sigmoid(2.5 * x), rtol=1e-12)
    layer = Activation("sigmoid", slope=2.5)
    assert layer.activation == act and not layer.activation.fused
    assert check_layer_gradients(layer, (6,)) < TOL
    assert check_layer_gradients(Dense(3, activation=act), (4,)) < TOL


def test_sigmoid_slope_tends_to_heaviside(backend):
    x = np.array([-1.0, -0.1, -0.01, 0.01, 0.1, 1.0])
    step = REFERENCE["step"](x)
    errors = [np.max(np.abs(activations.Sigmoid(a).forward(x, backend) - step))
              for a in (1, 10, 100, 1000, 10000)]
    assert all(b < a for a, b in zip(errors, errors[1:]))
    assert errors[-1] < 1e-12


def test_sigmoid_slope_config_roundtrip():
    assert activations.get("sigmoid").get_config() == "sigmoid"
    act = activations.get("sigmoid", slope=3.0)
    assert activations.get(act.get_config()) == act
    layer = Dense(2, activation=act)
    assert rp.layers.deserialize(layer.serialize()).activation == act
    with pytest.raises(ValueError, match="slope"):
        activations.Sigmoid(0.0)


def test_softmax_seed_numbers(backend):
    p = activations.get("softmax").forward(np.array([[1.7, 1.4, -1.3]]), backend)
    np.testing.assert_allclose(p[0], [0.558, 0.414, 0.028], atol=5e-4)


@pytest.mark.parametrize("name", NEW + ["sigmoid", "tanh", "relu", "linear", "softmax"])
def test_extreme_inputs_stay_finite(name, backend):
    x = np.array([[-1e4, -700.0, -50.0, 0.0, 50.0, 700.0, 1e4]])
    act = activations.get(name)
    with np.errstate(over="raise", invalid="raise", divide="raise"):  # underflow to 0 is fine
        y = act.forward(x.copy(), backend)
        dx = act.backward(y, np.ones_like(x), backend, x=x)
    assert np.all(np.isfinite(y)) and np.all(np.isfinite(dx))


def test_gelu_close_to_exact_erf_gelu(backend):
    x = np.linspace(-5, 5, 101)
    exact = np.array([v * 0.5 * (1 + math.erf(v / math.sqrt(2))) for v in x])
    assert np.max(np.abs(activations.get("gelu").forward(x, backend) - exact)) < 1e-3


def test_against_torch(backend):
    torch = pytest.importorskip("torch")
    x = np.linspace(-5, 5, 57)
    t = torch.tensor(x)
    F = torch.nn.functional
    expected = {"softplus": F.softplus(t), "gelu": F.gelu(t, approximate="tanh"),
                "swish": F.silu(t), "mish": F.mish(t), "elu": F.elu(t), "leaky_relu": F.leaky_relu(t, 0.01)}
    for name, ref in expected.items():
        np.testing.assert_allclose(activations.get(name).forward(x, backend), ref.numpy(),
                                   rtol=1e-10, atol=1e-12)


def test_get_errors():
    with pytest.raises(ValueError, match="unknown activation"):
        activations.get("nope")
    with pytest.raises(TypeError):
        activations.get("tanh", slope=2.0)
    assert activations.get("leaky_relu", alpha=0.2).alpha == 0.2


# -- activation layers ----------------------------------------------------------------

@pytest.mark.parametrize("layer", [LeakyReLU(0.1), ELU(0.7), PReLU(), RReLU(seed=0),
                                   PReLU(alpha_initializer="normal")],
                         ids=["leaky", "elu", "prelu", "rrelu", "prelu_normal"])
def test_activation_layers_gradcheck(layer):
    x = data_away_from_kinks((4, 3, 5))
    assert check_layer_gradients(layer, (3, 5), x=x) < TOL


def test_leaky_and_elu_layers_match_functions(backend):
    x = data_away_from_kinks((3, 7))
    for layer, name in ((LeakyReLU(0.01), "leaky_relu"), (ELU(1.0), "elu")):
        layer.build((7,), "float64", np.random.default_rng(0))
        np.testing.assert_allclose(layer.forward(x), REFERENCE[name](x), rtol=1e-12)


def test_prelu_per_channel_slopes():
    layer = PReLU()
    layer.build((2, 3), "float64", np.random.default_rng(0))
    np.testing.assert_array_equal(layer.params["alpha"], [0.25, 0.25, 0.25])
    layer.params["alpha"][...] = [0.1, 0.2, 0.3]
    x = -np.ones((1, 2, 3))
    np.testing.assert_allclose(layer.forward(x), -np.array([[[0.1, 0.2, 0.3]] * 2]))


def test_rrelu_training_random_inference_mean():
    layer = RReLU(lower=0.1, upper=0.3, seed=1)
    layer.build((1000,), "float64", np.random.default_rng(0))
    x = -np.ones((20, 1000))
    slopes = -layer.forward(x, training=True)
    assert slopes.min() >= 0.1 and slopes.max() <= 0.3
    assert abs(slopes.mean() - 0.2) < 0.005 and slopes.std() > 0.05
    np.testing.assert_allclose(layer.forward(x, training=False), -0.2)
    # Positive inputs pass through unchanged in both modes.
    np.testing.assert_array_equal(layer.forward(-x, training=True), 1.0)


def test_rrelu_backward_uses_the_drawn_slopes():
    layer = RReLU(seed=3)
    layer.build((50,), "float64", np.random.default_rng(0))
    x = -np.ones((2, 50))
    y = layer.forward(x, training=True)
    dx = layer.backward(np.ones_like(y))
    np.testing.assert_allclose(dx, -y)


def test_layer_configs_roundtrip():
    for layer in (LeakyReLU(0.2), ELU(0.5), PReLU(0.1), RReLU(0.2, 0.4, seed=7)):
        clone = rp.layers.deserialize(layer.serialize())
        assert type(clone) is type(layer) and clone.get_config() == layer.get_config()


def test_prelu_trains_in_a_model():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((64, 2))
    y = (x[:, 0] * x[:, 1] > 0).astype(np.int64)
    model = rp.Sequential([Dense(8), PReLU(), Dense(2, activation="softmax")],
                          input_shape=(2,), seed=0)
    before = model.layers[1].params["alpha"].copy()
    trainer = rp.Trainer(model, "categorical_crossentropy", rp.optim.SGD(lr=0.1))
    trainer.fit(x, y, epochs=2, batch_size=16, verbose=0)
    assert not np.array_equal(before, model.layers[1].params["alpha"])
