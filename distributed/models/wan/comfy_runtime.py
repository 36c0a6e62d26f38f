"""Importing ComfyUI inside a worker process: its root on sys.path, and the device chosen before it probes.

The coordinator (the ComfyUI server, or a test) names its ComfyUI root in VIDEO_INFINITY_COMFY_ROOT; spawned
workers inherit it. A CPU worker sets ComfyUI's --cpu before `comfy.model_management` is imported, because
that import probes CUDA. Nothing else of the server's command line reaches the workers.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from types import ModuleType

from ...engine.errors import ModelLoadError

COMFY_ROOT_ENV = "VIDEO_INFINITY_COMFY_ROOT"


def comfy_root_of_this_process() -> str | None:
    """The root of the ComfyUI this process runs in, if it has imported one."""
    comfy = sys.modules.get("comfy")
    if comfy is None or not getattr(comfy, "__file__", None):
        return None
    return str(Path(comfy.__file__).resolve().parent.parent)


def import_comfy(on_cpu: bool) -> ModuleType:
    """ComfyUI's `comfy` package, importable and set for this worker's device."""
    if "comfy.model_management" not in sys.modules:
        root = os.environ.get(COMFY_ROOT_ENV)
        if root and root not in sys.path:
            sys.path.insert(0, root)
        try:
            import comfy.cli_args
        except ImportError as error:
            raise ModelLoadError(
                f"this worker cannot import ComfyUI ({error}); ComfyUI models run in workers started by a ComfyUI "
                f"server, or set {COMFY_ROOT_ENV} to the ComfyUI folder"
            ) from error
        if on_cpu:
            comfy.cli_args.args.cpu = True
        import comfy.model_management  # noqa: F401 - probes the device once, as set above
    import comfy
    import comfy.clip_vision
    import comfy.k_diffusion.sampling
    import comfy.model_sampling
    import comfy.sample
    import comfy.samplers
    import comfy.sd  # noqa: F401 - the submodules the Wan family uses, reached as attributes of `comfy`

    return comfy
