#!/usr/bin/env bash
# The GPU benchmark in one command on a fresh machine with an NVIDIA GPU and its driver, Python
# 3.11 and PyPI: installs bittune with TensorFlow's CUDA wheels into a venv of its own, then
# measures R50x1 at 480 px (bfloat16, XLA; batch 64 and 128) and the input pipeline's ceiling,
# and writes the "GPU" section of BENCHMARKS.md (or the file given).
#   bash benchmarks/gpu.sh [BENCHMARKS.md]
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${BITTUNE_GPU_VENV:-/tmp/bittune-gpu}"
python3.11 -m venv "$venv"
"$venv/bin/pip" install -q -c constraints.txt -e . 'tensorflow[and-cuda]==2.21.*'
"$venv/bin/python" -m benchmarks.gpu_benchmark --batch 64 128 --output "${1:-BENCHMARKS.md}"
