"""EarlyStopping(baseline=...), StopAtThreshold, and GradientMonitor's
back-propagated gradients dL/dh (against PyTorch autograd and by hand)."""
import numpy as np
import pytest

import retroprop as rp
from retroprop import callbacks
from retroprop.layers import Dense, Flatten


def replay(cb, values, key="val_loss"):
    class FakeTrainer:
        stop_training = False
        model = None
    trainer = FakeTrainer()
    cb.set_trainer(trainer)
    cb.on_train_begin({})
    for epoch, v in enumerate(values):
        cb.on_epoch_end(epoch, {key: v})
        if trainer.stop_training:
            return epoch
    return None


def test_baseline_not_beaten_stops_after_patience():
    cb = callbacks.EarlyStopping(monitor="val_loss", patience=2, baseline=0.5)
    # 0.9, 0.8 never beat 0.5: stop at the second epoch (patience 2).
    assert replay(cb, [0.9, 0.8, 0.7, 0.6]) == 1
    assert cb.best_epoch is None and cb.best == 0.5


def test_baseline_beaten_behaves_as_usual():
    cb = callbacks.EarlyStopping(monitor="val_loss", patience=2, baseline=0.5)
    # 0.9 misses the baseline (wait 1), 0.4 and 0.3 improve, then two misses.
    assert replay(cb, [0.9, 0.4, 0.3, 0.35, 0.36, 0.1]) == 4
    assert cb.best_epoch == 2 and cb.best == 0.3


def test_baseline_max_mode():
    cb = callbacks.EarlyStopping(monitor="val_accuracy", patience=2, baseline=0.8)
    assert cb.mode == "max"
    assert replay(cb, [0.7, 0.85, 0.9, 0.89, 0.88, 0.95], key="val_accuracy") == 4
    explicit = callbacks.EarlyStopping(monitor="score", mode="max", patience=0, baseline=0.8)
    assert replay(explicit, [0.81, 0.79], key="score") == 1


def test_baseline_bad_values():
    with pytest.raises(ValueError, match="baseline must be finite"):
        callbacks.EarlyStopping(baseline=float("nan"))
    with pytest.raises(TypeError, match="baseline must be a number"):
        callbacks.EarlyStopping(baseline="low")


def _xor():
    x = np.array([[0, 0], [0, 1], [1, 0], [1, 1]], dtype=np.float32)
    return x, np.array([0, 1, 1, 0])


def test_stop_at_threshold_ends_training_when_the_loss_is_low_enough():
    x, y = _xor()
    model = rp.Sequential([Dense(8, activation="tanh"), Dense(2, activation="softmax")],
                          input_shape=(2,), seed=0)
    stop = callbacks.StopAtThreshold(0.05)
    history = rp.Trainer(model, "categorical_crossentropy", rp.optim.Adam(lr=0.05),
                         callbacks=[stop]).fit(x, y, epochs=2000, batch_size=4, verbose=0)
    losses = history.history["loss"]
    assert stop.stopped_epoch == len(losses) - 1 < 1999
    assert losses[-1] <= 0.05 < min(losses[:-1])


def test_stop_at_threshold_per_batch_and_accuracy():
    x, y = _xor()
    model = rp.Sequential([Dense(8, activation="tanh"), Dense(2, activation="softmax")],
                          input_shape=(2,), seed=0)
    stop = callbacks.StopAtThreshold(1.0, monitor="accuracy", mode="auto", per_batch=True)
    assert stop.mode == "max"
    rp.Trainer(model, "categorical_crossentropy", rp.optim.Adam(lr=0.05),
               callbacks=[stop]).fit(x, y, epochs=2000, batch_size=2, verbose=0)
    assert stop.stopped_epoch is not None and stop.stopped_batch in (0, 1)


def test_stop_at_threshold_errors():
    with pytest.raises(ValueError, match="mode must be"):
        callbacks.StopAtThreshold(0.1, mode="lowest")
    with pytest.raises(ValueError, match="threshold must be finite"):
        callbacks.StopAtThreshold(float("inf"))
    with pytest.raises(TypeError, match="threshold must be a number"):
        callbacks.StopAtThreshold(None)
    with pytest.raises(ValueError, match="'val_loss' is not in the logs"):
        replay(callbacks.StopAtThreshold(0.1, monitor="val_loss"), [0.5], key="loss")


# -- GradientMonitor: dL/dh ------------------------------------------------------------

def _torch_dl_dh(model, x, y, loss_name):
    """dL/dh for every layer output of a Dense chain, by PyTorch autograd."""
    torch = pytest.importorskip("torch")
    h = torch.tensor(x, requires_grad=True)
    outs = []
    for layer in model.layers:
        z = h @ torch.tensor(layer.params["W"]) + torch.tensor(layer.params["b"])
        name = layer.activation.name
        h = {"tanh": torch.tanh, "relu": torch.relu, "sigmoid": torch.sigmoid,
             "softmax": lambda t: torch.softmax(t, dim=1), "linear": lambda t: t}[name](z)
        h.retain_grad()
        outs.append(h)
    if loss_name == "categorical_crossentropy":
        loss = -torch.log(h[torch.arange(len(y)), torch.tensor(y)]).mean()
    else:
        loss = ((h - torch.tensor(y)) ** 2).mean()
    loss.backward()
    return [o.grad.numpy() for o in outs]


@pytest.mark.parametrize("loss_name,last", [("categorical_crossentropy", "softmax"),
                                            ("mse", "sigmoid")])
def test_out_grad_statistics_match_torch(loss_name, last):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((12, 5))
    model = rp.Sequential([Dense(7, activation="tanh"), Dense(6, activation="relu"),
                           Dense(3, activation=last)], input_shape=(5,), dtype="float64",
                          seed=1)
    y = rng.integers(0, 3, 12) if last == "softmax" else rng.uniform(0, 1, (12, 3))
    stats = callbacks.gradient_statistics(model, loss_name, x, y, bins=5)
    expected = _torch_dl_dh(model, x, y, loss_name)
    for entry, g in zip(stats, expected):
        assert entry["out_grad_std"] == pytest.approx(float(np.std(g)), rel=1e-9)
        assert entry["out_grad_mean"] == pytest.approx(float(np.mean(g)), rel=1e-9, abs=1e-15)
        counts, edges = np.histogram(g, bins=5)
        assert entry["out_grad_hist"]["counts"] == counts.tolist()
        np.testing.assert_allclose(entry["out_grad_hist"]["edges"], edges, rtol=1e-9)


def test_out_grad_through_parameter_free_layers():
    # Flatten has no parameters but still passes dL/dh down: its dL/dh is the
    # next layer's dL/dx reshaped.
    rng = np.random.default_rng(2)
    x = rng.standard_normal((4, 3, 2, 1))
    model = rp.Sequential([Flatten(), Dense(4, activation="tanh"),
                           Dense(2, activation="softmax")],
                          input_shape=(3, 2, 1), dtype="float64", seed=0)
    y = [0, 1, 1, 0]
    stats = callbacks.gradient_statistics(model, "categorical_crossentropy", x, y)
    # dL/d(flatten output) = dL/dz1 @ W1^T, with dL/dz1 from the dense layer's backward.
    h0 = x.reshape(4, 6)
    h1 = np.tanh(h0 @ model.layers[1].params["W"] + model.layers[1].params["b"])
    z2 = h1 @ model.layers[2].params["W"] + model.layers[2].params["b"]
    p = np.exp(z2 - z2.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    dz2 = (p - np.eye(2)[y]) / 4
    dh1 = dz2 @ model.layers[2].params["W"].T
    dh0 = (dh1 * (1 - h1 ** 2)) @ model.layers[1].params["W"].T
    assert stats[0]["grad_std"] is None
    assert stats[0]["out_grad_std"] == pytest.approx(np.std(dh0), rel=1e-10)
    assert stats[1]["out_grad_std"] == pytest.approx(np.std(dh1), rel=1e-10)


def test_monitor_records_and_plots_dl_dh(tmp_path):
    pytest.importorskip("matplotlib")
    rng = np.random.default_rng(3)
    x = rng.standard_normal((32, 6)).astype(np.float32)
    y = rng.integers(0, 3, 32)
    model = rp.Sequential([Dense(8, activation="tanh"), Dense(3, activation="softmax")],
                          input_shape=(6,), seed=0)
    monitor = callbacks.GradientMonitor(x[:8], y[:8], bins=6)
    rp.Trainer(model, "categorical_crossentropy", rp.optim.SGD(lr=0.1),
               callbacks=[monitor]).fit(x, y, epochs=2, batch_size=8, verbose=0)
    assert len(monitor.history) == 3
    assert all(len(s["out_grad_hist"]["counts"]) == 6 for s in monitor.history[0])
    assert "dL/dh std" in monitor.table()
    path = monitor.plot(str(tmp_path / "g.png"))
    assert (tmp_path / "g.png").stat().st_size > 1000 and path.endswith("g.png")
