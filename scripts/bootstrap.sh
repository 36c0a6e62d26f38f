#!/usr/bin/env bash
# Sets up everything the demo and the tests need, from nothing: .venv (pinned torch pair), the
# embedded ComfyUI host under .host/, and Debian's Chromium for the browser tests.
# Safe to run again (fast when done).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3.11}"
quiet() { grep -v "^WARNING: Location" || true; }
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip 2>&1 | quiet
.venv/bin/python -m pip install -q -c constraints.txt -r requirements-dev.txt 2>&1 | quiet
.venv/bin/python -c "import torch, torchvision, diffusers, transformers" \
  || { echo "bootstrap: the Python environment is incomplete" >&2; exit 1; }
.venv/bin/python scripts/comfy_host.py install
if [ "${SKIP_BROWSER:-0}" != "1" ] && [ ! -x /usr/bin/chromium ]; then
  if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
  else
    echo "bootstrap: install Debian's chromium (apt-get install chromium) for the browser tests" >&2
  fi
fi
