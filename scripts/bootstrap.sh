#!/usr/bin/env bash
# Creates .venv with everything the demo and the tests need. Safe to run again (fast when done).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3.11}"
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip 2>&1 | grep -v "^WARNING: Location" || true
.venv/bin/python -m pip install -q -c constraints.txt -r requirements-dev.txt 2>&1 | grep -v "^WARNING: Location" || true
.venv/bin/python -c "import torch, torchvision, diffusers, transformers" || { echo "bootstrap: the Python environment is incomplete" >&2; exit 1; }
