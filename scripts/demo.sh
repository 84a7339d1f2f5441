#!/usr/bin/env bash
# The README's main job: set up .venv, then run the built-in demo (synthetic phantom, no downloads).
#   bash scripts/demo.sh          -> nearslicer-demo/ (the demo's own folder: a second run replaces its files)
#   bash scripts/demo.sh DIR ...  -> DIR (relative to where you are), never overwritten unless --overwrite follows
set -euo pipefail
out=""
if [ $# -gt 0 ]; then
  case "$1" in /*) out="$1" ;; *) out="$PWD/$1" ;; esac
fi
cd "$(dirname "$0")/.."
bash scripts/setup.sh
if [ -z "$out" ]; then
  .venv/bin/nearslicer demo --out nearslicer-demo --overwrite
else
  .venv/bin/nearslicer demo --out "$out" "${@:2}"
fi
