"""A whole epoch of the README MLP, LeNet-5 and a CNN with batch norm,
trained on the CUDA backend's operations, ends with the CPU backend's
weights (tests/cuda_models.py drives both the same way).

Through the host emulator on every run; on the GPU too where one is usable.
Tolerance on the final weights, relative to the largest |w| of each tensor:
float64 1e-10; float32 1e-4 (emulator) / 1e-3 (GPU: cuBLAS sums in another
order, and an epoch compounds it).
"""
import numpy as np
import pytest

from retroprop.backend import get_backend

from cuda_harness import device_backends
from cuda_models import CIFAR_BN, LENET5, MLP, Net, train_epoch

cpu = get_backend("cpu")
BACKENDS = device_backends()


def _weights_tolerance(backend, dtype):
    if np.dtype(dtype) == np.float64:
        return 1e-10
    return 1e-4 if backend.properties["emulated"] else 1e-3


def _compare(be, spec, input_shape, n, batch, dtype, classes=10):
    rng = np.random.default_rng(0)
    x = rng.random((n,) + input_shape).astype(dtype)
    y = rng.integers(0, classes, n)
    ref = Net(cpu, spec, input_shape, batch, dtype)
    dev = Net(be, spec, input_shape, batch, dtype)
    ref_loss = train_epoch(ref, x, y)
    dev_loss = train_epoch(dev, x, y)
    tol = _weights_tolerance(be, dtype)
    assert abs(ref_loss - dev_loss) <= tol * max(1.0, abs(ref_loss))
    for i, (a, b) in enumerate(zip(ref.weights(), dev.weights())):
        err = np.abs(a - b).max() / max(1.0, np.abs(a).max())
        assert err <= tol, f"parameter {i}: relative error {err:.3g} > {tol}"
    # and training moved the weights
    assert any(np.abs(w - w0).max() > 0 for w, w0 in
               zip(dev.weights(), Net(cpu, spec, input_shape, batch, dtype).weights()))


@pytest.mark.parametrize("be", [b for _, b in BACKENDS], ids=[n for n, _ in BACKENDS])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_mlp_epoch_matches_cpu(be, dtype):
    _compare(be, MLP, (784,), n=192, batch=32, dtype=dtype)


@pytest.mark.parametrize("be", [b for _, b in BACKENDS], ids=[n for n, _ in BACKENDS])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_lenet5_epoch_matches_cpu(be, dtype):
    _compare(be, LENET5, (28, 28, 1), n=48, batch=16, dtype=dtype)


@pytest.mark.parametrize("be", [b for _, b in BACKENDS], ids=[n for n, _ in BACKENDS])
def test_cnn_with_batch_norm_epoch_matches_cpu(be):
    _compare(be, CIFAR_BN, (12, 12, 3), n=16, batch=8, dtype=np.float64)
