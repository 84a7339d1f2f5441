#!/usr/bin/env bash
# The test command of the README and of CI: set up .venv, then run the test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2} QT_QPA_PLATFORM=offscreen MPLBACKEND=Agg
.venv/bin/python -m pytest -q -m "not slow" "$@"
