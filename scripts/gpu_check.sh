#!/usr/bin/env bash
# The GPU check: one command that writes OUT_DIR/gpu_check.md and gpu_check.json (see benchmarks/gpu_check.py).
#   bash scripts/gpu_check.sh OUT_DIR          on a CUDA machine (about 8 minutes on one H100/H200)
#   bash scripts/gpu_check.sh OUT_DIR --cpu    anywhere: the CPU part, CUDA rows marked "not available"
# On a machine without this repository's .venv (a GPU machine with its own torch), it uses python3 and
# installs what that Python lacks from the wheels in .gpu-wheels/ (made here by scripts/gpu_wheels.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${1:?give the folder for the report}"
shift
if [ -x .venv/bin/python ]; then
  PY=.venv/bin/python
else
  PY="${PYTHON:-python3}"
  if ! "$PY" -c "import diffusers" 2>/dev/null; then
    [ -d .gpu-wheels ] || { echo "gpu_check: $PY has no diffusers and .gpu-wheels/ is missing (run scripts/gpu_wheels.sh)" >&2; exit 2; }
    "$PY" -m pip install -q --no-index --no-deps --find-links .gpu-wheels --target .gpu-site .gpu-wheels/*.whl
    export PYTHONPATH=".gpu-site${PYTHONPATH:+:$PYTHONPATH}"
  fi
fi
exec "$PY" -m benchmarks.gpu_check --out "$OUT" "$@"
