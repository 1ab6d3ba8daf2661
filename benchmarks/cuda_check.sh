#!/usr/bin/env bash
# On a machine with an NVIDIA GPU, nvcc and network access to PyPI: build
# retroprop with the CUDA extension into a fresh virtual environment and run
# benchmarks/cuda_check.py (docs/CUDA.md). One command:
#     bash benchmarks/cuda_check.sh
# CUDA_ARCH overrides the GPU architectures (default 90: H100/H200; e.g.
# "80" for an A100, "89" for an L4/RTX 40xx). The PyTorch comparison needs a
# CUDA build of torch in that environment (TORCH_SPEC, default "torch").
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${VENV:-/tmp/retroprop-cuda-venv}"
python3 -m venv "$venv"
# shellcheck disable=SC1091
. "$venv/bin/activate"
pip install -q --upgrade pip
pip install -q nvidia-cublas==13.0.2.14 nvidia-cuda-runtime==13.0.96 cython numpy \
    "scikit-build-core>=0.10" pytest scikit-learn "${TORCH_SPEC:-torch}"
pip install -q --no-build-isolation -Ccmake.define.RETROPROP_CUDA=ON \
    -Ccmake.define.RETROPROP_CUDA_ARCHITECTURES="${CUDA_ARCH:-90}" .
python benchmarks/cuda_check.py "$@"
