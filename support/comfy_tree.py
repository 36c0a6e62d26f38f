"""Which ComfyUI tree the tests, the demo and the benchmarks run: the embedded one (`.host/comfyui`, installed
by scripts/comfy_host.py), or another ComfyUI folder named in VIDEO_INFINITY_TEST_COMFYUI, to check the pack
against that version (its requirements must already be importable)."""

from __future__ import annotations

import os
from pathlib import Path

OTHER_TREE_ENV = "VIDEO_INFINITY_TEST_COMFYUI"
EMBEDDED_TREE = Path(__file__).resolve().parents[1] / ".host" / "comfyui"


def comfy_tree() -> Path:
    other = os.environ.get(OTHER_TREE_ENV)
    return Path(other).resolve() if other else EMBEDDED_TREE
