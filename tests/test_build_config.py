"""RETROPROP_SIMD at import, and what a build without OpenMP says (issue 25, packaging)."""
import os
import subprocess
import sys
import warnings

import pytest

import retroprop as rp
from retroprop.backend import cpu


def python_with_env(code, **env):
    full = dict(os.environ, **env)
    return subprocess.run([sys.executable, "-W", "always", "-c", code], capture_output=True,
                          text=True, env=full, timeout=120)


def test_retroprop_simd_generic_is_applied_at_import():
    proc = python_with_env("import retroprop as rp; print(rp.backend_info()['simd'])",
                           RETROPROP_SIMD="generic")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "generic"


def test_retroprop_simd_avx2_or_a_warning():
    proc = python_with_env("import retroprop as rp; i = rp.backend_info(); "
                           "print(i['simd'], i['simd_best'])", RETROPROP_SIMD="avx2")
    assert proc.returncode == 0, proc.stderr
    in_use, best = proc.stdout.split()
    assert in_use == best
    if best == "generic":
        assert "this CPU lacks it" in proc.stderr
    else:
        assert in_use == "avx2+fma" and proc.stderr == ""


def test_retroprop_simd_bad_value_warns_and_keeps_the_best():
    proc = python_with_env("import retroprop as rp; i = rp.backend_info(); "
                           "print(i['simd'] == i['simd_best'])", RETROPROP_SIMD="avx512")
    assert proc.returncode == 0 and proc.stdout.strip() == "True"
    assert "RETROPROP_SIMD='avx512' is not one of generic, avx2, avx2+fma" in proc.stderr


def test_build_config_is_recorded():
    from retroprop import _build_config
    assert _build_config.OPENMP in ("on", "off", "missing")
    assert (_build_config.OPENMP == "on") == rp.backend_info()["openmp"]


def test_missing_openmp_warns_at_import(monkeypatch):
    from retroprop import _build_config
    monkeypatch.setattr(_build_config, "OPENMP", "missing")
    monkeypatch.delenv("RETROPROP_SIMD", raising=False)
    with pytest.warns(RuntimeWarning, match="built without OpenMP.*RETROPROP_OPENMP=OFF"):
        cpu._apply_environment()
    monkeypatch.setattr(_build_config, "OPENMP", "off")      # asked for: no warning
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        cpu._apply_environment()


def test_set_num_threads_warns_once_without_openmp(monkeypatch):
    before = rp.get_num_threads()
    monkeypatch.setattr(cpu._core, "have_openmp", lambda: False)
    monkeypatch.setitem(cpu._warned, "threads", False)
    try:
        with pytest.warns(RuntimeWarning, match=r"set_num_threads\(2\): .*without OpenMP"):
            rp.set_num_threads(2)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            rp.set_num_threads(3)          # once only
            rp.set_num_threads(1)
    finally:
        rp.set_num_threads(before)
