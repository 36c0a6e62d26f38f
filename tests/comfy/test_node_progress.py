"""The node's wait for a pool job, with ComfyUI's own progress hook: a Cancel that surfaces inside a bar update
still stops the workers before the node lets go of the pool.

The pool job is a stand-in object (the real pool is covered by the server tests); what is real here is ComfyUI's
model_management interrupt, its ProgressBar and a hook that raises as the server's does.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from conftest import REPO, comfy_host

pytestmark = pytest.mark.comfy

PROBE = """
import importlib.util, json, sys
sys.path.insert(0, sys.argv[2])
spec = importlib.util.spec_from_file_location("probe_pack", sys.argv[1] + "/__init__.py")
pack = importlib.util.module_from_spec(spec)
sys.modules[spec.name] = pack
spec.loader.exec_module(pack)
import comfy.cli_args
comfy.cli_args.args.cpu = True  # this machine has no GPU; set before model_management reads the devices
import comfy.model_management as mm
import comfy.utils
from probe_pack.nodes.progress import JobProgress, wait_for

log = []

def hook(value, total, preview, prompt_id=None, node_id=None):
    log.append(("bar", value))
    mm.throw_exception_if_processing_interrupted()  # what the server's hook does first

comfy.utils.set_progress_bar_global_hook(hook)

class Event:
    phase, step, total = "denoising", 1, 4

class Handle:
    def __init__(self):
        self.stopped = False
    def done(self):
        return self.stopped
    def poll_events(self):
        mm.interrupt_current_processing(True)  # Cancel lands after the flag check, before the bar update
        return [Event()]
    def take_preview(self):
        return None
    def cancel(self):
        log.append(("cancel",))
    def result(self, timeout=None):
        log.append(("waited", timeout is not None))
        self.stopped = True
        raise RuntimeError("cancelled")

handle = Handle()
try:
    wait_for(handle, JobProgress(4, "7", 2))
    outcome = "returned"
except mm.InterruptProcessingException:
    outcome = "interrupted"
print(json.dumps({"outcome": outcome, "log": log, "done": handle.done()}))
"""


def test_a_cancel_raised_by_the_progress_hook_stops_the_job_before_the_node_ends():
    out = subprocess.run(
        [sys.executable, "-c", PROBE, str(REPO), str(comfy_host.TREE)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    info = json.loads(out.stdout.strip().splitlines()[-1])
    assert info["outcome"] == "interrupted"
    assert ["bar", 1] in info["log"]
    assert info["log"][-2:] == [["cancel"], ["waited", True]], info["log"]
    assert info["done"]
