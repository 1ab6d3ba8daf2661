"""Callbacks (checkpoint, LR scheduler, CSV logger, TerminateOnNaN) and metrics."""
import csv
import math
import re

import numpy as np
import pytest

import retroprop as rp
from retroprop import callbacks, metrics
from retroprop.layers import Dense


def small_problem(n=64, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, 3)).astype(np.float32)
    y = (x[:, 0] + x[:, 1] > 0).astype(np.int64)
    model = rp.Sequential([Dense(4, activation="tanh"), Dense(2, activation="softmax")],
                          input_shape=(3,), seed=0)
    return model, x, y


def fit(cbs, epochs=3, lr=0.1, validation_split=0.25):
    model, x, y = small_problem()
    trainer = rp.Trainer(model, "categorical_crossentropy", rp.optim.SGD(lr=lr),
                         callbacks=cbs)
    history = trainer.fit(x, y, epochs=epochs, batch_size=16, verbose=0,
                          validation_split=validation_split)
    return model, trainer, history


def test_model_checkpoint_every_epoch(tmp_path):
    ckpt = callbacks.ModelCheckpoint(str(tmp_path / "m-{epoch:02d}.rpz"))
    model, _, _ = fit([ckpt])
    assert [p.split("/")[-1] for p in ckpt.saved] == ["m-01.rpz", "m-02.rpz", "m-03.rpz"]
    restored = rp.load_model(ckpt.saved[-1])
    x = small_problem()[1]
    np.testing.assert_allclose(restored.predict(x), model.predict(x), rtol=1e-6)


def test_model_checkpoint_best_only(tmp_path):
    ckpt = callbacks.ModelCheckpoint(str(tmp_path / "best.rpz"), monitor="val_loss",
                                     save_best_only=True)
    _, _, history = fit([ckpt], epochs=5)
    losses = history.history["val_loss"]
    improvements = sum(1 for i, v in enumerate(losses) if v < min(losses[:i], default=math.inf))
    assert len(ckpt.saved) == improvements >= 1
    assert ckpt.best == min(losses)


def test_learning_rate_scheduler():
    sched = callbacks.LearningRateScheduler(lambda epoch: 0.1 * 0.5 ** epoch)
    _, trainer, _ = fit([sched], epochs=3)
    assert sched.lrs == pytest.approx([0.1, 0.05, 0.025])
    assert trainer.optimizer.lr == pytest.approx(0.025)
    two = callbacks.LearningRateScheduler(lambda epoch, lr: lr * 0.5)
    fit([two], epochs=2, lr=0.2)
    assert two.lrs == pytest.approx([0.1, 0.05])
    bad = callbacks.LearningRateScheduler(lambda epoch: -1.0)
    with pytest.raises(ValueError, match="positive"):
        fit([bad])


def test_csv_logger(tmp_path):
    path = tmp_path / "log.csv"
    _, _, history = fit([callbacks.CSVLogger(str(path))], epochs=3)
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["epoch", "accuracy", "loss", "val_accuracy", "val_loss"]
    assert [r[0] for r in rows[1:]] == ["0", "1", "2"]
    assert [float(r[2]) for r in rows[1:]] == pytest.approx(history.history["loss"])
    fit([callbacks.CSVLogger(str(path), append=True)], epochs=1)
    with open(path, newline="") as f:
        assert len(list(csv.reader(f))) == 5      # one header, 3 + 1 rows


class _NaNAfter(callbacks.Callback):
    """Pretend the loss of batch 2 was NaN (runs before TerminateOnNaN)."""

    def on_batch_end(self, batch, logs=None):
        if batch == 2:
            logs["loss"] = float("nan")


def test_terminate_on_nan():
    stop = callbacks.TerminateOnNaN()
    _, _, history = fit([_NaNAfter(), stop], epochs=5, validation_split=0.0)
    assert stop.stopped_batch == 2
    assert len(history.epoch) == 1      # stopped inside the first epoch


# -- metrics -----------------------------------------------------------------------------

def test_top_k_accuracy():
    scores = np.array([[0.1, 0.5, 0.3, 0.1], [0.7, 0.1, 0.1, 0.1], [0.2, 0.3, 0.4, 0.1]])
    y = np.array([2, 0, 3])
    assert metrics.top_k_accuracy(y, scores, k=1) == pytest.approx(1 / 3)
    assert metrics.top_k_accuracy(y, scores, k=2) == pytest.approx(2 / 3)
    assert metrics.top_k_accuracy(y, scores, k=4) == 1.0
    assert metrics.top_k_accuracy(np.eye(4)[y], scores, k=2) == pytest.approx(2 / 3)
    assert metrics.get("top_k_accuracy").__name__ == "top_5_accuracy"


def test_confusion_matrix_and_macro_scores():
    y_true = np.array([0, 0, 1, 1, 1, 2])
    y_pred = np.array([0, 1, 1, 1, 2, 2])
    m = metrics.confusion_matrix(y_true, y_pred)
    np.testing.assert_array_equal(m, [[1, 1, 0], [0, 2, 1], [0, 0, 1]])
    # Per class: precision (1, 2/3, 1/2), recall (1/2, 2/3, 1).
    p = (1 + 2 / 3 + 1 / 2) / 3
    r = (1 / 2 + 2 / 3 + 1) / 3
    f = (2 * 0.5 / 1.5 + 2 / 3 + 2 * 0.5 / 1.5) / 3
    scores = np.eye(3)[y_pred]           # scores: argmax gives y_pred
    assert metrics.precision_macro(y_true, scores) == pytest.approx(p)
    assert metrics.recall_macro(y_true, scores) == pytest.approx(r)
    assert metrics.f1_macro(y_true, scores) == pytest.approx(f)
    sklearn = pytest.importorskip("sklearn.metrics")
    assert metrics.f1_macro(y_true, scores) == pytest.approx(
        sklearn.f1_score(y_true, y_pred, average="macro"))
    assert metrics.precision_macro(y_true, scores) == pytest.approx(
        sklearn.precision_score(y_true, y_pred, average="macro"))


def test_metrics_in_the_trainer():
    model, x, y = small_problem()
    trainer = rp.Trainer(model, "categorical_crossentropy", rp.optim.Adam(lr=0.05),
                         metrics=["accuracy", "f1", "precision", "recall"])
    trainer.fit(x, y, epochs=3, batch_size=16, verbose=0)
    result = trainer.evaluate(x, y)
    for name in ("accuracy", "f1_macro", "precision_macro", "recall_macro"):
        assert 0.0 <= result[name] <= 1.0


# -- gradient monitoring ----------------------------------------------------------------

def test_gradient_monitor_records_every_epoch():
    model, x, y = small_problem()
    monitor = callbacks.GradientMonitor(x[:16], y[:16])
    trainer = rp.Trainer(model, "categorical_crossentropy", rp.optim.SGD(lr=0.1),
                         callbacks=[monitor])
    initial = [w.copy() for w in model.get_weights()]
    trainer.fit(x, y, epochs=2, batch_size=16, verbose=0)
    assert len(monitor.history) == 3 and monitor.epochs == [0, 1, 2]   # init + 2 epochs
    first = monitor.history[0]
    assert [s["name"] for s in first] == [layer.name for layer in model.layers]
    assert all(s["grad_std"] > 0 and np.isfinite(s["act_std"]) for s in first)
    assert "grad std" in monitor.table()
    # The first record is the initialisation: recompute it on the initial weights.
    fresh = small_problem()[0]
    fresh.set_weights(initial)
    again = callbacks.gradient_statistics(fresh, "categorical_crossentropy", x[:16], y[:16])
    assert [s["grad_std"] for s in first] == pytest.approx([s["grad_std"] for s in again])
    assert monitor.history[2][0]["grad_std"] != pytest.approx(first[0]["grad_std"])


def test_gradient_monitor_histograms_and_png(tmp_path, monkeypatch):
    model, x, y = small_problem()
    monitor = callbacks.GradientMonitor(x, y, bins=7)
    stats = monitor.record(model, "categorical_crossentropy")
    hidden = np.tanh(x @ model.layers[0].params["W"] + model.layers[0].params["b"])
    hist = stats[0]["act_hist"]
    counts, edges = np.histogram(hidden, bins=7)
    assert hist["counts"] == counts.tolist() and hist["edges"] == pytest.approx(edges)
    assert sum(stats[1]["grad_hist"]["counts"]) == model.layers[1].params["W"].size
    pytest.importorskip("matplotlib")
    path = monitor.plot(str(tmp_path / "monitor.png"))
    with open(path, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    # Without matplotlib: the numbers come back instead, with a warning.
    monkeypatch.setitem(__import__("sys").modules, "matplotlib", None)
    with pytest.warns(RuntimeWarning, match="matplotlib"):
        assert monitor.plot(str(tmp_path / "none.png")) is stats
    assert not (tmp_path / "none.png").exists()
    with pytest.raises(ValueError, match="GradientMonitor: bins"):
        callbacks.GradientMonitor(x, y, bins=0)


def test_gradient_statistics_match_a_manual_pass():
    model, x, y = small_problem()
    stats = callbacks.gradient_statistics(model, "categorical_crossentropy", x, y)
    hidden = np.tanh(x @ model.layers[0].params["W"] + model.layers[0].params["b"])
    assert stats[0]["act_std"] == pytest.approx(float(np.std(hidden)), rel=1e-5)
    # The kernel gradient of the last layer: h^T (p - onehot) / N.
    p = model.predict(x)
    expected = hidden.T @ (p - np.eye(2)[y]) / len(y)
    assert stats[1]["grad_std"] == pytest.approx(float(np.std(expected)), rel=1e-4)


def test_vanishing_gradient_pattern():
    # Deep sigmoid net with Glorot weights: the first layer's gradient is far
    # smaller than the last hidden layer's; ReLU + He keeps them comparable.
    rng = np.random.default_rng(0)
    x = rng.standard_normal((32, 20)).astype(np.float32)
    y = rng.integers(0, 3, size=32)

    def ratio(activation, init):
        layers = [Dense(50, activation=activation, kernel_initializer=init) for _ in range(6)]
        model = rp.Sequential(layers + [Dense(3, activation="softmax")], input_shape=(20,),
                              seed=0)
        stats = callbacks.gradient_statistics(model, "categorical_crossentropy", x, y)
        return stats[0]["grad_std"] / stats[5]["grad_std"]

    assert ratio("sigmoid", "glorot_uniform") < 0.01
    assert 0.1 < ratio("relu", "he_normal") < 10


# -- progress bar ------------------------------------------------------------------------

class FakeStream:
    """A text stream that says whether it is a terminal."""

    def __init__(self, tty):
        self.tty = tty
        self.text = ""

    def write(self, s):
        self.text += s

    def flush(self):
        pass

    def isatty(self):
        return self.tty


NUMBER = r"\d+\.\d{4}"
EPOCH_LINE = (rf"Epoch (\d)/3 - loss: {NUMBER} - accuracy: {NUMBER} - val_loss: {NUMBER}"
              rf" - val_accuracy: {NUMBER} - [\d,]+ samples/s - \d+\.\d\ds")


def fit_with_bar(bar, epochs=3, verbose=0):
    model, x, y = small_problem(n=80)          # 60 training samples: batches of 16,16,16,12
    trainer = rp.Trainer(model, "categorical_crossentropy", rp.optim.SGD(lr=0.1),
                         callbacks=[bar] if bar is not None else None)
    return trainer.fit(x, y, epochs=epochs, batch_size=16, validation_split=0.25,
                       verbose=verbose)


@pytest.mark.parametrize("verbose", [1, 2])
def test_progress_bar_one_line_per_epoch_when_not_a_terminal(verbose):
    stream = FakeStream(tty=False)
    history = fit_with_bar(callbacks.ProgressBar(verbose=verbose, stream=stream))
    assert "\r" not in stream.text
    lines = stream.text.splitlines()
    assert len(lines) == 3
    for i, line in enumerate(lines):
        match = re.fullmatch(EPOCH_LINE, line)
        assert match and match.group(1) == str(i + 1), line
        assert f"loss: {history.history['loss'][i]:.4f}" in line


def test_progress_bar_verbose_2_ignores_the_terminal():
    stream = FakeStream(tty=True)
    fit_with_bar(callbacks.ProgressBar(verbose=2, stream=stream))
    assert "\r" not in stream.text and len(stream.text.splitlines()) == 3


def test_progress_bar_on_a_terminal_updates_every_batch():
    stream = FakeStream(tty=True)
    history = fit_with_bar(callbacks.ProgressBar(stream=stream, width=8, min_interval=0.0))
    lines = stream.text.split("\n")
    assert lines[-1] == "" and len(lines) == 4          # one finished line per epoch
    for epoch, line in enumerate(lines[:3]):
        updates = [u.rstrip(" ") for u in line.split("\r")[1:]]
        assert len(updates) == 4 + 1                     # 4 batches, then the epoch summary
        for b, update in enumerate(updates[:4]):
            assert re.fullmatch(rf"Epoch {epoch + 1}/3  {b + 1}/4 \[[=>.]{{8}}\] - ETA \d+s"
                                rf" - loss: {NUMBER} - accuracy: {NUMBER}"
                                rf" - [\d,]+ samples/s", update), update
        assert "[===>....]" in updates[1] and "[========]" in updates[3]
        # The running mean after the last batch is the epoch's training loss.
        assert f"loss: {history.history['loss'][epoch]:.4f}" in updates[3]
        assert updates[4].startswith(f"Epoch {epoch + 1}/3  4/4 [========] - loss: ")
        assert re.search(rf"val_accuracy: {NUMBER} - [\d,]+ samples/s - \d+\.\d\ds$",
                         updates[4])


def test_progress_bar_throttles_redraws():
    stream = FakeStream(tty=True)
    fit_with_bar(callbacks.ProgressBar(stream=stream, min_interval=3600.0), epochs=1)
    # The first batch draws, then nothing until the last batch, then the summary.
    assert stream.text.count("\r") == 3


def test_fit_verbose_uses_a_progress_bar(capsys):
    model, x, y = small_problem()
    trainer = rp.Trainer(model, "categorical_crossentropy", "sgd")
    trainer.fit(x, y, epochs=2, batch_size=16, verbose=1)
    lines = capsys.readouterr().out.splitlines()     # captured output is not a terminal
    assert len(lines) == 2 and lines[1].startswith("Epoch 2/2 - loss: ")
    # A ProgressBar among the callbacks replaces the default one.
    stream = FakeStream(tty=False)
    fit_with_bar(callbacks.ProgressBar(stream=stream), epochs=3, verbose=1)
    assert capsys.readouterr().out == "" and len(stream.text.splitlines()) == 3
    with pytest.raises(ValueError, match="verbose"):
        trainer.fit(x, y, verbose=3)
    with pytest.raises(ValueError, match="ProgressBar: verbose"):
        callbacks.ProgressBar(verbose=0)


def test_format_duration():
    assert callbacks._format_duration(37.4) == "37s"
    assert callbacks._format_duration(125) == "2:05"
    assert callbacks._format_duration(3725) == "1:02:05"


class StopWithError(callbacks.Callback):
    """Raises inside the second batch's callbacks, as a KeyboardInterrupt would land."""

    def __init__(self):
        super().__init__()
        self.aborted = False

    def on_batch_end(self, batch, logs=None):
        if batch == 1:
            raise RuntimeError("stop here")

    def on_train_abort(self):
        self.aborted = True


def test_an_error_mid_epoch_ends_the_progress_bar_line():
    stream = FakeStream(tty=True)
    stopper = StopWithError()
    model, x, y = small_problem(n=80)
    # The bar comes first, so it has drawn batch 2 when the stopper raises.
    trainer = rp.Trainer(model, "categorical_crossentropy", rp.optim.SGD(lr=0.1),
                         callbacks=[callbacks.ProgressBar(stream=stream, min_interval=0.0),
                                    stopper])
    with pytest.raises(RuntimeError, match="stop here"):
        trainer.fit(x, y, epochs=2, batch_size=16, verbose=1)
    assert stopper.aborted
    assert stream.text.endswith("\n") and stream.text.count("\n") == 1
    assert " 2/" in stream.text.split("\r")[-1]
