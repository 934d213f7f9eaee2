#!/usr/bin/env bash
# Create/refresh the project's virtualenv (.venv) — idempotent, called by the other scripts.
#
# torch/torchvision come from PyPI through uv: uv ignores pip's find-links folder, whose CPU
# torch wheel breaks torchvision's ops on these machines (see README "Installation notes").
# requirements.lock pins every package, so every fresh install is the same.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "[setup] creating .venv with $($PY --version)"
  $PY -m venv .venv
fi
if [ ! -x .venv/bin/uv ]; then
  .venv/bin/python -m pip install -q --disable-pip-version-check "uv>=0.5"
fi
stamp=.venv/.scan-edge-installed
want=$(cat pyproject.toml $(ls requirements.lock 2>/dev/null) | sha256sum | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  echo "[setup] installing dependencies (uv; ~1 minute the first time)"
  if [ -f requirements.lock ]; then
    .venv/bin/uv pip sync -q --python .venv/bin/python requirements.lock
  fi
  .venv/bin/uv pip install -q --python .venv/bin/python -e ".[dev]"
  echo "$want" > "$stamp"
fi
