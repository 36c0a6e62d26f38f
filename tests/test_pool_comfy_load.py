"""Workers start when the pack is imported the way ComfyUI imports it: from custom_nodes/<Folder-With.dots>
under a module name made from the folder path, which no spawned process could import by name."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.pool, pytest.mark.timeout(240)]
REPO = Path(__file__).resolve().parents[1]

HOST_MAIN = """
import importlib, importlib.util, json, sys
from pathlib import Path

if __name__ != "__main__":
    # A spawned child that re-ran the host's main script would land here.
    Path(sys.argv[3]).write_text("the host's __main__ ran again in a worker")
    raise SystemExit(1)

pack = sys.argv[1]
name = pack.replace(".", "_x_")  # how ComfyUI names a pack module: its folder path, dots replaced
spec = importlib.util.spec_from_file_location(name, pack + "/__init__.py")
module = importlib.util.module_from_spec(spec)
sys.modules[name] = module
spec.loader.exec_module(module)
pool_api = importlib.import_module(name + ".distributed.pool")
job = {"model": {"base": sys.argv[2]}, "prompt": "a red ball", "frames": 2, "height": 32, "width": 32,
       "steps": 2, "cfg": 7.0, "sampler": "ddim", "seed": 0, "attention": {"global_frames": 2, "local_window": 1}}
pool = pool_api.shared_pool(pool_api.PoolConfig(devices="cpu:1"))
job_api = importlib.import_module(name + ".distributed.engine.job")
frames = pool.submit(job_api.JobSpec.from_dict(job)).result(180)
print(json.dumps({
    "shape": list(frames.shape),
    "plain_name_importable": importlib.util.find_spec("distributed") is not None,
    "engine_name_in_host": "video_infinity_engine" in sys.modules,
    "pool_module": pool_api.__name__,
}))
pool_api.shutdown_shared_pool()
"""


def test_workers_start_when_the_pack_is_loaded_like_comfyui_loads_it(tiny_pipeline: Path, tmp_path: Path) -> None:
    pack = tmp_path / "custom_nodes" / "Some-Pack.v1"
    shutil.copytree(REPO / "distributed", pack / "distributed", ignore=shutil.ignore_patterns("__pycache__"))
    # Stands in for the pack's real entry point (which needs ComfyUI): the loader only needs a package here.
    (pack / "__init__.py").write_text('"""pack entry point"""\n')
    host = tmp_path / "host_main.py"
    host.write_text(HOST_MAIN)
    marker = tmp_path / "main-ran-again.txt"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run(
        [sys.executable, str(host), str(pack), str(tiny_pipeline), str(marker)],
        cwd=tmp_path,  # neither the repository nor the pack root is on sys.path
        env=env,
        capture_output=True,
        text=True,
        timeout=200,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["shape"] == [2, 32, 32, 3]
    assert result["pool_module"] == str(pack).replace(".", "_x_") + ".distributed.pool"
    assert not result["plain_name_importable"], "the test must not be able to import the engine as 'distributed'"
    assert not result["engine_name_in_host"], "the worker-only module name leaked into the host process"
    assert not marker.exists(), marker.read_text() if marker.exists() else ""
