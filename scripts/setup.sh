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
# Headless Chromium for the HTML review report tests (Testing/Python/test_review_report.py): installed
# when missing and this runs as root where apt-get exists (NEARSLICER_NO_APT=1 skips this); otherwise
# those tests skip and say why.
if [ -z "${NEARSLICER_NO_APT:-}" ] && [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1 \
   && ! command -v chromium >/dev/null 2>&1 && ! command -v chromium-browser >/dev/null 2>&1; then
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium) >/dev/null 2>&1 \
    || echo "setup: could not install chromium; the browser tests of the review report will skip" >&2
fi
