#!/usr/bin/env bash
# The GPU path, measured: dlforge train on one GPU in 32, bf16-mixed and 16-mixed; DDP over every GPU when there
# are several; a 4-trial sweep at resources_per_trial.gpu=0.5; ONNX Runtime's CUDA provider on the compressed
# teacher when present; one table against the same job on CPU. A few minutes on one GPU.
#
# Usage: scripts/gpu_check.sh [EPOCHS]   (default 5; writes under ${GPU_CHECK_DIR:-/tmp/dlforge-gpu-check})
# Where there is no GPU it prints one line and exits 0.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-.venv/bin/python}"
[ -x "$PY" ] || PY=python3

if ! command -v nvidia-smi >/dev/null 2>&1 || ! nvidia-smi -L >/dev/null 2>&1; then
    echo "gpu_check: skipped — no NVIDIA GPU on this machine (nvidia-smi finds none)"
    exit 0
fi
if ! "$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
    echo "gpu_check: skipped — a GPU is present but this torch has no CUDA (install a CUDA wheel: see the Makefile's TORCH)"
    exit 0
fi
exec "$PY" scripts/gpu_check.py "${1:-5}"
