"""The command line's options (issue 25): checks before training, every optimizer and
schedule, checkpoints and resuming, predict's inputs, export, plots, exit codes."""
import csv
import json
import os
import stat

import numpy as np
import pytest

import retroprop as rp
from retroprop import cli


def run(argv, capsys):
    status = cli.main([str(a) for a in argv])
    out = capsys.readouterr()
    return status, out.out, out.err


def test_version(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.strip() == f"retroprop {rp.__version__}"


def test_help_shows_defaults_and_threads(capsys):
    with pytest.raises(SystemExit):
        cli.main(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for shown in ("(default: fashion-mnist)", "(default: mlp)", "(default: 0.1)",
                  "(default: 0)", "(default: momentum)", "(default: cosine)",
                  "threads of the C kernels (default: OMP_NUM_THREADS, else all cores)",
                  "0.001 adam, adamw, rmsprop, 0.01 adagrad"):
        assert shown in text, shown


@pytest.mark.parametrize("option,path,message", [
    ("--out", "missing/m.rpz", "directory .*missing does not exist"),
    ("--out", ".", "is a directory"),
    ("--json", "nowhere/h.json", "does not exist"),
    ("--csv", "nowhere/log.csv", "does not exist"),
    ("--checkpoint", "nowhere/c.rpz", "does not exist"),
    ("--plot", "curves.gif", "unsupported format '.gif'"),
    ("--plot", "nowhere/curves", "does not exist"),
])
def test_output_paths_are_checked_before_training(option, path, message, tmp_path, monkeypatch,
                                                  capsys):
    monkeypatch.chdir(tmp_path)
    status, out, err = run(["train", "--dataset", "xor", "--epochs", "1", option, path], capsys)
    assert status == 2
    assert out == ""                  # no header: nothing was trained
    assert len(err.strip().splitlines()) == 1
    assert __import__("re").search(message, err), err


def hide_matplotlib(monkeypatch):
    import builtins
    real_import = builtins.__import__

    def no_matplotlib(name, *args, **kwargs):
        if name.startswith("matplotlib"):
            raise ImportError("No module named 'matplotlib'")
        return real_import(name, *args, **kwargs)
    monkeypatch.setattr(builtins, "__import__", no_matplotlib)


def test_plot_without_matplotlib_fails_before_training(monkeypatch, tmp_path, capsys):
    hide_matplotlib(monkeypatch)
    status, out, err = run(["train", "--dataset", "xor", "--plot", tmp_path / "c.png",
                            "--out", tmp_path / "m.rpz"], capsys)
    assert status == 2 and out == ""
    assert "pip install 'retroprop[plot]'" in err
    assert not (tmp_path / "m.rpz").exists()


def test_header_counts_samples_after_the_split(capsys):
    status, out, _ = run(["train", "--dataset", "xor", "--epochs", "1", "--val-split", "0.25"],
                         capsys)
    assert status == 0
    assert "xor: 300 train + 100 validation / 200 test" in out


def spy_trainers(monkeypatch):
    made = []

    class SpyTrainer(rp.Trainer):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            made.append(self)
    monkeypatch.setattr(rp, "Trainer", SpyTrainer)
    return made


@pytest.mark.parametrize("name", cli.OPTIMIZERS)
def test_every_optimizer_trains(name, monkeypatch, capsys):
    made = spy_trainers(monkeypatch)
    status, out, err = run(["train", "--dataset", "xor", "--epochs", "2", "--optimizer", name,
                            "--schedule", "constant"], capsys)
    assert status == 0, err
    optimizer = made[0].optimizer
    expected = {"sgd": (rp.optim.SGD, 0.0), "momentum": (rp.optim.SGD, 0.9),
                "nesterov": (rp.optim.SGD, 0.9)}.get(name)
    if expected:
        assert type(optimizer) is expected[0] and optimizer.momentum == expected[1]
        assert optimizer.nesterov == (name == "nesterov")
    else:
        assert type(optimizer).__name__.lower() == name
    assert optimizer.lr == cli.default_lr(name, "mlp")


def test_every_library_optimizer_and_schedule_has_a_cli_name():
    from retroprop import optim, schedules
    reached = {type(cli.make_optimizer(name, 0.1)) for name in cli.OPTIMIZERS}
    assert set(optim._REGISTRY.values()) <= reached
    assert set(cli.SCHEDULE_CLASSES.values()) == set(schedules._REGISTRY)
    for name, cls in cli.SCHEDULE_CLASSES.items():
        assert type(cli.make_schedule(name, 0.1, 100)).__name__ == cls


@pytest.mark.parametrize("name,end", [("constant", 0.2), ("cosine", 0.0), ("exponential", 0.002),
                                      ("inverse-time", 0.02), ("step", 0.002)])
def test_every_schedule(name, end, monkeypatch, capsys):
    made = spy_trainers(monkeypatch)
    # xor: 360 training samples / batch 16 -> 23 steps an epoch, 69 in all
    status, out, err = run(["train", "--dataset", "xor", "--epochs", "3", "--lr", "0.2",
                            "--schedule", name], capsys)
    assert status == 0, err
    assert f"lr=0.2 ({name})" in out
    lr = made[0].optimizer.lr
    if name == "constant":
        assert lr == 0.2
    else:
        assert lr(0) == pytest.approx(0.2)
        # the rate used by the last step (t = 68), or reached at the end (t = 69)
        assert min(abs(lr(68) - end), abs(lr(69) - end)) < 1e-9 + 0.05 * end


def test_checkpoint_and_resume_continue_bit_for_bit(tmp_path, monkeypatch, capsys):
    """A 6-epoch run interrupted after epoch 3 and resumed from its checkpoint ends with
    the weights of the uninterrupted run (the cosine schedule continues where it was)."""
    straight, resumed, ckpt = tmp_path / "a.rpz", tmp_path / "b.rpz", tmp_path / "ckpt.rpz"
    common = ["train", "--dataset", "spirals", "--batch-size", "32", "--epochs", "6"]
    assert run(common + ["--lr", "0.05", "--out", straight], capsys)[0] == 0

    save = cli.CheckpointEveryEpoch.on_epoch_end

    def interrupt_after_epoch_3(self, epoch, logs=None):
        save(self, epoch, logs)
        if epoch + 1 == 3:
            raise KeyboardInterrupt
    monkeypatch.setattr(cli.CheckpointEveryEpoch, "on_epoch_end", interrupt_after_epoch_3)
    assert run(common + ["--lr", "0.05", "--checkpoint", ckpt], capsys)[0] == 130
    monkeypatch.setattr(cli.CheckpointEveryEpoch, "on_epoch_end", save)

    status, out, err = run(common + ["--resume", ckpt, "--out", resumed], capsys)
    assert status == 0, err
    assert f"resumed from {ckpt} at epoch 3" in out
    a, b = rp.load_model(straight), rp.load_model(resumed)
    for wa, wb in zip(a.get_weights(), b.get_weights()):
        np.testing.assert_array_equal(wa, wb)


def test_resume_errors(tmp_path, capsys):
    plain, ckpt = tmp_path / "plain.rpz", tmp_path / "ckpt.rpz"
    run(["train", "--dataset", "xor", "--epochs", "1", "--out", plain, "--checkpoint", ckpt],
        capsys)
    cases = [
        (["--resume", plain, "--epochs", "3"], "not a checkpoint"),
        (["--resume", ckpt, "--epochs", "3", "--lr", "0.1"], "drop --lr"),
        (["--resume", ckpt, "--epochs", "1"], "give more than that"),
        (["--resume", ckpt, "--epochs", "3", "--dataset", "spirals"], "trained on xor"),
        (["--resume", tmp_path / "absent.rpz"], "not found"),
    ]
    for extra, message in cases:
        argv = ["train", "--dataset", "xor"] + extra if "--dataset" not in extra \
            else ["train"] + extra
        status, _, err = run(argv, capsys)
        assert status == 2 and message in err, (extra, err)


def test_early_stopping_and_csv_and_json(tmp_path, monkeypatch, capsys):
    made = spy_trainers(monkeypatch)
    log, history = tmp_path / "log.csv", tmp_path / "h.json"
    status, out, err = run(["train", "--dataset", "spirals", "--epochs", "40", "--lr", "2.0",
                            "--schedule", "constant", "--optimizer", "sgd",
                            "--early-stopping", "2", "--csv", log, "--json", history], capsys)
    assert status == 0, err
    stopper = [cb for cb in made[0].callbacks if isinstance(cb, rp.callbacks.EarlyStopping)][0]
    assert stopper.patience == 2 and stopper.restore_best_weights
    with open(log) as f:
        rows = list(csv.reader(f))
    epochs_run = len(json.loads(history.read_text())["history"]["loss"])
    assert rows[0][:2] == ["epoch", "accuracy"] and len(rows) == 1 + epochs_run
    assert epochs_run < 40 and stopper.stopped_epoch is not None
    status, _, err = run(["train", "--dataset", "xor", "--early-stopping", "2",
                          "--val-split", "0"], capsys)
    assert status == 2 and "--val-split > 0" in err


def test_quiet_prints_only_the_result(tmp_path, capsys):
    status, out, _ = run(["train", "--dataset", "xor", "--epochs", "2", "--quiet",
                          "--out", tmp_path / "m.rpz"], capsys)
    assert status == 0
    assert out.strip().splitlines() == [out.strip()] and out.startswith("test loss")


def test_saved_model_follows_the_umask(tmp_path, capsys):
    old = os.umask(0o027)
    try:
        assert run(["train", "--dataset", "xor", "--epochs", "1", "--out", tmp_path / "m.rpz"],
                   capsys)[0] == 0
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(tmp_path / "m.rpz").st_mode) == 0o640


# ---------------------------------------------------------------- predict

@pytest.fixture(scope="module")
def digits_model(tmp_path_factory):
    pytest.importorskip("sklearn")
    path = tmp_path_factory.mktemp("digits") / "digits.rpz"
    assert cli.main(["train", "--dataset", "digits", "--model", "cnn", "--epochs", "1",
                     "--quiet", "--out", str(path)]) == 0
    (_, _), (x, _) = rp.datasets.load_digits()
    return path, x[:20]


def predict(model, input_path, tmp_path, capsys, *extra):
    out = tmp_path / "p.npy"
    status, _, err = run(["predict", model, "--input", input_path, "--output", out, *extra],
                         capsys)
    return status, (np.load(out) if status == 0 else None), err


def test_predict_input_formats(digits_model, tmp_path, capsys):
    path, x = digits_model
    expected = rp.load_model(path).predict(x)
    np.save(tmp_path / "x.npy", x)
    np.savez(tmp_path / "x.npz", images=x, labels=np.arange(len(x)))
    np.savez(tmp_path / "one.npz", x[:, :, :, 0])                   # (N, 8, 8): no channel axis
    np.savetxt(tmp_path / "x.csv", x.reshape(len(x), -1), delimiter=",",
               header=",".join(f"p{i}" for i in range(64)), comments="")
    raw = np.rint(x * 16).astype(np.uint8)                          # digits pixels are 0..16
    np.save(tmp_path / "raw.npy", raw)
    for name, extra in [("x.npy", ()), ("x.npz", ("--key", "images")), ("one.npz", ()),
                        ("x.csv", ()), ("raw.npy", ())]:
        status, probs, err = predict(path, tmp_path / name, tmp_path, capsys, *extra)
        assert status == 0, (name, err)
        np.testing.assert_allclose(probs, expected, rtol=1e-5, atol=1e-6, err_msg=name)


def test_predict_refusals(digits_model, tmp_path, capsys):
    path, x = digits_model
    np.savez(tmp_path / "two.npz", a=x, b=x)
    bad = x.copy()
    bad[3, 2, 1, 0] = np.nan
    np.save(tmp_path / "nan.npy", bad)
    np.save(tmp_path / "shape.npy", x[:, :7])
    cases = [("two.npz", (), "holds 2 arrays (a, b); choose one with --key"),
             ("two.npz", ("--key", "c"), "has no array 'c'"),
             ("nan.npy", (), "contains nan at index (3, 2, 1, 0)"),
             ("shape.npy", (), "expects input of shape (N, 8, 8, 1), got (20, 7, 8, 1)"),
             ("absent.npy", (), "no such file")]
    for name, extra, message in cases:
        status, _, err = predict(path, tmp_path / name, tmp_path, capsys, *extra)
        assert status == 2 and message in err, (name, err)
        assert not (tmp_path / "p.npy").exists()


def test_integer_input_without_recorded_scaling_is_refused(tmp_path, capsys):
    model_path = tmp_path / "xor.rpz"
    assert run(["train", "--dataset", "xor", "--epochs", "1", "--out", model_path], capsys)[0] == 0
    np.save(tmp_path / "x.npy", np.array([[0, 1], [1, 1]], dtype=np.uint8))
    status, _, err = predict(model_path, tmp_path / "x.npy", tmp_path, capsys)
    assert status == 2 and "does not record how its training inputs were scaled" in err


# ---------------------------------------------------------------- export

def test_export_runs_in_onnxruntime(digits_model, tmp_path, capsys):
    ort = pytest.importorskip("onnxruntime")
    path, x = digits_model
    status, out, err = run(["export", path, tmp_path / "m.onnx"], capsys)
    assert status == 0, err
    assert "ONNX opset 17" in out
    session = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(session.run(None, {"input": x})[0],
                               rp.load_model(path).predict(x), atol=1e-5)


def test_missing_optional_package_exits_2(digits_model, tmp_path, monkeypatch, capsys):
    pytest.importorskip("onnx")
    from retroprop.interop import onnx as rp_onnx
    monkeypatch.setattr(rp_onnx, "onnx", None)
    status, _, err = run(["export", digits_model[0], tmp_path / "m.onnx"], capsys)
    assert status == 2 and "pip install 'retroprop[onnx]'" in err
    hide_matplotlib(monkeypatch)
    status, _, err = run(["evaluate", digits_model[0], "--dataset", "digits", "--plot",
                          tmp_path / "cm"], capsys)
    assert status == 2 and "pip install 'retroprop[plot]'" in err


# ---------------------------------------------------------------- plots

@pytest.fixture
def captured_figures(monkeypatch):
    plt = pytest.importorskip("matplotlib.pyplot")
    figures = []
    real_close = plt.close

    def keep(fig=None):
        figures.append(fig)
        real_close(fig)
    monkeypatch.setattr(plt, "close", keep)
    return figures


def test_training_plot_title_labels_integer_ticks(tmp_path, capsys, captured_figures):
    status, out, _ = run(["train", "--dataset", "spirals", "--epochs", "3",
                          "--plot", tmp_path / "curves"], capsys)
    assert status == 0
    assert f"wrote training curves to {tmp_path / 'curves.png'}" in out
    assert (tmp_path / "curves.png").read_bytes()[:4] == b"\x89PNG"
    fig = captured_figures[-1]
    assert fig._suptitle.get_text() == "mlp on spirals"
    loss_ax, acc_ax = fig.axes
    assert (loss_ax.get_ylabel(), acc_ax.get_ylabel()) == ("loss", "accuracy")
    for ax in fig.axes:
        ticks = [t for t in ax.get_xticks() if 1 <= t <= 3]
        assert ticks and all(float(t).is_integer() for t in ticks)
        assert sorted(ax.get_legend_handles_labels()[1]) == ["training", "validation"]


def test_confusion_matrix_names_every_fashion_class(tmp_path, capsys, captured_figures):
    try:
        rp.datasets.load_fashion_mnist(download=False)
    except Exception as e:
        pytest.skip(f"Fashion-MNIST not available ({e})")
    model_path = tmp_path / "f.rpz"
    assert run(["train", "--model", "logreg", "--epochs", "1", "--quiet", "--out", model_path],
               capsys)[0] == 0
    status, out, _ = run(["evaluate", model_path, "--plot", tmp_path / "cm.png"], capsys)
    assert status == 0
    for name in cli.FASHION_MNIST_CLASSES:
        assert name in out
    ax = captured_figures[-1].axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == list(cli.FASHION_MNIST_CLASSES)
    assert [t.get_text() for t in ax.get_yticklabels()] == list(cli.FASHION_MNIST_CLASSES)
    assert ax.get_xlabel() == "predicted class" and ax.get_ylabel() == "true class"
    assert "on fashion-mnist" in ax.get_title()
    meta = rp.load_model(model_path, return_optimizer=True)[2]
    assert meta["class_names"] == list(cli.FASHION_MNIST_CLASSES)
    assert meta["input_scaling"] == {"integer_inputs_divided_by": 255.0}
