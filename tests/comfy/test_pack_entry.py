"""The pack's entry point, imported the way ComfyUI imports it, stays light and V3-only."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from conftest import REPO

pytestmark = pytest.mark.comfy

PROBE = """
import importlib.util, json, sys
spec = importlib.util.spec_from_file_location("/x/custom_nodes/Some_x_Pack", sys.argv[1] + "/__init__.py")
module = importlib.util.module_from_spec(spec)
sys.modules[spec.name] = module
spec.loader.exec_module(module)
heavy = sorted(m for m in ("torch", "numpy", "diffusers", "transformers", "comfy_api") if m in sys.modules)
print(json.dumps({"heavy": heavy, "names": sorted(n for n in vars(module) if not n.startswith("__")),
                  "web": module.WEB_DIRECTORY}))
"""


def test_entry_point_imports_nothing_heavy_and_exports_only_v3():
    out = subprocess.run([sys.executable, "-c", PROBE, str(REPO)], capture_output=True, text=True, check=True)
    info = json.loads(out.stdout)
    assert info["heavy"] == []
    assert "comfy_entrypoint" in info["names"] and "NODE_CLASS_MAPPINGS" not in info["names"]
    assert (REPO / info["web"] / "js" / "pool_panel.js").is_file()
