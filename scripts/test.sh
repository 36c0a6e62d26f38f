#!/usr/bin/env bash
# The test command: sets up everything it needs from nothing, then runs the suite (slow tests: --run-slow).
# Extra arguments go to pytest (e.g. -m "not browser").
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
.venv/bin/ruff check .
.venv/bin/ruff format --check .
exec .venv/bin/python -m pytest "$@"
