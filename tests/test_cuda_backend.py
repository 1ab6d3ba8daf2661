"""Choosing the CUDA backend: where it can run it reports the GPU; where it
cannot (this CI: no GPU, no driver, a CPU-only build), importing retroprop
still works and asking for it raises one clear error saying why.

RETROPROP_CUDA_EXTENSION (set by .ci/cuda-build) names a GPU extension
built in a separate directory: the test then loads it as retroprop._cuda and
checks that it imports without a driver and reports the reason.
"""
import os
import subprocess
import sys

import pytest

import retroprop
from retroprop.backend import get_backend

REASONS = ("built without CUDA", "no CUDA driver", "no CUDA device", "driver too old",
           "CUDA unavailable", "failed to load")


def _cuda_usable():
    try:
        get_backend("cuda")
    except RuntimeError:
        return False
    return True


def test_backend_info_reports_cuda_or_why_not():
    info = retroprop.backend_info()
    if _cuda_usable():
        assert info["cuda"] is True
        gpu = info["cuda_device"]
        assert gpu["backend"] == "cuda" and gpu["device"] and gpu["cublas"]
        assert gpu["compute_capability"] != "0.0"
    else:
        assert info["cuda"] is False
        assert any(reason in info["cuda_note"] for reason in REASONS), info["cuda_note"]


def test_asking_for_cuda_raises_one_clear_error_when_it_cannot_run():
    if _cuda_usable():
        assert get_backend("cuda").backend_info()["cuda"] is True
        return
    with pytest.raises(RuntimeError, match="the CUDA backend is not available") as excinfo:
        get_backend("cuda")
    assert type(excinfo.value).__name__ == "CudaUnavailableError"
    assert any(reason in str(excinfo.value) for reason in REASONS)
    # the CPU backend is untouched
    assert get_backend("cpu").backend_info()["backend"] == "cpu"


def test_environment_variable_selects_cuda():
    code = ("import retroprop\n"
            "from retroprop.backend import get_backend\n"
            "try:\n"
            "    b = get_backend()\n"
            "    print('OK', b.__name__)\n"
            "except RuntimeError as e:\n"
            "    print('ERR', e)\n")
    env = dict(os.environ, RETROPROP_BACKEND="cuda")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         check=True).stdout
    if _cuda_usable():
        assert out.startswith("OK retroprop.backend.cuda")
    else:
        assert out.startswith("ERR the CUDA backend is not available")


def test_gpu_extension_imports_without_a_driver():
    """The GPU extension itself (when CI built one) loads without a driver and
    says what is missing; in a CPU-only build, the error says so instead."""
    path = os.environ.get("RETROPROP_CUDA_EXTENSION")
    if not path:
        if not _cuda_usable():
            with pytest.raises(RuntimeError) as excinfo:
                get_backend("cuda")
            assert any(r in str(excinfo.value) for r in REASONS)
        else:
            assert get_backend("cuda").backend_info()["cuda"]
        return
    code = (
        "import importlib.util, sys\n"
        f"spec = importlib.util.spec_from_file_location('retroprop._cuda', {path!r})\n"
        "mod = importlib.util.module_from_spec(spec)\n"
        "spec.loader.exec_module(mod)\n"
        "sys.modules['retroprop._cuda'] = mod\n"
        "import retroprop\n"
        "retroprop._cuda = mod\n"
        "status, message = mod.init()\n"
        "print(status, message)\n"
        "from retroprop.backend import get_backend\n"
        "try:\n"
        "    get_backend('cuda'); print('OPENED')\n"
        "except RuntimeError as e:\n"
        "    print('ERR', e)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.splitlines()
    status = int(out[0].split()[0])
    if status == 0:
        assert out[1] == "OPENED"
    else:
        assert status == 2, out            # RP_DEV_UNAVAILABLE
        assert out[1].startswith("ERR the CUDA backend is not available")
        assert any(r in out[1] for r in REASONS), out


def test_a_model_asking_for_cuda_gets_the_same_error():
    if _cuda_usable():
        # the backend is chosen; the layers' device support is separate work (docs/CUDA.md)
        model = retroprop.Sequential([retroprop.layers.Dense(3)], input_shape=(4,),
                                     backend="cuda")
        assert model.backend.__name__ == "retroprop.backend.cuda"
        return
    with pytest.raises(RuntimeError, match="the CUDA backend is not available"):
        retroprop.Sequential([retroprop.layers.Dense(3)], input_shape=(4,), backend="cuda")
