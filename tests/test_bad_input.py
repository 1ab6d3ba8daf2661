"""Bad input raises the right exception, naming the layer/argument, expected and received values."""
import numpy as np
import pytest

import retroprop as rp
from retroprop.layers import Dense


def model_784(**kwargs):
    return rp.Sequential([Dense(32, activation="relu"), Dense(10, activation="softmax")],
                         input_shape=(784,), seed=0, **kwargs)


def small_model(seed=0):
    return rp.Sequential([Dense(8, activation="tanh"), Dense(3, activation="softmax")],
                         input_shape=(4,), seed=seed)


def small_data(n=32, seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, 4)).astype(np.float32), rng.integers(0, 3, size=n)


def trainer_for(model, **kwargs):
    return rp.Trainer(model, "categorical_crossentropy", rp.optim.SGD(lr=0.05), **kwargs)


# -- shapes -------------------------------------------------------------------------

def test_wrong_feature_count_everywhere():
    model = model_784()
    trainer = trainer_for(model)
    x = np.zeros((32, 783), dtype=np.float32)
    y = np.zeros(32, dtype=np.int64)
    message = r"Dense 'dense' expects input of shape \(N, 784\), got \(32, 783\)"
    with pytest.raises(ValueError, match=message):
        model.forward(x)
    with pytest.raises(ValueError, match=message):
        model.predict(x)
    with pytest.raises(ValueError, match=message):
        trainer.fit(x, y, verbose=0)
    with pytest.raises(ValueError, match=message):
        trainer.evaluate(x, y)


def test_wrong_rank():
    model = model_784()
    with pytest.raises(ValueError, match=r"Dense 'dense' expects input of shape \(N, 784\), "
                                         r"got \(32, 28, 28\)"):
        model.forward(np.zeros((32, 28, 28)))
    with pytest.raises(ValueError, match=r"expects input of shape \(N, 784\), got \(784,\)"):
        model.forward(np.zeros(784))


def test_lazy_build_with_images_asks_for_flatten():
    model = rp.Sequential([Dense(10)])
    with pytest.raises(ValueError, match=r"Dense 'dense'.*\(28, 28\).*Flatten"):
        model.forward(np.zeros((2, 28, 28)))


def test_layer_level_checks():
    layer = Dense(3, name="proj")
    layer.build((5,), np.float32, np.random.default_rng(0))
    with pytest.raises(TypeError, match="Dense 'proj' expects float32 input, got float64"):
        layer.forward(np.zeros((2, 5)))
    with pytest.raises(ValueError, match=r"Dense 'proj' expects input of shape \(N, 5\), "
                                         r"got \(2, 4\)"):
        layer.forward(np.zeros((2, 4), dtype=np.float32))
    with pytest.raises(RuntimeError, match="before forward"):
        layer.backward(np.zeros((2, 3), dtype=np.float32))
    layer.forward(np.zeros((2, 5), dtype=np.float32))
    with pytest.raises(ValueError, match=r"Dense 'proj': dy must have shape \(2, 3\), "
                                         r"got \(2, 4\)"):
        layer.backward(np.zeros((2, 4), dtype=np.float32))
    with pytest.raises(TypeError, match="Dense 'proj': dy must be float32, got float64"):
        layer.backward(np.zeros((2, 3)))


# -- types and empty input ----------------------------------------------------------

@pytest.mark.parametrize("bad", [np.array([["a", "b", "c", "d"]]),
                                 np.array([[object()] * 4], dtype=object),
                                 np.array([[1 + 2j] * 4])])
def test_non_numeric_input(bad):
    model = small_model()
    with pytest.raises(TypeError, match=f"numeric input x, got dtype {bad.dtype}"):
        model.forward(bad)
    with pytest.raises(TypeError, match="x"):
        trainer_for(model).fit(bad, [0], verbose=0)


def test_empty_batch():
    model = small_model()
    with pytest.raises(ValueError, match=r"x is an empty batch \(shape \(0, 4\)\)"):
        model.forward(np.zeros((0, 4)))
    with pytest.raises(ValueError, match="empty"):
        trainer_for(model).fit(np.zeros((0, 4)), np.zeros(0), verbose=0)
    with pytest.raises(ValueError, match="empty"):
        model.predict(np.zeros((0, 4)))


def test_bad_dtype_settings():
    with pytest.raises(ValueError, match=r"dtype must be 'float32' or 'float64', got 'float16'"):
        rp.Sequential([Dense(2)], dtype="float16")
    with pytest.raises(ValueError, match="dtype"):
        rp.Sequential([Dense(2)], dtype=None)
    with pytest.raises(ValueError, match="units"):
        Dense(0)
    with pytest.raises(TypeError, match="Layer"):
        rp.Sequential().add("dense")


# -- labels --------------------------------------------------------------------------

def test_length_mismatch():
    x, y = small_data(32)
    trainer = trainer_for(small_model())
    with pytest.raises(ValueError, match="32 samples in x, 31 in y"):
        trainer.fit(x, y[:31], verbose=0)
    with pytest.raises(ValueError, match="32 samples in x, 31 in y"):
        trainer.evaluate(x, y[:31])


def test_labels_out_of_range():
    x, y = small_data(32)
    y = y.copy()
    y[5] = 3
    trainer = trainer_for(small_model())
    with pytest.raises(ValueError, match=r"y contains label 3 at index 5, out of range for "
                                         r"3 classes \(valid labels are 0..2\)"):
        trainer.fit(x, y, verbose=0)
    y[5] = -1
    with pytest.raises(ValueError, match="y contains label -1 at index 5"):
        trainer.evaluate(x, y)
    with pytest.raises(ValueError, match="label 7"):
        rp.losses.get("categorical_crossentropy")(np.array([0, 7]), np.full((2, 3), 1 / 3))


def test_bad_label_types_and_shapes():
    x, y = small_data(8)
    trainer = trainer_for(small_model())
    with pytest.raises(ValueError, match=r"y\[2\] = 0.5 is not an integer class id"):
        trainer.fit(x, np.array([0, 1, 0.5, 1, 0, 1, 0, 1]), verbose=0)
    with pytest.raises(ValueError, match=r"one-hot \(N, 3\), got shape \(8, 4\)"):
        trainer.fit(x, np.eye(4)[y % 4], verbose=0)
    onehot = np.eye(3)[y]
    onehot[1, 2] = np.nan
    with pytest.raises(ValueError, match=r"y contains NaN or Inf at index \(1, 2\)"):
        trainer.fit(x, onehot, verbose=0)
    with pytest.raises(TypeError, match="y must be numeric"):
        trainer.fit(x, np.array(["a"] * 8), verbose=0)
    # Whole-number float labels are fine.
    trainer.fit(x, y.astype(np.float64), verbose=0)


def test_mse_target_shape():
    model = rp.Sequential([Dense(2)], input_shape=(4,), seed=0)
    trainer = rp.Trainer(model, "mse", "sgd", metrics=[])
    x, _ = small_data(8)
    with pytest.raises(ValueError, match=r"y has per-sample shape \(3,\) but the model outputs "
                                         r"\(2,\)"):
        trainer.fit(x, np.zeros((8, 3)), verbose=0)


def test_validation_data_checks():
    x, y = small_data(16)
    trainer = trainer_for(small_model())
    bad_x = x.copy()
    bad_x[2, 3] = np.inf
    with pytest.raises(ValueError, match=r"validation_data x contains NaN or Inf at index "
                                         r"\(2, 3\)"):
        trainer.fit(x, y, validation_data=(bad_x, y), verbose=0)
    with pytest.raises(ValueError, match="16 samples in validation_data x, 15 in "
                                         "validation_data y"):
        trainer.fit(x, y, validation_data=(x, y[:15]), verbose=0)
    with pytest.raises(ValueError, match="pair"):
        trainer.fit(x, y, validation_data=x, verbose=0)
    with pytest.raises(ValueError, match="validation_split"):
        trainer.fit(x, y, validation_split=1.5, verbose=0)


def test_fit_argument_checks():
    x, y = small_data(16)
    trainer = trainer_for(small_model())
    with pytest.raises(ValueError, match="batch_size must be an integer >= 1, got 0"):
        trainer.fit(x, y, batch_size=0, verbose=0)
    with pytest.raises(ValueError, match="epochs must be an integer >= 0, got -1"):
        trainer.fit(x, y, epochs=-1, verbose=0)
    with pytest.raises(ValueError, match="batch_size"):
        small_model().predict(x, batch_size=0)


# -- names and configuration --------------------------------------------------------

def test_unknown_names_list_the_valid_ones():
    with pytest.raises(ValueError, match="unknown activation 'relu6'.*linear, mish, relu, sigmoid, "
                                         "softmax, softplus, step, swish, tanh"):
        Dense(3, activation="relu6")
    with pytest.raises(ValueError, match="unknown loss 'huber'.*categorical_crossentropy"):
        rp.Trainer(small_model(), "huber", "sgd")
    with pytest.raises(ValueError, match="unknown optimizer 'lbfgs'.*sgd"):
        rp.Trainer(small_model(), "mse", "lbfgs")
    with pytest.raises(ValueError, match="unknown initializer 'xavier'"):
        Dense(3, kernel_initializer="xavier")
    with pytest.raises(ValueError, match="unknown metric 'auc'.*accuracy"):
        rp.Trainer(small_model(), "mse", "sgd", metrics=["auc"])


@pytest.mark.parametrize("kwargs,match", [
    (dict(lr=0.0), "lr must be a positive"),
    (dict(lr=-1.0), "lr must be a positive"),
    (dict(lr=float("nan")), "lr must be a positive"),
    (dict(momentum=1.0), r"momentum must be in \[0, 1\), got 1.0"),
    (dict(momentum=-0.1), "momentum"),
    (dict(nesterov=True), "nesterov=True requires momentum > 0"),
    (dict(weight_decay=-1e-4), "weight_decay"),
])
def test_sgd_argument_checks(kwargs, match):
    with pytest.raises(ValueError, match=match):
        rp.optim.SGD(**kwargs)


def test_bad_schedule_value():
    opt = rp.optim.SGD(lr=lambda step: -1.0)
    model = small_model()
    with pytest.raises(ValueError, match="lr schedule value at step 0"):
        opt.step(model.named_parameters())


# -- non-finite values ------------------------------------------------------------------

def test_nan_in_x():
    x, y = small_data(16)
    x[3, 1] = np.nan
    trainer = trainer_for(small_model())
    with pytest.raises(ValueError, match=r"x contains NaN or Inf at index \(3, 1\)"):
        trainer.fit(x, y, verbose=0)
    with pytest.raises(ValueError, match=r"x contains NaN or Inf at index \(3, 1\)"):
        trainer.evaluate(x, y)


def test_x_is_scanned_once_per_array_and_nan_written_later_still_stops_training(monkeypatch):
    from retroprop import trainer as trainer_module
    scans = []
    real = trainer_module._first_nonfinite_index
    monkeypatch.setattr(trainer_module, "_first_nonfinite_index",
                        lambda arr, backend=None: scans.append(arr) or real(arr, backend))
    x, y = small_data(64)
    model = small_model()
    trainer = trainer_for(model, metrics=[])
    trainer.fit(x, y, epochs=1, batch_size=16, verbose=0)
    trainer.fit(x, y, epochs=1, batch_size=16, verbose=0)     # the same array: no second scan
    assert sum(arr is x for arr in scans) == 1
    trainer.fit(x.copy(), y, epochs=1, batch_size=16, verbose=0)   # another array: scanned
    assert len(scans) == 2
    x[40, 2] = np.nan             # written in place after its scan
    before = model.get_weights()
    with pytest.raises(rp.trainer.NonFiniteError, match="loss is nan"):
        trainer.fit(x, y, epochs=1, batch_size=64, verbose=0)
    for a, b in zip(before, model.get_weights()):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match=r"x contains NaN or Inf at index \(40, 2\)"):
        trainer_for(small_model()).fit(x, y, verbose=0)      # a new trainer scans it


class WeightLog(rp.callbacks.Callback):
    """Copies of the weights after every optimizer step (index 0: before training)."""

    def on_train_begin(self, logs=None):
        self.snapshots = [self.model.get_weights()]

    def on_batch_end(self, batch, logs=None):
        self.snapshots.append(self.model.get_weights())


class NaNOnCall(rp.losses.CategoricalCrossentropy):
    """Cross-entropy from logits that returns NaN from its ``bad_call``-th evaluation on."""

    def __init__(self, bad_call):
        super().__init__(from_logits=True)
        self.calls = 0
        self.bad_call = bad_call

    def value_and_grad(self, targets, y_pred, backend):
        self.calls += 1
        loss, grad = super().value_and_grad(targets, y_pred, backend)
        return (float("nan") if self.calls >= self.bad_call else loss), grad


def assert_weights_equal(a, b):
    assert len(a) == len(b)
    for wa, wb in zip(a, b):
        np.testing.assert_array_equal(wa, wb)


def test_nan_loss_names_epoch_and_batch_and_keeps_weights():
    x, y = small_data(32)
    model = rp.Sequential([Dense(8, activation="tanh"), Dense(3)], input_shape=(4,), seed=0)
    log = WeightLog()
    optimizer = rp.optim.SGD(lr=0.05, momentum=0.9)
    trainer = rp.Trainer(model, NaNOnCall(bad_call=7), optimizer, callbacks=[log])
    # 4 batches per epoch: the 7th step is epoch 2, batch 3.
    with pytest.raises(rp.NonFiniteError, match=r"loss is nan at epoch 2/3, batch 3/4") as info:
        trainer.fit(x, y, epochs=3, batch_size=8, verbose=0)
    assert isinstance(info.value, FloatingPointError) and isinstance(info.value, ValueError)
    assert (info.value.epoch, info.value.batch) == (2, 3)
    assert len(log.snapshots) == 7  # the initial weights + 6 applied steps
    assert_weights_equal(model.get_weights(), log.snapshots[-1])
    assert optimizer.iterations == 6


def test_huge_learning_rate_is_stopped_with_finite_weights():
    x, y = small_data(64)
    # relu does not saturate, so the huge weights overflow the logits to inf.
    model = rp.Sequential([Dense(8, activation="relu"), Dense(3, activation="softmax")],
                          input_shape=(4,), seed=0)
    log = WeightLog()
    trainer = rp.Trainer(model, "categorical_crossentropy", rp.optim.SGD(lr=1e30, momentum=0.9),
                         callbacks=[log])
    with pytest.raises(rp.NonFiniteError, match=r"at epoch \d+/50, batch \d+/8") as info:
        trainer.fit(x, y, epochs=50, batch_size=8, verbose=0)
    assert info.value.epoch is not None
    # The refused step left the weights exactly as after the last applied step.
    assert_weights_equal(model.get_weights(), log.snapshots[-1])
    assert all(np.all(np.isfinite(w)) for w in model.get_weights())


def test_injected_inf_weight_is_reported_at_the_first_batch():
    x, y = small_data(16)
    model = small_model()
    model.layers[1].params["W"][0, 0] = np.inf
    before = model.get_weights()
    trainer = trainer_for(model)
    with pytest.raises(rp.NonFiniteError, match=r"epoch 1/1, batch 1/2"):
        trainer.fit(x, y, epochs=1, batch_size=8, verbose=0)
    assert_weights_equal(model.get_weights(), before)


def test_step_that_overflows_the_weights_is_undone():
    x, _ = small_data(16)
    model = rp.Sequential([Dense(1)], input_shape=(4,), seed=0)
    before = model.get_weights()
    optimizer = rp.optim.SGD(lr=1e35, momentum=0.5)
    trainer = rp.Trainer(model, "mse", optimizer, metrics=[])
    # Finite loss and gradients, but lr * grad overflows float32.
    with pytest.raises(rp.NonFiniteError, match=r"parameter dense/W would become NaN or Inf "
                                                r"with the optimizer step at epoch 1/1, batch 1/2"):
        trainer.fit(x, np.full(16, 1e6), epochs=1, batch_size=8, verbose=0)
    assert_weights_equal(model.get_weights(), before)
    assert optimizer.iterations == 0
    # The momentum state was not touched either (still its initial zeros).
    assert all(np.all(v == 0) for v in optimizer.velocity.values())


def test_without_check_finite_the_overflow_shows_up_in_the_next_loss():
    x, _ = small_data(16)
    model = rp.Sequential([Dense(1)], input_shape=(4,), seed=0)
    trainer = rp.Trainer(model, "mse", rp.optim.SGD(lr=1e35), metrics=[], check_finite=False)
    with pytest.raises(rp.NonFiniteError, match=r"loss is (nan|inf) at epoch 1/1, batch 2/2"):
        trainer.fit(x, np.full(16, 1e6), epochs=1, batch_size=8, verbose=0)
    assert not np.all(np.isfinite(model.layers[0].params["W"]))
