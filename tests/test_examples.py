"""Every script in examples/ runs, in its fast mode (--quick), and prints the
numbers the course (and docs/course/) says it does.

Each example's ``main(argv)`` returns its key numbers, asserted here. One
thread: on a busy shared machine the OpenMP spin-waits of two threads can
slow these small models down many times, and results do not depend on the
thread count. The long runs (full Fashion-MNIST) are in the ``slow`` tests
at the end: ``python -m pytest -m slow tests/test_examples.py``.
"""
import importlib.util
import os
import subprocess
import sys

import numpy as np
import pytest

import retroprop as rp

EXAMPLES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples")


def load(name):
    spec = importlib.util.spec_from_file_location(f"example_{name}",
                                                  os.path.join(EXAMPLES, f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(autouse=True)
def one_thread():
    previous = rp.get_num_threads()
    rp.set_num_threads(1)
    yield
    rp.set_num_threads(previous)


def run(name, tmp_path, *extra):
    return load(name).main(["--quick", *extra])


def test_neuron(tmp_path):
    pytest.importorskip("matplotlib")
    r = run("neuron", tmp_path, "--out", str(tmp_path))
    assert r["sigmoid_prime_1"] == pytest.approx(0.19661193, abs=1e-7)
    # a = 10 is nearly the Heaviside unit, a = 0.1 nearly flat at 0.5.
    np.testing.assert_array_equal(r["heaviside"], [0, 0, 0, 1, 1, 1])
    assert np.max(np.abs(r["outputs"][10.0] - r["heaviside"])[[0, 1, 5]]) < 1e-4
    assert np.all(np.abs(r["outputs"][0.1] - 0.5) < 0.06)
    assert r["outputs"][1.0][3] == 0.5
    np.testing.assert_allclose(r["d_tanh"][2], 1.0)
    np.testing.assert_allclose(r["d_sigmoid"][2], 0.25)
    assert os.path.getsize(r["png"]) > 10000


def test_xor(tmp_path):
    r = run("xor", tmp_path)
    assert np.all(np.abs(r["logreg_pred"] - 0.5) < 0.01)
    assert r["logreg_loss"] == pytest.approx(np.log(2), abs=1e-3)
    assert r["mlp_accuracy"] == 1.0 and r["mlp_loss"] < 0.05
    np.testing.assert_array_equal(r["hand"], [0, 1, 1, 0])
    np.testing.assert_array_equal(r["pulse"], [0, 0, 1, 1, 1, 0, 0])
    errors = r["staircase_errors"]
    assert errors[500] < errors[100] < errors[20] < errors[5]
    assert 500 * errors[500] == pytest.approx(2 * np.pi, rel=0.05)   # max slope / n


def test_backprop_by_hand(tmp_path):
    r = run("backprop_by_hand", tmp_path)
    assert r["net221_max_diff"] < 1e-15
    assert r["net221_delta2"] == pytest.approx(0.138499, abs=1e-6)
    assert r["scalar_grad_diff"] < 1e-15
    np.testing.assert_array_equal(np.round(r["before"], 2), [0.51, 0.68])
    np.testing.assert_array_equal(np.round(r["after"], 2), [0.99, 0.01])
    assert r["train_diff"] < 1e-12


def test_losses(tmp_path):
    r = run("losses", tmp_path)
    assert r["hinge"] == pytest.approx(3.5)
    np.testing.assert_allclose(r["softmax"], [0.558, 0.414, 0.028], atol=5e-4)
    assert r["cross_entropy_0.8"] == pytest.approx(0.2231, abs=1e-4)
    assert r["grad_vs_formula"] < 1e-15 and r["grad_vs_numeric"] < 1e-8
    assert r["hinge_final_loss"] == 0.0 and r["hinge_norm_change_after_zero"] == 0.0
    assert r["ce_final_loss"] > 0 and r["ce_norm_growth"] > 0.01
    assert r["digits_categorical_crossentropy"] > r["digits_mse"] + 0.3


def test_gradient_descent(tmp_path):
    r = run("gradient_descent", tmp_path)
    for lr in (0.01, 0.05, 0.09):
        assert r[f"gd_{lr}"].converged and r[f"gd_{lr}"].grad_norm <= 1e-6
    assert r["gd_0.01"].steps > r["gd_0.05"].steps > r["gd_0.09"].steps
    f = r["diverging_f"]
    assert f[40] > 1e6 * f[0]
    curves = r["batch_curves"]
    # After one epoch online learning is far ahead of full batch.
    assert curves["online (batch 1)"][1] < 0.1 < 5 < curves["full batch 512"][1]
    assert r["schedule 0.1 e^(-0.1t)"][3] == pytest.approx(0.1 * np.exp(-1.0))
    assert r["schedule 0.1 * 0.5^floor(t/10)"] == pytest.approx(
        [0.1, 0.1, 0.1, 0.05, 0.025, 0.0125])
    assert r["schedule 1/(1+kt): 0.1/(1+0.1t)"][3] == pytest.approx(0.05)


def test_vanishing_gradients(tmp_path):
    r = run("vanishing_gradients", tmp_path)
    rec = r["records"]
    small, big, glorot = rec["tanh, N(0, 0.01)"], rec["tanh, N(0, 1)"], rec["tanh, Glorot"]
    # N(0, 0.01^2): activations shrink ~10x per layer; dL/dh too, going down.
    assert small[9]["act_std"] < 1e-6 * small[0]["act_std"]
    assert small[0]["out_grad_std"] < 1e-6 * small[9]["out_grad_std"]
    # N(0, 1): saturated at +-1.
    assert all(s["act_std"] > 0.9 for s in big[:10])
    assert r["saturated tanh, N(0, 1)"] > 0.5 and r["saturated tanh, Glorot"] < 0.05
    # Glorot keeps dL/dh within a factor ~3 over the ten layers.
    grads = [s["out_grad_std"] for s in glorot[:10]]
    assert max(grads) / min(grads) < 4
    sig = rec["sigmoid, Glorot"]
    assert sig[0]["out_grad_std"] < 1e-4 * sig[9]["out_grad_std"]
    relu = rec["ReLU, He"]
    assert max(s["out_grad_std"] for s in relu[:10]) / min(s["out_grad_std"]
                                                          for s in relu[:10]) < 2
    assert all("out_grad_hist" in s for s in glorot)
    if "train ReLU, He" in r:      # Fashion-MNIST installed
        assert r["train sigmoid, Glorot"] < 0.2 < 0.5 < r["train ReLU, He"]


def test_initialization(tmp_path):
    r = run("initialization", tmp_path)
    assert r["zeros distinct"] == 1 and r["glorot_uniform distinct"] == 16
    assert r["glorot_uniform accuracy"] > r["zeros accuracy"] + 0.3
    assert abs(r["logreg zeros"] - r["logreg glorot_uniform"]) < 0.05
    assert r["init Glorot uniform"] > 0.85 and r["init N(0, 10)"] < 0.6
    assert r["init N(0, 0.001)"] < r["init N(0, 0.1)"]


def test_regularization(tmp_path):
    r = run("regularization", tmp_path)
    plain, l1, l2 = r["no regularization"], r["L1 1e-4"], r["L2 1e-3"]
    assert plain["train_acc"] == 1.0 and plain["val_acc"] < 0.99
    assert l2["mean_abs_w"] < 0.8 * plain["mean_abs_w"]
    assert l1["small_w"] > 10 * plain["small_w"] and l1["small_w"] > l2["small_w"]
    assert r["dropout 0.5"]["train_acc"] < plain["train_acc"]
    assert r["pruned_sparsity"] == pytest.approx(0.9, abs=1e-3)
    assert r["pruned to 90% sparsity"]["val_acc"] > 0.85
    assert r["mc_std_wrong"] > r["mc_std_right"]
    assert abs(r["mc_acc"] - r["plain_acc"]) < 0.03
    assert r["early stopping (patience 10)"]["val_acc"] > 0.9


@pytest.mark.skipif(not os.path.isdir("/usr/share/datasets/fashion-mnist"),
                    reason="Fashion-MNIST (Debian package dataset-fashion-mnist) not installed")
def test_fashion_mnist_quick(tmp_path):
    r = run("fashion_mnist", tmp_path)
    assert r["params"] == 7850
    assert r["logreg_test_accuracy"] > 0.6
    assert abs(r["mlp original pixels"] - r["mlp shuffled pixels"]) < 0.03
    assert r["mlp original pixels"] > 0.75


def test_rnn_exploding_gradients(tmp_path):
    r = run("rnn_exploding_gradients", tmp_path)
    small, big = r["through_time g=0.5"], r["through_time g=2.0"]
    assert small[0] < 1e-8 * small[-1]           # vanishes going back in time
    assert big[0] > 1e3 * big[-1]                 # explodes
    lstm = r["through_time lstm"]
    assert lstm.max() / lstm.min() < 100           # the cell carries it through
    free, clipped = r["no clipping"], r["clipnorm=1.0"]
    assert free["max_grad_norm"] > 50 and clipped["max_grad_norm"] < 3
    assert clipped["loss"][-1] < 0.5 * free["loss"][-1]
    assert all(b < a + 1e-9 for a, b in zip(clipped["loss"][3:], clipped["loss"][4:]))


def test_a_script_runs_from_the_command_line(tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    out = subprocess.run([sys.executable, os.path.join(EXAMPLES, "backprop_by_hand.py"),
                          "--quick"], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "predictions before: [0.51, 0.68]" in out.stdout
    assert "after, retroprop:   [0.99, 0.01]" in out.stdout


# -- the long runs (deselected by default; see setup.cfg) --------------------------------

@pytest.mark.slow
@pytest.mark.skipif(not os.path.isdir("/usr/share/datasets/fashion-mnist"),
                    reason="Fashion-MNIST (Debian package dataset-fashion-mnist) not installed")
def test_fashion_mnist_full_run(tmp_path):
    """The course's run: logistic regression, batch 128, 20 epochs, full split;
    and the MLP on original vs shuffled pixels, 10 epochs each."""
    r = load("fashion_mnist").main([])
    assert r["params"] == 7850
    assert r["logreg_test_accuracy"] > 0.82          # 0.836 in docs/course/fashion_mnist.md
    assert r["mlp original pixels"] > 0.86           # 0.878
    assert abs(r["mlp original pixels"] - r["mlp shuffled pixels"]) < 0.015   # 0.878 vs 0.883
