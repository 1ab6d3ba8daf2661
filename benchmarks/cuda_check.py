"""Everything the CUDA backend promises, checked on a machine with a GPU, in
one command (under 8 minutes on an H100/H200-class GPU):

    python benchmarks/cuda_check.py            # after a CUDA build, docs/CUDA.md

1. every op x dtype x awkward shape against the CPU backend
   (tests/test_cuda_ops.py on the GPU: float32 to 1e-4, float64 to 1e-12,
   relative to the reference's largest magnitude);
2. float64 finite-difference gradient checks on the GPU
   (tests/test_cuda_gradcheck.py: relative error < 1e-5);
3. a one-epoch MLP, LeNet-5 and BN-CNN whose weights match the CPU
   backend's (tests/test_cuda_training.py: float32 to 1e-3, float64 to
   1e-10, relative to each tensor's largest |w|), plus the same MLP and
   LeNet-5 on 2048 Fashion-MNIST images when the data set is installed;
4. the training step's time against PyTorch CUDA in the same run, same
   models and batch sizes: the README MLP (784-256-128-10) at batch 32 and
   128, LeNet-5 at 128, the CIFAR-sized CNN with batch norm at 128 and 512
   (ratio = retroprop / PyTorch; <= 1.0 is the goal).

Nothing is built here: it needs the CUDA extension installed
(pip install -Ccmake.define.RETROPROP_CUDA=ON .). The end-to-end parts
drive the backend's operations directly (tests/cuda_models.py), since the
Layer/Model API's device support is separate work. Exit status 0 when every
check passed.
"""
import argparse
import os
import subprocess
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(ROOT, "tests"))

from retroprop.backend import get_backend  # noqa: E402


def _section(title):
    print(f"\n=== {title} ===", flush=True)


def run_tests():
    """Parts 1-3 on the GPU: the test files' "cuda" parameters (skipping the
    emulator's, which CI runs)."""
    files = ["tests/test_cuda_ops.py", "tests/test_cuda_gradcheck.py",
             "tests/test_cuda_training.py", "tests/test_cuda_backend.py"]
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-k",
           "not emulated"] + files
    print(" ".join(cmd), flush=True)
    start = time.perf_counter()
    rc = subprocess.call(cmd, cwd=ROOT)
    print(f"(tests: {time.perf_counter() - start:.0f} s, exit {rc})")
    return rc == 0


def fashion_mnist_parity(cuda, cpu, images=2048):
    """One epoch on real images, GPU vs CPU, float32."""
    from cuda_models import LENET5, MLP, Net, train_epoch
    try:
        import retroprop as rp
        (x, y), _ = rp.datasets.load_fashion_mnist()
    except Exception as exc:      # the data set is optional here
        print(f"Fashion-MNIST not available ({exc}); skipped")
        return True
    x = (x[:images].astype(np.float32) / 255.0)
    y = y[:images].astype(np.int64)
    ok = True
    for name, spec, shape in (("MLP", MLP, (784,)), ("LeNet-5", LENET5, (28, 28, 1))):
        xs = x.reshape((-1,) + shape)
        ref, dev = Net(cpu, spec, shape, 64), Net(cuda, spec, shape, 64)
        ref_loss, dev_loss = train_epoch(ref, xs, y), train_epoch(dev, xs, y)
        worst = max(np.abs(a - b).max() / max(1.0, np.abs(a).max())
                    for a, b in zip(ref.weights(), dev.weights()))
        passed = worst <= 1e-3
        ok &= passed
        print(f"{name:8s} epoch loss cpu {ref_loss:.6f} gpu {dev_loss:.6f}; weights' largest "
              f"relative difference {worst:.2e} (tolerance 1e-3): {'ok' if passed else 'FAIL'}")
    return ok


def epilogues(cuda):
    """Which dense forwards the cuBLASLt epilogues took (the others ran the
    GEMM + fused kernel; both are checked against the CPU in part 1)."""
    rng = np.random.default_rng(0)
    for dtype in (np.float32, np.float64):
        x = cuda.to_device(rng.random((128, 256)).astype(dtype))
        w = cuda.to_device(rng.random((256, 64)).astype(dtype))
        b = cuda.to_device(rng.random(64).astype(dtype))
        row = []
        for act in ("linear", "relu", "gelu"):
            _, fused = cuda.dense_forward_fused(x, w, b, act)
            row.append(f"{act}+bias: {'epilogue' if fused else 'GEMM + kernel'}")
        _, mask = cuda.dense_forward_relu_mask(x, w, b)
        row.append(f"relu mask (RELU_AUX_BIAS/DRELU_BGRAD): {'yes' if mask is not None else 'no'}")
        print(f"{np.dtype(dtype).name}: " + "; ".join(row))
    print("last cuBLASLt note:", cuda.driver.error() if hasattr(cuda.driver, "error") else "-")


def _time(fn, sync, steps, warmup=5):
    for _ in range(warmup):
        fn()
    sync()
    start = time.perf_counter()
    for _ in range(steps):
        fn()
    sync()
    return (time.perf_counter() - start) / steps


def _torch_model(torch, name):
    nn = torch.nn
    if name == "MLP":
        return nn.Sequential(nn.Flatten(), nn.Linear(784, 256), nn.ReLU(), nn.Linear(256, 128),
                             nn.ReLU(), nn.Linear(128, 10))
    if name == "LeNet-5":
        return nn.Sequential(nn.Conv2d(1, 6, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
                             nn.Conv2d(6, 16, 5), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                             nn.Linear(16 * 5 * 5, 120), nn.ReLU(), nn.Linear(120, 84), nn.ReLU(),
                             nn.Linear(84, 10))
    layers, c = [], 3
    for filters in (32, 32, None, 64, 64, None):
        if filters is None:
            layers.append(nn.MaxPool2d(2))
            continue
        layers += [nn.Conv2d(c, filters, 3, padding=1), nn.BatchNorm2d(filters, eps=1e-3),
                   nn.ReLU()]
        c = filters
    return nn.Sequential(*layers, nn.Flatten(), nn.Linear(64 * 8 * 8, 10))


def speed(cuda, steps, quick=False):
    from cuda_models import CIFAR_BN, LENET5, MLP, Net
    try:
        import torch
    except ImportError:
        print("PyTorch is not installed: no comparison")
        return
    has_cuda = torch.cuda.is_available()
    if not has_cuda:
        print("PyTorch has no CUDA here (a CPU build?): retroprop's times only")
    if has_cuda:
        torch.backends.cuda.matmul.allow_tf32 = False      # float32 on both sides
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cudnn.benchmark = True
        print(f"GPU: {torch.cuda.get_device_name(0)}; PyTorch {torch.__version__}, "
              f"cuDNN {torch.backends.cudnn.version()}")
    print(f"{'model':10s} {'batch':>5s} {'retroprop ms':>13s} {'torch ms':>9s} {'ratio':>6s}")
    cases = [("MLP", MLP, (784,), 32), ("MLP", MLP, (784,), 128),
             ("LeNet-5", LENET5, (28, 28, 1), 128),
             ("CIFAR-BN", CIFAR_BN, (32, 32, 3), 128), ("CIFAR-BN", CIFAR_BN, (32, 32, 3), 512)]
    if quick:
        cases = cases[:3]
    rng = np.random.default_rng(0)
    for name, spec, shape, batch in cases:
        x = rng.random((batch,) + shape).astype(np.float32)
        y = rng.integers(0, 10, batch)
        net = Net(cuda, spec, shape, batch)
        xd, yd = cuda.to_device(x), cuda.to_device(y.astype(np.int64))
        rp_step = _time(lambda: net.step(xd, yd), cuda.synchronize, steps,
                        warmup=5 if has_cuda else 1)
        if not has_cuda:
            print(f"{name:10s} {batch:5d} {rp_step * 1e3:13.3f} {'-':>9s} {'-':>6s}", flush=True)
            continue

        model = _torch_model(torch, name).cuda()
        opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        loss_fn = torch.nn.CrossEntropyLoss()
        xt = torch.from_numpy(x).cuda()
        if len(shape) == 3:
            xt = xt.permute(0, 3, 1, 2).contiguous()
        yt = torch.from_numpy(y).cuda()

        def torch_step():
            opt.zero_grad(set_to_none=True)
            loss_fn(model(xt), yt).backward()
            opt.step()
        torch_time = _time(torch_step, torch.cuda.synchronize, steps)
        print(f"{name:10s} {batch:5d} {rp_step * 1e3:13.3f} {torch_time * 1e3:9.3f} "
              f"{rp_step / torch_time:6.2f}", flush=True)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=50, help="timed steps per speed case")
    parser.add_argument("--skip-tests", action="store_true", help="only the speed comparison")
    parser.add_argument("--emulated", action="store_true",
                        help="a dry run of this script on the host emulator (no GPU needed): "
                             "parts 3b and 4 only, on 256 images and a few steps")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    if args.emulated:
        from retroprop import _cuda_emu
        from retroprop.backend.device import DeviceBackend
        cuda = DeviceBackend(_cuda_emu, "emulated")
        epilogues(cuda)
        fashion_mnist_parity(cuda, get_backend("cpu"), images=256)
        speed(cuda, steps=2, quick=True)
        return 0
    try:
        cuda = get_backend("cuda").device_backend
    except RuntimeError as exc:
        print(f"cuda_check: {exc}")
        return 2
    cpu = get_backend("cpu")
    _section("device")
    for key, value in cuda.backend_info().items():
        print(f"{key:20s} {value}")
    ok = True
    _section("cuBLASLt epilogues in use")
    epilogues(cuda)
    if not args.skip_tests:
        _section("1-3: ops x dtypes x shapes, float64 gradient checks, one-epoch parity (pytest)")
        ok &= run_tests()
        _section("3b: one epoch on Fashion-MNIST, GPU vs CPU")
        ok &= fashion_mnist_parity(cuda, cpu)
    _section("4: training step time vs PyTorch CUDA")
    speed(cuda, args.steps)
    _section("summary")
    print(f"{'all checks passed' if ok else 'SOME CHECKS FAILED'} "
          f"({time.perf_counter() - start:.0f} s)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
