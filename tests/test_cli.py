"""The retroprop command line: exit codes, one-line errors, and a short real run."""
import os
import subprocess
import sys

import numpy as np
import pytest

from retroprop import cli


def run_cli(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "retroprop", *args], capture_output=True,
                          text=True, timeout=timeout)


def test_info_reports_backend():
    proc = run_cli("info")
    assert proc.returncode == 0
    assert "simd:" in proc.stdout and "threads:" in proc.stdout and "cuda:" in proc.stdout


@pytest.mark.parametrize("args,message", [
    (["train", "--epochs", "0"], "--epochs must be >= 1"),
    (["train", "--lr", "-1"], "--lr must be > 0"),
    (["train", "--val-split", "1.5"], "--val-split must be in [0, 1)"),
    (["summary", "does-not-exist.rpz"], "model file not found"),
])
def test_errors_are_one_line_without_traceback(args, message):
    proc = run_cli(*args)
    assert proc.returncode == 2
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_bad_choice_is_a_usage_error():
    proc = run_cli("train", "--dataset", "imagenet")
    assert proc.returncode == 2 and "invalid choice" in proc.stderr


def test_missing_data_names_the_ways_to_provide_it(tmp_path):
    proc = run_cli("train", "--dataset", "mnist", "--data-dir", str(tmp_path))
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and str(tmp_path) in proc.stderr


def test_train_save_evaluate_predict_summary(tmp_path):
    model_path = tmp_path / "xor.rpz"
    proc = run_cli("train", "--dataset", "xor", "--model", "mlp", "--epochs", "40",
                   "--batch-size", "16", "--lr", "0.1", "--out", str(model_path))
    assert proc.returncode == 0, proc.stderr
    accuracy = float(proc.stdout.rsplit("test accuracy", 1)[1].split()[0])
    assert accuracy >= 0.9
    assert model_path.exists()

    proc = run_cli("evaluate", str(model_path), "--dataset", "xor")
    assert proc.returncode == 0 and "confusion matrix" in proc.stdout

    x = np.array([[0, 0], [1, 1], [0, 1]], np.float32)
    np.save(tmp_path / "x.npy", x)
    proc = run_cli("predict", str(model_path), "--input", str(tmp_path / "x.npy"),
                   "--output", str(tmp_path / "y.npy"))
    assert proc.returncode == 0, proc.stderr
    probs = np.load(tmp_path / "y.npy")
    assert probs.shape == (3, 2) and np.allclose(probs.sum(1), 1, atol=1e-5)

    proc = run_cli("summary", str(model_path))
    assert proc.returncode == 0 and "Total params" in proc.stdout


def test_presets_parameter_counts():
    logreg = cli.build_model("logreg", (28, 28, 1), 10, 0)
    assert logreg.count_params() == 7850   # the seeds' logistic regression on MNIST
    mlp = cli.build_model("mlp", (28, 28, 1), 10, 0)
    assert mlp.count_params() == 784 * 256 + 256 + 256 * 128 + 128 + 128 * 10 + 10


def test_plot_writes_png_curves_and_confusion_matrix(tmp_path):
    pytest.importorskip("matplotlib")
    curves, confusion, model_path = tmp_path / "curves.png", tmp_path / "cm.png", tmp_path / "m.rpz"
    proc = run_cli("train", "--dataset", "spirals", "--epochs", "3", "--plot", str(curves),
                   "--out", str(model_path))
    assert proc.returncode == 0, proc.stderr
    assert curves.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and curves.stat().st_size > 5000
    proc = run_cli("evaluate", str(model_path), "--dataset", "spirals", "--plot", str(confusion))
    assert proc.returncode == 0, proc.stderr
    assert confusion.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plot_without_matplotlib_is_a_clear_error(monkeypatch):
    import builtins
    real_import = builtins.__import__

    def no_matplotlib(name, *args, **kwargs):
        if name.startswith("matplotlib"):
            raise ImportError("No module named 'matplotlib'")
        return real_import(name, *args, **kwargs)
    monkeypatch.setattr(builtins, "__import__", no_matplotlib)
    with pytest.raises(cli.CLIError, match=r"pip install 'retroprop\[plot\]'"):
        cli.plot_history(None, "x.png")


def test_debug_shows_the_traceback_before_or_after_the_command():
    proc = run_cli("--debug", "summary", "absent.rpz")
    assert proc.returncode != 0
    assert "Traceback" in proc.stderr and "FileNotFoundError" in proc.stderr
    # After the command too; in-process, the exception itself propagates.
    with pytest.raises(FileNotFoundError):
        cli.main(["summary", "absent.rpz", "--debug"])


@pytest.mark.parametrize("content,message", [
    (b"this is not a model", "not a retroprop model file"),
    (None, "corrupted"),   # None: a real model file cut in half
])
def test_bad_model_files_are_one_line_errors(tmp_path, capsys, content, message):
    import retroprop as rp
    path = tmp_path / "bad.rpz"
    if content is None:
        good = tmp_path / "good.rpz"
        cli.build_model("mlp", (2,), 2, 0).save(good)
        data = good.read_bytes()
        # Keep the central directory, damage the first array's bytes.
        with __import__("zipfile").ZipFile(good) as zf:
            info = zf.getinfo("arrays/0.npy")
        start = info.header_offset + 30 + len(info.filename) + len(info.extra)
        data = data[:start] + bytes(info.compress_size) + data[start + info.compress_size:]
        path.write_bytes(data)
        with pytest.raises(ValueError):
            rp.load_model(path)
    else:
        path.write_bytes(content)
    for command in (["summary", str(path)], ["evaluate", str(path), "--dataset", "xor"],
                    ["predict", str(path), "--input", "x.npy", "--output", "y.npy"]):
        assert cli.main(command) == 2, command
        err = capsys.readouterr().err
        assert message in err and str(path) in err
        assert "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_offline_without_data_one_line_listing_the_ways(tmp_path, monkeypatch, capsys):
    from retroprop import datasets
    monkeypatch.delenv("RETROPROP_DATA", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setitem(datasets.SYSTEM_DATA_DIRS, "fashion-mnist", str(tmp_path / "none"))

    def offline(url, timeout):
        raise OSError("network is unreachable")
    monkeypatch.setattr(datasets, "_urlopen", offline)
    assert cli.main(["train", "--dataset", "fashion-mnist"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1
    for way in ("--data-dir DIR", "RETROPROP_DATA", "apt-get install dataset-fashion-mnist",
                "network is unreachable", str(tmp_path / "cache")):
        assert way in err


def test_evaluate_prints_a_consistent_confusion_matrix(tmp_path, capsys):
    model_path = tmp_path / "s.rpz"
    assert cli.main(["train", "--dataset", "spirals", "--epochs", "5", "--out",
                     str(model_path)]) == 0
    capsys.readouterr()
    assert cli.main(["evaluate", str(model_path), "--dataset", "spirals"]) == 0
    lines = capsys.readouterr().out.splitlines()
    loss, accuracy = (float(v.split()[-1]) for v in lines[0].split(","))
    assert lines[0].startswith("loss") and loss > 0
    header = lines.index("confusion matrix (rows: true class, columns: predicted):")
    matrix = np.array([[int(v) for v in row.split()[1:]] for row in lines[header + 2:]])
    assert matrix.shape == (2, 2) and matrix.sum() == 300   # the spirals test set
    assert np.trace(matrix) / matrix.sum() == pytest.approx(accuracy, abs=1e-4)


def test_predict_with_wrong_input_shape_is_a_one_line_error(tmp_path, capsys):
    model_path = tmp_path / "x.rpz"
    cli.build_model("mlp", (2,), 2, 0).save(model_path)
    np.save(tmp_path / "x.npy", np.zeros((4, 3), np.float32))
    assert cli.main(["predict", str(model_path), "--input", str(tmp_path / "x.npy"),
                     "--output", str(tmp_path / "y.npy")]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert "expects input of shape (N, 2), got (4, 3)" in err
    assert not (tmp_path / "y.npy").exists()


@pytest.mark.parametrize("schedule", ["cosine", "constant"])
def test_train_learning_rate_schedule(monkeypatch, capsys, schedule):
    import retroprop as rp
    made = []

    class SpyTrainer(rp.Trainer):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            made.append(self)
    monkeypatch.setattr(rp, "Trainer", SpyTrainer)
    # xor: 400 samples, 10% held out -> 360 / batch 16 -> 23 steps per epoch
    assert cli.main(["train", "--dataset", "xor", "--epochs", "3", "--lr", "0.2",
                     "--schedule", schedule]) == 0
    assert f"lr=0.2 ({schedule})" in capsys.readouterr().out
    optimizer = made[0].optimizer
    assert optimizer.iterations == 3 * 23
    if schedule == "constant":
        assert optimizer.lr == 0.2
    else:
        assert isinstance(optimizer.lr, rp.schedules.CosineDecay)
        assert optimizer.lr.decay_steps == 3 * 23
        assert optimizer.lr(0) == pytest.approx(0.2) and optimizer.lr(3 * 23) == 0.0


def test_training_defaults():
    assert cli.training_defaults("xor") == (100, 16)
    assert cli.training_defaults("fashion-mnist", "mlp") == (5, 128)
    assert cli.training_defaults("fashion-mnist", "lenet") == (5, 64)


def test_default_learning_rates():
    assert cli.default_lr("momentum", "mlp") == 0.05
    assert cli.default_lr("momentum", "lenet") == cli.default_lr("momentum", "cnn") == 0.02
    assert cli.default_lr("sgd", "lenet") == 0.1
    assert cli.default_lr("adam", "logreg") == 0.001
