"""Float64 finite-difference gradient checks of the CUDA backend's backward
operations (dense, conv, max pooling, batch norm + relu, softmax
cross-entropy), through a whole small network: on the emulator on every
run, on the GPU too where one is usable (cuda_harness.device_backends)."""
import numpy as np
import pytest

from cuda_harness import device_backends
from cuda_models import CIFAR_BN, LENET5, MLP, Net, gradcheck

BACKENDS = device_backends()
SMALL_MLP = [("dense", (7, "tanh")), ("dense", (5, "sigmoid")), ("dense", (3, "linear"))]


@pytest.mark.parametrize("be", [b for _, b in BACKENDS], ids=[n for n, _ in BACKENDS])
@pytest.mark.parametrize("spec,shape,batch", [
    (SMALL_MLP, (6,), 4), (MLP[:1] + [("dense", (4, "linear"))], (9,), 3),
    (LENET5, (12, 12, 1), 2), (CIFAR_BN[:5] + [("dense", (3, "linear"))], (6, 6, 2), 3)],
    ids=["mlp-tanh-sigmoid", "mlp-relu", "lenet5", "conv-bn-relu-pool"])
def test_gradients_match_finite_differences(be, spec, shape, batch):
    rng = np.random.default_rng(0)
    net = Net(be, spec, shape, batch, np.float64, seed=1)
    x = rng.standard_normal((batch,) + shape)
    labels = rng.integers(0, 3, batch)
    assert gradcheck(net, x, labels) < 1e-5
