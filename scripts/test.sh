#!/usr/bin/env bash
# Set up (if needed) and run the default test suite (no GPU, no slow tests).
# Extra arguments go to pytest, e.g. `bash scripts/test.sh -m slow`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export DVC_NO_ANALYTICS=1
exec .venv/bin/python -m pytest "$@"
