#!/usr/bin/env bash
# Creates .venv with the engine, its CLI and test tools. torch is pinned to 2.13.0 (the
# CPU wheel available here; on a CUDA machine install the matching CUDA build first).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip >/dev/null 2>&1 || true
.venv/bin/python -m pip install -q "torch==2.13.0"
# ray: the optional extra of nearslicer batch --ray, installed here so its tests run (CI too)
.venv/bin/python -m pip install -q -e ".[test,slicer,ray]"
