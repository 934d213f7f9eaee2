#!/usr/bin/env bash
# Set up (if needed) and run the whole SCAN-Edge reproduction on the embedded default
# (smoke profile, CPU). Extra arguments go to `scan-edge reproduce`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export DVC_NO_ANALYTICS=1
exec .venv/bin/scan-edge reproduce --profile smoke "$@"
