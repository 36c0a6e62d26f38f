#!/usr/bin/env bash
# The demo command: sets up everything from nothing, starts the embedded ComfyUI with the pack,
# queues the example workflow through the API queue, shows progress and prints the mp4's path.
# Extra arguments go to scripts/demo.py (e.g. --frames 64 --prompt "...").
set -euo pipefail
cd "$(dirname "$0")/.."
SKIP_BROWSER=1 bash scripts/bootstrap.sh
exec .venv/bin/python scripts/demo.py "$@"
