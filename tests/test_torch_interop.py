"""PyTorch weights in and out: equal outputs across NHWC/NCHW and (in, out)/(out, in) layouts."""
import sys

import numpy as np
import pytest

import retroprop as rp
from retroprop.interop import MissingDependencyError, from_torch, to_torch

torch = pytest.importorskip("torch")
nn = torch.nn
L = rp.layers


def randomize(model, seed=0):
    """Non-trivial weights and BatchNorm statistics (as after training)."""
    rng = np.random.default_rng(seed)
    for layer, name, param, _ in model.parameters():
        param[...] = rng.standard_normal(param.shape) * (0.3 if name != "gamma" else 0.1) + \
            (1.0 if name == "gamma" else 0.0)
    for layer, name, arr in model.states():
        arr[...] = rng.random(arr.shape) + (0.5 if "variance" in name else -0.5)
    return model


def lenet(dtype="float64", channels=1):
    return rp.Sequential([
        L.Conv2D(6, 5, padding="same", activation="relu"), L.MaxPool2D(2),
        L.Conv2D(16, 5, activation="relu"), L.MaxPool2D(2), L.Flatten(),
        L.Dense(120, activation="relu"), L.Dense(84, activation="relu"),
        L.Dense(10, activation="softmax"),
    ], input_shape=(28, 28, channels), dtype=dtype, seed=0)


def cnn_bn(dtype="float64"):
    return rp.Sequential([
        L.Conv2D(8, 3, padding="same", use_bias=False), L.BatchNormalization(epsilon=1e-5),
        L.Activation("relu"), L.Conv2D(8, 3, strides=2, padding="same", activation="elu"),
        L.PReLU(), L.AvgPool2D(2), L.Dropout(0.5), L.Flatten(),
        L.Dense(16, activation="tanh"), L.BatchNormalization(epsilon=1e-5),
        L.Dense(5, activation="gelu"),
    ], input_shape=(12, 10, 3), dtype=dtype, seed=0)


def residual(dtype="float64"):
    return rp.Sequential([
        L.Conv2D(4, 3, padding="same", activation="relu"),
        L.Residual([L.Conv2D(4, 3, padding="same", activation="relu"),
                    L.Conv2D(4, 3, padding="same")], activation="relu"),
        L.Residual([L.Conv2D(8, 3, strides=2, padding=1, activation="leaky_relu")],
                   shortcut=L.Conv2D(8, 1, strides=2)),
        L.GlobalAvgPool2D(), L.Dense(3, activation="softmax"),
    ], input_shape=(9, 9, 2), dtype=dtype, seed=0)


def conv1d(dtype="float64"):
    return rp.Sequential([
        L.Conv1D(6, 3, padding="same", activation="swish"), L.BatchNormalization(epsilon=1e-5),
        L.MaxPool1D(2), L.Conv1D(4, 2, dilation_rate=2, activation="softplus"),
        L.Flatten(), L.Dense(3),
    ], input_shape=(17, 3), dtype=dtype, seed=0)


def mlp(dtype="float64"):
    return rp.Sequential([L.Dense(16, activation="relu"), L.Dense(4, use_bias=False),
                          L.LeakyReLU(0.2), L.ELU(0.5)], input_shape=(7,), dtype=dtype, seed=0)


MODELS = {"lenet": lenet, "cnn_bn": cnn_bn, "residual": residual, "conv1d": conv1d, "mlp": mlp}


def channels_first(x):
    return np.moveaxis(x, -1, 1) if x.ndim > 2 else x


def torch_predict(net, x):
    with torch.no_grad():
        return net(torch.from_numpy(np.ascontiguousarray(channels_first(x)))).numpy()


@pytest.mark.parametrize("name", sorted(MODELS))
@pytest.mark.parametrize("dtype,tol", [("float64", 1e-12), ("float32", 2e-5)])
def test_to_torch_computes_the_same(name, dtype, tol):
    model = randomize(MODELS[name](dtype))
    net = to_torch(model)
    assert not net.training
    x = np.random.default_rng(1).standard_normal((4,) + model.input_shape).astype(dtype)
    expected = model.predict(x)
    np.testing.assert_allclose(torch_predict(net, x), expected, rtol=tol,
                               atol=tol * max(1.0, np.abs(expected).max()))


@pytest.mark.parametrize("name", sorted(MODELS))
def test_round_trip_gives_back_the_weights(name):
    source = randomize(MODELS[name]())
    target = MODELS[name]()
    from_torch(to_torch(source), target)
    for a, b in zip(source.get_weights(), target.get_weights()):
        np.testing.assert_array_equal(a, b)


def torch_lenet():
    return nn.Sequential(
        nn.Conv2d(1, 6, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(6, 16, 5), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
        nn.Linear(16 * 5 * 5, 120), nn.ReLU(), nn.Linear(120, 84), nn.ReLU(),
        nn.Linear(84, 10), nn.Softmax(dim=1)).double().eval()


def test_from_torch_lenet_and_real_images():
    torch.manual_seed(0)
    net = torch_lenet()
    model = from_torch(net, lenet())
    try:
        (_, _), (x, _) = rp.datasets.load_fashion_mnist(download=False)
        x = x[:64].astype(np.float64)
    except Exception:
        x = np.random.default_rng(2).random((64, 28, 28, 1))
    np.testing.assert_allclose(model.predict(x), torch_predict(net, x), rtol=1e-12, atol=1e-14)


def test_from_torch_batchnorm_statistics():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8),
                        nn.ReLU(), nn.Flatten(), nn.Linear(8 * 6 * 6, 4),
                        nn.BatchNorm1d(4)).double()
    net.train()
    with torch.no_grad():        # a few training batches move the running statistics
        for _ in range(3):
            net(torch.randn(16, 3, 6, 6, dtype=torch.float64) * 2 + 1)
    net.eval()
    model = rp.Sequential([L.Conv2D(8, 3, padding="same", use_bias=False),
                           L.BatchNormalization(epsilon=1e-5), L.Activation("relu"), L.Flatten(),
                           L.Dense(4), L.BatchNormalization(epsilon=1e-5)],
                          input_shape=(6, 6, 3), dtype="float64", seed=0)
    from_torch(net, model)
    x = np.random.default_rng(3).standard_normal((5, 6, 6, 3))
    np.testing.assert_allclose(model.predict(x), torch_predict(net, x), rtol=1e-10, atol=1e-12)


def test_from_torch_conv1d():
    torch.manual_seed(1)
    net = nn.Sequential(nn.Conv1d(3, 5, 3, padding="same"), nn.Tanh(), nn.Flatten(),
                        nn.Linear(5 * 11, 2)).double().eval()
    model = rp.Sequential([L.Conv1D(5, 3, padding="same", activation="tanh"), L.Flatten(),
                           L.Dense(2)], input_shape=(11, 3), dtype="float64")
    from_torch(net, model)
    x = np.random.default_rng(4).standard_normal((6, 11, 3))
    np.testing.assert_allclose(model.predict(x), torch_predict(net, x), rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("net,match", [
    (lambda: nn.Sequential(nn.Linear(7, 16)), "has 3 weighted layers.*PyTorch module 1"),
    (lambda: nn.Sequential(nn.Linear(7, 16), nn.Conv1d(1, 1, 1), nn.Linear(4, 4)),
     "pairs with a Linear"),
    (lambda: nn.Sequential(nn.Linear(7, 15), nn.Linear(15, 4, bias=False), nn.Linear(4, 4)),
     r"Dense 'dense' W has shape \(7, 16\), but Linear gives \(7, 15\)"),
    (lambda: nn.Sequential(nn.Linear(7, 16), nn.Linear(16, 4), nn.Linear(4, 4)),
     "use_bias=False"),
])
def test_from_torch_mismatches_are_named_and_nothing_is_written(net, match):
    model = rp.Sequential([L.Dense(16), L.Dense(4, use_bias=False), L.Dense(4)],
                          input_shape=(7,), dtype="float64", seed=0)
    before = model.get_weights()
    with pytest.raises(ValueError, match=match):
        from_torch(net().double(), model)
    for a, b in zip(before, model.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_from_torch_geometry_and_epsilon_mismatches():
    model = rp.Sequential([L.Conv2D(4, 3, strides=2), L.BatchNormalization()],
                          input_shape=(8, 8, 2), dtype="float64")
    with pytest.raises(ValueError, match="strides"):
        from_torch(nn.Sequential(nn.Conv2d(2, 4, 3), nn.BatchNorm2d(4)), model)
    with pytest.raises(ValueError, match=r"pads \(0, 0, 0, 0\).*pads \(1, 1, 1, 1\)"):
        from_torch(nn.Sequential(nn.Conv2d(2, 4, 3, stride=2, padding=1), nn.BatchNorm2d(4)),
                   model)
    with pytest.raises(ValueError, match="epsilon=0.001.*eps=1e-05"):
        from_torch(nn.Sequential(nn.Conv2d(2, 4, 3, stride=2), nn.BatchNorm2d(4)), model)


def test_to_torch_refuses_what_it_cannot_express():
    model = rp.Sequential([L.Dense(3, activation=rp.activations.Sigmoid(slope=2.0))],
                          input_shape=(2,))
    with pytest.raises(ValueError, match="Dense 'dense'.*Sigmoid"):
        to_torch(model)
    model = rp.Sequential([L.AvgPool2D(3, strides=2, padding="same")], input_shape=(6, 6, 1))
    with pytest.raises(ValueError, match="AvgPool2D 'avg_pool2d'.*no exact PyTorch"):
        to_torch(model)


def test_missing_torch_is_named(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)
    with pytest.raises(MissingDependencyError, match="pip install torch"):
        to_torch(mlp())
