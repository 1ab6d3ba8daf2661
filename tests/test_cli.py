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
