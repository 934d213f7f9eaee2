#!/usr/bin/env bash
# One GPU check (scripts/gpu_check.py): the gpu tests, a CUDA/TensorRT LUT of a block subset and a
# small calibration, AMP supernet steps and a pairs shard on the GPU; one JSON of results.
# Hard limit: 8 minutes. Usage: bash scripts/gpu_check.sh [OUT.json]
set -uo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
[ -x "$PY" ] || PY=python3   # a lent GPU machine may carry the project without its .venv
exec timeout --signal=TERM --kill-after=10 480 "$PY" scripts/gpu_check.py "$@"
