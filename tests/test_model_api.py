"""Sequential / Trainer / callbacks / optimizer API behaviour."""
import json

import numpy as np
import pytest

import retroprop as rp
from retroprop.layers import Activation, Dense


def blobs(n=120, features=4, classes=3, seed=0, dtype=np.float32):
    """Well separated Gaussian blobs: an easy, deterministic classification set."""
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((classes, features)) * 4
    y = rng.integers(0, classes, size=n)
    x = centers[y] + rng.standard_normal((n, features))
    return x.astype(dtype), y


def mlp(seed=0, dtype="float32", **kwargs):
    return rp.Sequential([Dense(8, activation="relu"), Dense(3, activation="softmax")],
                         input_shape=(4,), seed=seed, dtype=dtype, **kwargs)


# -- package ------------------------------------------------------------------------

def test_public_names():
    for name in ("Sequential", "Trainer", "History", "gradcheck", "layers", "activations",
                 "losses", "optim", "initializers", "callbacks", "metrics", "regularizers",
                 "set_num_threads", "get_num_threads", "backend_info", "NonFiniteError"):
        assert hasattr(rp, name), name
    assert rp.__version__ == "0.1.0"
    assert issubclass(rp.NonFiniteError, ValueError)
    assert issubclass(rp.NonFiniteError, FloatingPointError)


# -- summary and parameter counts --------------------------------------------------------

def test_summary_counts_with_thousands_separators():
    model = rp.Sequential([Dense(10, activation="softmax")], input_shape=(784,))
    printed = []
    text = model.summary(print_fn=printed.append)
    assert printed == [text]
    assert "dense (Dense)" in text
    assert "(None, 10)" in text
    assert "7,850" in text
    assert "Total params: 7,850" in text
    assert "Trainable params: 7,850" in text
    assert "Non-trainable params: 0" in text
    assert model.count_params() == 7850


def test_count_params_mlp():
    model = rp.Sequential([Dense(64, activation="relu"), Dense(10, use_bias=False)],
                          input_shape=(784,))
    assert model.count_params() == 784 * 64 + 64 + 64 * 10
    assert [layer.count_params() for layer in model.layers] == [784 * 64 + 64, 640]
    assert "Total params: 50,880" in model.summary(print_fn=None)


def test_summary_of_unbuilt_model_raises():
    with pytest.raises(ValueError, match="not built"):
        rp.Sequential([Dense(3)]).summary()


# -- naming, building ----------------------------------------------------------------------

def test_layer_names_are_unique_per_model():
    model = rp.Sequential([Dense(4), Dense(4), Activation("relu"), Dense(2, name="head"),
                           Dense(2)], input_shape=(3,))
    assert [layer.name for layer in model.layers] == [
        "dense", "dense_1", "activation", "head", "dense_2"]
    other = rp.Sequential([Dense(4)], input_shape=(3,))
    assert other.layers[0].name == "dense"
    with pytest.raises(ValueError, match="duplicate layer name 'head'"):
        model.add(Dense(2, name="head"))


def test_lazy_build_on_first_forward():
    model = rp.Sequential([Dense(5, activation="tanh"), Dense(2)], seed=0)
    assert not model.built
    y = model.forward(np.ones((3, 7)))
    assert model.built and model.input_shape == (7,)
    assert y.shape == (3, 2)
    assert model.layers[0].params["W"].shape == (7, 5)


def test_add_after_build():
    model = rp.Sequential([Dense(5)], input_shape=(3,), seed=0)
    model.add(Dense(2, activation="softmax"))
    assert model.output_shape == (2,)
    assert model.forward(np.ones((4, 3))).shape == (4, 2)


def test_same_seed_same_weights_across_dtypes():
    a = mlp(seed=3)
    b = mlp(seed=3)
    c = mlp(seed=3, dtype="float64")
    for wa, wb, wc in zip(a.get_weights(), b.get_weights(), c.get_weights()):
        np.testing.assert_array_equal(wa, wb)
        np.testing.assert_allclose(wa, wc, rtol=1e-7)
        assert wc.dtype == np.float64


def test_input_casting():
    model = mlp()
    x64 = np.random.default_rng(0).standard_normal((5, 4))
    y = model.forward(x64)
    assert y.dtype == np.float32
    np.testing.assert_allclose(model.forward(x64.astype(np.float32)), y)
    assert model.forward(np.ones((2, 4), dtype=np.int64)).dtype == np.float32
    assert model.forward([[1, 2, 3, 4]]).shape == (1, 3)


def test_parameters_iteration():
    model = mlp()
    items = list(model.parameters())
    assert [(layer.name, name) for layer, name, _, _ in items] == [
        ("dense", "W"), ("dense", "b"), ("dense_1", "W"), ("dense_1", "b")]
    for layer, name, param, grad in items:
        assert param is layer.params[name] and grad is layer.grads[name]
        assert grad.shape == param.shape
    assert [k for k, _, _ in model.named_parameters()] == [
        "dense/W", "dense/b", "dense_1/W", "dense_1/b"]


# -- forward / backward / predict --------------------------------------------------------

def test_predict_batching_equals_full_forward():
    model = mlp()
    x, _ = blobs(n=50)
    full = model.forward(x).copy()
    for batch_size in (1, 7, 50, 1000, None):
        np.testing.assert_allclose(model.predict(x, batch_size=batch_size), full,
                                   rtol=1e-5, atol=1e-7)
    assert rp.Trainer(model, "categorical_crossentropy", "sgd").predict(x).shape == (50, 3)


def test_predict_returns_a_fresh_array():
    model = mlp()
    x, _ = blobs(n=10)
    p1 = model.predict(x)
    p2 = model.predict(x * 2)
    assert not np.shares_memory(p1, p2)
    assert not np.allclose(p1, p2)


def test_backward_overwrites_gradients():
    model = mlp(dtype="float64")
    x, y = blobs(n=6, dtype=np.float64)
    dy = np.random.default_rng(1).standard_normal((6, 3))
    model.forward(x, training=True)
    model.backward(dy)
    first = [g.copy() for _, _, _, g in model.parameters()]
    model.forward(x, training=True)
    model.backward(dy)
    for a, (_, _, _, g) in zip(first, model.parameters()):
        np.testing.assert_array_equal(a, g)


def test_buffers_are_reused_for_the_same_batch_size():
    model = mlp()
    x, _ = blobs(n=8)
    y1 = model.forward(x)
    dx1 = model.backward(np.ones_like(y1))
    y2 = model.forward(x[::-1].copy())
    dx2 = model.backward(np.ones_like(y2))
    assert y1 is y2 and dx1 is dx2
    y3 = model.forward(x[:5])
    assert y3.shape == (5, 3) and y3 is not y1
    y4 = model.forward(x[:5])
    assert y4 is y3


def test_backward_from_logits_matches_softmax_backward():
    model = mlp(dtype="float64")
    x, y = blobs(n=6, dtype=np.float64)
    onehot = np.eye(3)[y]
    p = model.forward(x).copy()
    # Cross-entropy on probabilities: dL/dp = -onehot / (N p); dL/dz = (p - onehot) / N.
    model.backward(-onehot / (6 * p))
    via_softmax = [g.copy() for _, _, _, g in model.parameters()]
    model.forward(x)
    dx = model.backward_from_logits((p - onehot) / 6)
    for a, (_, _, _, g) in zip(via_softmax, model.parameters()):
        np.testing.assert_allclose(a, g, rtol=1e-10, atol=1e-12)
    assert dx.shape == x.shape


def test_get_set_weights():
    model = mlp(seed=0)
    other = mlp(seed=1)
    params_before = [p for _, _, p, _ in other.parameters()]
    other.set_weights(model.get_weights())
    for a, b in zip(model.get_weights(), other.get_weights()):
        np.testing.assert_array_equal(a, b)
    # In place: the parameter arrays are still the same objects.
    assert all(p is q for p, (_, _, q, _) in zip(params_before, other.parameters()))
    weights = model.get_weights()
    weights[0][...] = 123.0  # get_weights returns copies
    assert not np.any(model.layers[0].params["W"] == 123.0)
    with pytest.raises(ValueError, match="4 weight arrays, got 3"):
        model.set_weights(weights[:3])
    with pytest.raises(ValueError, match=r"W has shape \(4, 8\), got \(8, 4\)"):
        model.set_weights([weights[0].T] + weights[1:])


def test_config_roundtrip_is_json():
    model = rp.Sequential([
        Dense(8, activation="tanh", kernel_initializer="he_normal",
              kernel_regularizer=rp.regularizers.L2(1e-3)),
        Activation("relu"),
        Dense(3, activation="softmax", use_bias=False),
    ], input_shape=(4,), seed=5, name="net")
    config = json.loads(json.dumps(model.get_config()))
    clone = rp.Sequential.from_config(config)
    assert clone.get_config() == model.get_config()
    assert clone.count_params() == model.count_params()
    for a, b in zip(model.get_weights(), clone.get_weights()):
        np.testing.assert_array_equal(a, b)  # same seed, same initial weights
    layer = rp.layers.deserialize(model.layers[0].serialize())
    assert isinstance(layer, Dense) and layer.kernel_regularizer.l2 == 1e-3


# -- trainer, history, evaluate ------------------------------------------------------------

def test_fit_history_and_evaluate():
    x, y = blobs(n=120)
    xv, yv = blobs(n=30, seed=1)
    model = mlp()
    trainer = rp.Trainer(model, "categorical_crossentropy", rp.optim.SGD(lr=0.05, momentum=0.9))
    history = trainer.fit(x, y, epochs=4, batch_size=16, validation_data=(xv, yv), verbose=0)
    assert isinstance(history, rp.History)
    assert history.epoch == [0, 1, 2, 3]
    assert set(history.history) == {"loss", "accuracy", "val_loss", "val_accuracy"}
    assert all(len(v) == 4 for v in history.history.values())
    assert history.history["loss"][-1] < history.history["loss"][0]
    assert history.history["accuracy"][-1] > 0.9

    result = trainer.evaluate(xv, yv)
    assert set(result) == {"loss", "accuracy"}
    assert result["loss"] == pytest.approx(history.history["val_loss"][-1], rel=1e-5)
    p = model.predict(xv).astype(np.float64)
    manual = -np.mean(np.log(np.clip(p[np.arange(30), yv], 1e-7, 1)))
    assert result["loss"] == pytest.approx(manual, rel=1e-4)
    assert result["accuracy"] == pytest.approx(np.mean(np.argmax(p, axis=1) == yv))


def test_validation_split_and_onehot_targets():
    x, y = blobs(n=100)
    trainer = rp.Trainer(mlp(), "categorical_crossentropy", rp.optim.SGD(lr=0.05))
    history = trainer.fit(x, np.eye(3)[y], epochs=2, validation_split=0.2, verbose=0)
    assert "val_loss" in history.history
    assert history.params["samples"] == 80


def test_regularization_is_part_of_the_reported_loss():
    x, y = blobs(n=20)
    plain = mlp(seed=0)
    reg = rp.Sequential([Dense(8, activation="relu", kernel_regularizer=rp.regularizers.L2(0.1)),
                         Dense(3, activation="softmax")], input_shape=(4,), seed=0)
    loss_plain = rp.Trainer(plain, "categorical_crossentropy", "sgd").evaluate(x, y)["loss"]
    loss_reg = rp.Trainer(reg, "categorical_crossentropy", "sgd").evaluate(x, y)["loss"]
    assert loss_reg == pytest.approx(loss_plain + reg.regularization_loss(), rel=1e-5)


def test_verbose_prints_one_line_per_epoch(capsys):
    x, y = blobs(n=40)
    rp.Trainer(mlp(), "categorical_crossentropy", "sgd").fit(x, y, epochs=3, verbose=1)
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 3
    assert lines[0].startswith("Epoch 1/3") and "loss:" in lines[0] and "samples/s" in lines[0]
    rp.Trainer(mlp(), "categorical_crossentropy", "sgd").fit(x, y, epochs=2, verbose=0)
    assert capsys.readouterr().out == ""


def test_shuffle_seed_makes_fit_deterministic():
    x, y = blobs(n=64)
    runs = []
    for _ in range(2):
        trainer = rp.Trainer(mlp(seed=1), "categorical_crossentropy", rp.optim.SGD(lr=0.05))
        runs.append(trainer.fit(x, y, epochs=2, batch_size=8, verbose=0, seed=7).history["loss"])
    assert runs[0] == runs[1]


def test_mse_training_on_regression():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((200, 3)).astype(np.float32)
    y = x @ np.array([1.0, -2.0, 0.5], dtype=np.float32) + 0.3
    model = rp.Sequential([Dense(1)], input_shape=(3,), seed=0)
    trainer = rp.Trainer(model, "mse", rp.optim.SGD(lr=0.05), metrics=[])
    history = trainer.fit(x, y, epochs=30, batch_size=20, verbose=0)
    assert set(history.history) == {"loss"}
    assert history.history["loss"][-1] < 1e-3


class Recorder(rp.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.events = []
        self.weights = []

    def on_train_begin(self, logs=None):
        self.events.append("train_begin")

    def on_epoch_begin(self, epoch, logs=None):
        self.events.append(f"epoch_begin {epoch}")

    def on_batch_end(self, batch, logs=None):
        self.events.append("batch")

    def on_epoch_end(self, epoch, logs=None):
        self.events.append(f"epoch_end {epoch}")
        self.weights.append(self.model.get_weights())

    def on_train_end(self, logs=None):
        self.events.append("train_end")


def test_callback_hooks_order():
    x, y = blobs(n=20)
    rec = Recorder()
    rp.Trainer(mlp(), "categorical_crossentropy", "sgd", callbacks=[rec]).fit(
        x, y, epochs=2, batch_size=10, verbose=0)
    assert rec.events == ["train_begin", "epoch_begin 0", "batch", "batch", "epoch_end 0",
                          "epoch_begin 1", "batch", "batch", "epoch_end 1", "train_end"]
    assert rec.trainer is not None and rec.model is not None


def test_early_stopping_stops_and_restores_best_weights():
    x, y = blobs(n=120)
    # Validation labels are permuted: the better the fit to the training set,
    # the worse the validation loss, so the first epoch is the best one.
    flipped = (y + 1) % 3
    model = mlp()
    rec = Recorder()
    stopper = rp.callbacks.EarlyStopping(monitor="val_loss", patience=2,
                                         restore_best_weights=True)
    trainer = rp.Trainer(model, "categorical_crossentropy", rp.optim.SGD(lr=0.05, momentum=0.9),
                         callbacks=[rec, stopper])
    history = trainer.fit(x, y, epochs=20, batch_size=16, validation_data=(x, flipped), verbose=0)
    val = history.history["val_loss"]
    best = int(np.argmin(val))
    assert len(history.epoch) < 20
    assert stopper.stopped_epoch == len(history.epoch) - 1
    assert stopper.best_epoch == best
    assert len(history.epoch) == best + 1 + 2  # patience epochs without improvement
    for a, b in zip(rec.weights[best], model.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_early_stopping_mode_and_validation():
    assert rp.callbacks.EarlyStopping(monitor="val_accuracy").mode == "max"
    assert rp.callbacks.EarlyStopping(monitor="loss").mode == "min"
    with pytest.raises(ValueError, match="mode"):
        rp.callbacks.EarlyStopping(mode="up")
    with pytest.raises(ValueError, match="patience"):
        rp.callbacks.EarlyStopping(patience=-1)


def test_early_stopping_without_monitored_value_warns():
    x, y = blobs(n=20)
    stopper = rp.callbacks.EarlyStopping(monitor="val_loss")
    trainer = rp.Trainer(mlp(), "categorical_crossentropy", "sgd", callbacks=[stopper])
    with pytest.warns(RuntimeWarning, match="val_loss"):
        history = trainer.fit(x, y, epochs=3, verbose=0)
    assert len(history.epoch) == 3


# -- optimizer ---------------------------------------------------------------------------------

def test_sgd_momentum_matches_formula_through_the_model():
    model = rp.Sequential([Dense(2)], input_shape=(3,), dtype="float64", seed=0)
    opt = rp.optim.SGD(lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.01)
    w = model.layers[0].params["W"].copy()
    v = np.zeros_like(w)
    rng = np.random.default_rng(0)
    for _ in range(3):
        g = rng.standard_normal(w.shape)
        model.layers[0].grads["W"][...] = g
        opt.step(model.named_parameters())
        g = g + 0.01 * w
        v = 0.9 * v + g
        w = w - 0.1 * (g + 0.9 * v)
    np.testing.assert_allclose(model.layers[0].params["W"], w, rtol=1e-12)
    assert opt.iterations == 3


def test_lr_schedule_counts_optimizer_steps():
    seen = []

    def schedule(step):
        seen.append(step)
        return 0.1 / (1 + step)

    model = rp.Sequential([Dense(1, use_bias=False)], input_shape=(1,), dtype="float64", seed=0)
    opt = rp.optim.SGD(lr=schedule)
    model.layers[0].params["W"][...] = 0.0
    for _ in range(3):
        model.layers[0].grads["W"][...] = 1.0
        opt.step(model.named_parameters())
    assert seen == [0, 1, 2]
    assert model.layers[0].params["W"][0, 0] == pytest.approx(-(0.1 + 0.05 + 0.1 / 3))


def test_optimizer_state_dict_roundtrip():
    x, y = blobs(n=32)
    model = mlp()
    opt = rp.optim.SGD(lr=0.05, momentum=0.9)
    rp.Trainer(model, "categorical_crossentropy", opt).fit(x, y, epochs=1, batch_size=8,
                                                           verbose=0)
    state = opt.state_dict()
    assert state["iterations"] == 4
    assert set(state["velocity"]) == {"dense/W", "dense/b", "dense_1/W",
                                      "dense_1/b"}
    fresh = rp.optim.SGD(lr=0.05, momentum=0.9)
    fresh.load_state_dict(state)
    assert fresh.iterations == 4
    np.testing.assert_array_equal(fresh.velocity["dense/W"], opt.velocity["dense/W"])
    assert opt.get_config() == {"lr": 0.05, "momentum": 0.9, "nesterov": False,
                                "weight_decay": 0.0}


# -- building blocks ------------------------------------------------------------------------------

def test_initializer_fans_and_scales():
    from retroprop.initializers import compute_fans
    assert compute_fans((784, 10)) == (784, 10)
    assert compute_fans((5, 5, 3, 16)) == (75, 400)
    assert compute_fans((7,)) == (7, 7)
    rng = np.random.default_rng(0)
    w = rp.initializers.get("glorot_uniform")((300, 200), rng, np.float32)
    assert w.dtype == np.float32 and np.abs(w).max() <= np.sqrt(6 / 500)
    w = rp.initializers.get("he_normal")((3, 3, 64, 64), rng, np.float64)
    assert w.std() == pytest.approx(np.sqrt(2 / (9 * 64)), rel=0.05)
    w = rp.initializers.get("lecun_normal")((400, 100), rng, np.float64)
    assert w.std() == pytest.approx(np.sqrt(1 / 400), rel=0.05)
    assert np.all(rp.initializers.get("zeros")((2, 2), rng, np.float32) == 0)
    with pytest.raises(ValueError, match="glorot_uniform"):
        rp.initializers.get("xavier")


def test_activation_lookup():
    assert rp.activations.get(None).name == "linear"
    assert rp.activations.get("identity").name == "linear"
    assert rp.activations.get("ReLU").name == "relu"
    relu = rp.activations.get("relu")
    assert rp.activations.get(relu) is relu
    with pytest.raises(ValueError, match="softmax"):
        rp.activations.get("swishy")


def test_softmax_activation_backward_formula(backend):
    act = rp.activations.get("softmax")
    rng = np.random.default_rng(0)
    x = rng.standard_normal((4, 5))
    y = act.forward(x, backend)
    dy = rng.standard_normal((4, 5))
    # Full Jacobian: dy_i/dx_j = y_i (delta_ij - y_j).
    expected = np.stack([(np.diag(yr) - np.outer(yr, yr)) @ dr for yr, dr in zip(y, dy)])
    np.testing.assert_allclose(act.backward(y, dy, backend), expected, rtol=1e-10, atol=1e-14)


def test_accuracy_metric():
    acc = rp.metrics.get("accuracy")
    p = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]])
    assert acc(np.array([0, 1, 1]), p) == pytest.approx(2 / 3)
    assert acc(np.eye(2)[[0, 1, 1]], p) == pytest.approx(2 / 3)
    assert acc(np.array([1, 0, 1]), np.array([[0.7], [0.2], [0.4]])) == pytest.approx(2 / 3)


def test_input_shape_given_before_the_layers():
    model = rp.Sequential(input_shape=(4,), seed=0)
    assert not model.built
    model.add(Dense(3, activation="tanh"))
    model.add(Dense(2, activation="softmax"))
    assert model.built and model.output_shape == (2,)
    reference = rp.Sequential([Dense(3, activation="tanh"), Dense(2, activation="softmax")],
                              input_shape=(4,), seed=0)
    for a, b in zip(model.get_weights(), reference.get_weights()):
        np.testing.assert_array_equal(a, b)
    images = rp.Sequential(input_shape=(28, 28))
    with pytest.raises(ValueError, match="Flatten"):
        images.add(Dense(3))
    assert images.layers == []
