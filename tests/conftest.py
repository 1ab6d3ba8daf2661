"""Shared fixtures for the Python-level tests.

``backend`` and ``rng`` are not backend-specific: those tests run against
whatever ``retroprop.backend.get_backend()`` returns (the C backend by
default, the NumPy reference with RETROPROP_BACKEND=numpy). ``simd`` and
``threads`` set how the C backend runs: each test using them runs once per
instruction set (AVX2+FMA and the portable C) or per thread count.
"""
import numpy as np
import pytest

from retroprop.backend import cpu, get_backend


@pytest.fixture
def backend():
    """The backend module the library uses in this test run."""
    return get_backend()


@pytest.fixture
def rng():
    """A fresh, seeded random generator per test."""
    return np.random.default_rng(1234)


@pytest.fixture(params=["avx2+fma", "generic"])
def simd(request):
    """The C backend's kernels forced to one instruction set for the test."""
    if request.param != "generic" and cpu.backend_info()["simd_best"] == "generic":
        pytest.skip("this CPU has no AVX2+FMA; the generic path is tested")
    previous = cpu.backend_info()["simd"]
    cpu.set_simd(request.param)
    yield request.param
    cpu.set_simd(previous)


@pytest.fixture(params=[1, 2])
def threads(request):
    """The C backend's thread count for the test."""
    previous = cpu.get_num_threads()
    cpu.set_num_threads(request.param)
    yield request.param
    cpu.set_num_threads(previous)
