#!/usr/bin/env bash
# Device check for a machine with an NVIDIA GPU: the gpu-marked tests, the host-compiled kernel
# tests for comparison, every CUDA kernel against the NumPy reference, the GPU frame path and the STPG training step timed; one JSON of results.
# No network, under 8 minutes; see tools/gpu_check.py. Usage: tools/gpu_check.sh [--out FILE]
set -euo pipefail
cd "$(dirname "$0")/.."
python="${PYTHON:-}"
if [[ -z "$python" ]]; then
    if [[ -x .venv/bin/python ]]; then python=.venv/bin/python; else python=python3; fi
fi
exec "$python" -m tools.gpu_check "$@"
