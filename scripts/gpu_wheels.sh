#!/usr/bin/env bash
# Wheels the GPU machine's Python lacks (it has torch and transformers, but not diffusers), downloaded here
# into .gpu-wheels/ so that they can travel with the working tree to a machine that reaches no registry.
set -euo pipefail
cd "$(dirname "$0")/.."
DIFFUSERS="$(.venv/bin/python -c 'import diffusers; print(diffusers.__version__)')"
.venv/bin/python -m pip download -q --no-deps -d .gpu-wheels "diffusers==$DIFFUSERS" importlib_metadata torchsde trampoline
ls -1 .gpu-wheels
