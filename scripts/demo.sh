#!/usr/bin/env bash
# The README's main job: set up .venv, then run the built-in demo (synthetic phantom, no downloads).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/nearslicer demo --out "${1:-nearslicer-demo}"
