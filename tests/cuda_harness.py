"""Shared by tests/test_cuda_*.py and benchmarks/cuda_check.py: the device
backends to test and the comparison with the CPU backend.

``device_backends()`` always holds the host emulator of the CUDA backend
(``retroprop._cuda_emu``: the same C operations and kernel bodies as the
GPU, run on the CPU) and, on a machine where the GPU extension is built and
a GPU is usable, the real one. The same tests therefore run on every CI run
(emulated) and, on a GPU machine, against the GPU.

Tolerances (relative to the reference's largest magnitude, at least 1):
float64 1e-12 everywhere; float32 2e-6 for the emulator (the same GEMM and
formulas as the CPU backend, in another summation order at most) and 1e-4
for the GPU (cuBLAS's summation order and the GPU's libm, over dot products
of up to a few thousand terms).
"""
import numpy as np

from retroprop import _cuda_emu
from retroprop.backend.device import DeviceBackend

_cache = {}


def device_backends():
    """[(name, DeviceBackend)]: "emulated" always; "cuda" where it can run."""
    if "list" not in _cache:
        backends = [("emulated", DeviceBackend(_cuda_emu, "emulated"))]
        try:
            from retroprop import _cuda
        except ImportError:
            _cuda = None
        if _cuda is not None and _cuda.init()[0] == 0:
            backends.append(("cuda", DeviceBackend(_cuda, "cuda")))
        _cache["list"] = backends
    return _cache["list"]


def tolerance(backend, dtype):
    if np.dtype(dtype) == np.float64:
        return 1e-12
    return 2e-6 if backend.properties["emulated"] else 1e-4


def host(x):
    return x.to_host() if hasattr(x, "to_host") else np.asarray(x)


def assert_close(got, want, tol, what=""):
    got = host(got)
    want = np.asarray(want)
    assert got.shape == want.shape, f"{what}: shape {got.shape} != {want.shape}"
    nan_got, nan_want = np.isnan(got), np.isnan(want)
    assert np.array_equal(nan_got, nan_want), f"{what}: NaN positions differ"
    g = np.where(nan_got, 0, got).astype(np.float64)
    w = np.where(nan_want, 0, want).astype(np.float64)
    inf = np.isinf(w)
    assert np.array_equal(g[inf], w[inf]), f"{what}: infinities differ"
    g, w = np.where(inf, 0, g), np.where(inf, 0, w)
    scale = max(1.0, float(np.abs(w).max()) if w.size else 1.0)
    err = float(np.abs(g - w).max()) if w.size else 0.0
    assert err <= tol * scale, f"{what}: max error {err:.3g} > {tol:.1g} * {scale:.3g}"
    return err / scale
