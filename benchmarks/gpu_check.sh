#!/usr/bin/env bash
# The GPU check: CUDA-marked tests, ~60 s of full-size training + GPTQ export, tokens/s
# of flat / sliding / sliding+tilt / ttt on ~4M tokens projected to the full split on
# 8 GPUs, all in one JSON (default runs/gpu_check/gpu_check.json). <= 8 minutes on one
# H100/H200. `--dry-run`: the same on CPU at tiny sizes (CI runs it). Other flags:
# benchmarks/gpu_check.py --help.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python}"
if [[ " $* " == *" --dry-run "* ]]; then
    export OMP_NUM_THREADS=1 NUMBA_NUM_THREADS=1  # CI's shared cores
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
exec "$PYTHON" benchmarks/gpu_check.py "$@"
