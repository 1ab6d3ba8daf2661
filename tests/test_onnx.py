"""ONNX export: the exported graph, run by onnxruntime, computes what model.predict computes.

Each model is trained briefly on real Fashion-MNIST images (so BatchNormalization's
moving statistics and the weights are not their initial values), exported, and
compared with ``model.predict`` on random inputs and on real test images.

Tolerance (float32): max |onnxruntime - predict| <= 2e-5 * max(1, max |predict|).
The errors measured are printed (pytest -s) and quoted in docs/INTEROP.md.
"""
import os
import re
import stat

import numpy as np
import pytest

import retroprop as rp
from retroprop.interop import MissingDependencyError, to_onnx

ort = pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")
from retroprop.interop import onnx as rp_onnx  # noqa: E402  (needs onnx)

L = rp.layers
TOL = 2e-5


@pytest.fixture(scope="module")
def fashion():
    """3,000 training and 500 test images of Fashion-MNIST; without the data package,
    random images stand in (and the comparison on real images is left out)."""
    try:
        (x, y), (xt, _) = rp.datasets.load_fashion_mnist(download=False)
        return x[:3000], y[:3000], xt[:500]
    except Exception:
        rng = np.random.default_rng(7)
        return (rng.random((3000, 28, 28, 1), dtype=np.float32), rng.integers(0, 10, 3000),
                None)


def readme_mlp():
    return rp.Sequential([
        L.Flatten(),
        L.Dense(256, activation="relu"),
        L.Dense(128, activation="relu", kernel_regularizer=rp.regularizers.L2(1e-5)),
        L.Dense(10, activation="softmax"),
    ], input_shape=(28, 28, 1), seed=0, name="readme_mlp")


def lenet5():
    return rp.Sequential([
        L.Conv2D(6, 5, padding="same", activation="relu"), L.MaxPool2D(2),
        L.Conv2D(16, 5, activation="relu"), L.MaxPool2D(2), L.Flatten(),
        L.Dense(120, activation="relu"), L.Dense(84, activation="relu"),
        L.Dense(10, activation="softmax"),
    ], input_shape=(28, 28, 1), seed=0, name="lenet5")


def cnn_bn():
    return rp.Sequential([
        L.Conv2D(16, 3, padding="same", use_bias=False), L.BatchNormalization(),
        L.Activation("relu"), L.MaxPool2D(2),
        L.Conv2D(32, 3, strides=2, padding="same", activation="elu"),
        L.BatchNormalization(momentum=0.5), L.AvgPool2D(3, strides=2, padding="same"),
        L.Dropout(0.3), L.Flatten(), L.Dense(64, activation="tanh"),
        L.BatchNormalization(momentum=0.5), L.Dense(10, activation="softmax"),
    ], input_shape=(28, 28, 1), seed=0, name="cnn_bn")


def residual():
    return rp.Sequential([
        L.Conv2D(8, 3, padding="same", activation="relu"),
        L.Residual([L.Conv2D(8, 3, padding="same", activation="relu"),
                    L.Conv2D(8, 3, padding="same"), L.BatchNormalization(momentum=0.5)],
                   activation="relu"),
        L.Residual([L.Conv2D(16, 3, strides=2, padding="same", activation="relu"),
                    L.Conv2D(16, 3, padding="same")],
                   shortcut=L.Conv2D(16, 1, strides=2), activation="relu"),
        L.GlobalAvgPool2D(),
        L.Residual([L.Dense(16, activation="relu"), L.Dense(16)]),
        L.Dense(10, activation="softmax"),
    ], input_shape=(28, 28, 1), seed=0, name="residual")


MODELS = {"readme_mlp": readme_mlp, "lenet5": lenet5, "cnn_bn": cnn_bn, "residual": residual}


def run_onnx(proto, x):
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"input": np.ascontiguousarray(x, dtype=np.float32)})[0]


def max_error(model, proto, x):
    expected = model.predict(x)
    got = run_onnx(proto, x)
    assert got.shape == expected.shape
    return float(np.max(np.abs(got - expected))), float(max(1.0, np.max(np.abs(expected))))


@pytest.mark.parametrize("name", sorted(MODELS))
def test_trained_model_matches_onnxruntime(name, fashion, tmp_path):
    x, y, x_test = fashion
    model = MODELS[name]()
    rp.Trainer(model, "categorical_crossentropy", rp.optim.SGD(lr=0.02, momentum=0.9),
               metrics=[]).fit(x, y, epochs=1, batch_size=64, seed=0, verbose=0)
    path = tmp_path / f"{name}.onnx"
    to_onnx(model, path)
    proto = onnx.load(str(path))
    random = np.random.default_rng(1).standard_normal((64, 28, 28, 1)).astype(np.float32)
    errors = {}
    inputs = {"random": random}
    if x_test is not None:
        inputs["Fashion-MNIST"] = x_test
    for label, x_in in inputs.items():
        err, scale = max_error(model, proto, x_in)
        errors[label] = err
        assert err <= TOL * scale, f"{name} on {label} inputs: max abs error {err:.3g}"
        # The exported model predicts the same classes.
        np.testing.assert_array_equal(np.argmax(run_onnx(proto, x_in), 1),
                                      np.argmax(model.predict(x_in), 1))
    print(f"\nONNX {name}: max abs error " +
          ", ".join(f"{label} {err:.2e}" for label, err in errors.items()))


def test_cnn_graph_has_no_transposes_between_convolutions():
    proto = to_onnx(lenet5())
    ops = [n.op_type for n in proto.graph.node]
    assert ops.count("Transpose") == 2, ops      # after the input, before Flatten
    assert ops.index("Flatten") == ops.index("Transpose", 1) + 1


ACTIVATIONS = ["linear", "relu", "sigmoid", "tanh", "softmax", "step", "arctan", "leaky_relu",
               "elu", "softplus", "gelu", "swish", rp.activations.Sigmoid(slope=3.0),
               rp.activations.LeakyReLU(0.2), rp.activations.ELU(0.5)]


@pytest.mark.parametrize("activation", ACTIVATIONS, ids=str)
def test_every_activation(activation):
    model = rp.Sequential([L.Dense(7, activation=activation, bias_initializer="normal"),
                           L.Activation(activation)], input_shape=(5,), seed=0)
    x = np.random.default_rng(2).standard_normal((16, 5)).astype(np.float32) * 3
    err, scale = max_error(model, to_onnx(model), x)
    assert err <= TOL * scale


@pytest.mark.parametrize("activation", ["relu", "softmax", "gelu", rp.activations.Sigmoid(2.0)],
                         ids=str)
def test_conv_activations(activation):
    model = rp.Sequential([L.Conv2D(5, 3, padding="same", activation=activation),
                           L.Flatten()], input_shape=(6, 7, 2), seed=0)
    x = np.random.default_rng(3).standard_normal((4, 6, 7, 2)).astype(np.float32)
    err, scale = max_error(model, to_onnx(model), x)
    assert err <= TOL * scale


def test_one_dimensional_layers_and_odd_geometry():
    model = rp.Sequential([
        L.Conv1D(6, 3, strides=2, padding="same", dilation_rate=1, activation="relu"),
        L.BatchNormalization(),
        L.MaxPool1D(3, strides=2, padding="same"),
        L.Conv1D(4, 2, dilation_rate=2, padding=1, use_bias=False),
        L.AvgPool1D(2, padding="same"), L.PReLU(), L.Flatten(), L.Dense(3, use_bias=False),
    ], input_shape=(23, 5), seed=0)
    bn = model.layers[1]
    bn.state["moving_mean"][...] = np.linspace(-1, 1, 6)
    bn.state["moving_variance"][...] = np.linspace(0.5, 2, 6)
    model.layers[5].params["alpha"][...] = np.linspace(0.1, 0.4, 4)
    x = np.random.default_rng(4).standard_normal((7, 23, 5)).astype(np.float32)
    err, scale = max_error(model, to_onnx(model), x)
    assert err <= TOL * scale


def test_images_with_strides_dilation_padding_and_augmentation():
    model = rp.Sequential([
        L.RandomFlip(seed=0), L.RandomTranslation(0.1, 0.1, seed=0),
        L.RandomCrop(13, 11, padding=(2, 1), seed=0),
        L.Conv2D(4, (3, 2), strides=(2, 1), dilation_rate=(1, 2), padding=(1, 2),
                 activation="leaky_relu"),
        L.BatchNormalization(axis=1, scale=False),
        L.LeakyReLU(0.3), L.ELU(0.7), L.RReLU(0.1, 0.3),
        L.MaxPool2D((2, 3), strides=(1, 2), padding="same"),
        L.GlobalAvgPool2D(), L.Dense(3, activation="softmax"),
    ], input_shape=(14, 12, 3), seed=0)
    bn = model.layers[4]
    bn.state["moving_mean"][...] = np.linspace(-1, 1, bn.state["moving_mean"].size)
    bn.state["moving_variance"][...] = np.linspace(0.5, 2, bn.state["moving_variance"].size)
    x = np.random.default_rng(5).standard_normal((3, 14, 12, 3)).astype(np.float32)
    err, scale = max_error(model, to_onnx(model), x)
    assert err <= TOL * scale


def test_float64_model_exports_as_float32():
    model = rp.Sequential([L.Dense(4, activation="tanh")], input_shape=(3,), dtype="float64",
                          seed=0)
    x = np.random.default_rng(6).standard_normal((5, 3))
    proto = to_onnx(model)
    np.testing.assert_allclose(run_onnx(proto, x), model.predict(x), atol=1e-6)


class Scale(L.Layer):
    def build(self, input_shape, dtype, rng, backend=None):
        out = super().build(input_shape, dtype, rng, backend)
        self.add_param("w", np.ones(self.input_shape[-1]))
        return out

    def forward(self, x, training=False):
        return x * self.params["w"]


class MyDense(L.Dense):
    pass


class Cube(rp.activations.Activation):
    name = "cube"

    def forward(self, x, backend, out=None):
        return x ** 3


@pytest.mark.parametrize("layer,named", [(Scale(name="my_scale"), "'my_scale' (Scale)"),
                                         (MyDense(2, name="md"), "'md' (MyDense)"),
                                         (L.Activation(Cube()), "'cube' (Cube)")])
def test_layer_without_onnx_form_is_refused_by_name(layer, named, tmp_path):
    model = rp.Sequential([L.Dense(3), layer], input_shape=(4,), seed=0)
    with pytest.raises(rp_onnx.ExportError, match=re.escape(named) + ".*(no ONNX|ONNX converter)"):
        to_onnx(model, tmp_path / "m.onnx")
    assert os.listdir(tmp_path) == []


def test_unbuilt_model_and_missing_onnx(monkeypatch):
    with pytest.raises(ValueError, match="not built"):
        to_onnx(rp.Sequential([L.Dense(2)]))
    monkeypatch.setattr(rp_onnx, "onnx", None)
    with pytest.raises(MissingDependencyError, match=r"pip install 'retroprop\[onnx\]'"):
        to_onnx(rp.Sequential([L.Dense(2)], input_shape=(3,)))


def test_file_follows_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        to_onnx(rp.Sequential([L.Dense(2)], input_shape=(3,)), tmp_path / "m.onnx")
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(tmp_path / "m.onnx").st_mode) == 0o644
