"""The pack's handle on the engine's shared worker pool: start it on demand, report and stop it.

The engine is imported late so that loading the pack (and ComfyUI's start) stays fast.
"""

from __future__ import annotations

import gc
import os
from typing import Any

from .values import PoolChoice


def get_pool(choice: PoolChoice):
    """The shared pool for this choice: the warm one while the devices stay the same, else a fresh one."""
    from ..distributed.engine.choices import TOKEN_ENV
    from ..distributed.models.wan.comfy_runtime import COMFY_ROOT_ENV, comfy_root_of_this_process
    from ..distributed.pool import PoolConfig, shared_pool

    # Workers started from here import this ComfyUI when a job runs one of its models.
    os.environ.setdefault(COMFY_ROOT_ENV, comfy_root_of_this_process() or "")
    remote = {}
    if choice.remote_workers:
        host, port = choice.join_endpoint()
        token = os.environ.get(TOKEN_ENV)
        remote = {"remote_workers": choice.remote_workers, "host": host, "join_port": port, "token": token}
    config = PoolConfig(
        devices=choice.devices, collective_timeout_s=choice.timeout_s, keep_warm=choice.keep_warm, **remote
    )
    config.local_devices()  # resolves "auto" and checks the devices before anything starts
    return shared_pool(config)


def release_if_cold(pool) -> None:
    """After a job: stop the workers unless the pool's choice is to keep them warm."""
    if not pool.config.keep_warm:
        unload()


def unload() -> dict[str, Any]:
    """Stops the workers (they free their GPU memory as they exit) and empties ComfyUI's own caches."""
    from ..distributed.pool import current_shared_pool, shutdown_shared_pool

    pool = current_shared_pool()
    was_running = pool is not None and pool.status()["state"] not in ("stopped", "closed")
    shutdown_shared_pool()
    gc.collect()
    try:
        import comfy.model_management as mm

        mm.soft_empty_cache()
    except Exception:  # noqa: BLE001 - freeing memory is best effort outside a ComfyUI process
        pass
    return {"stopped": was_running}


def status() -> dict[str, Any]:
    """JSON-able pool state for the web panel; never starts a pool."""
    from ..distributed.pool import current_shared_pool

    pool = current_shared_pool()
    info: dict[str, Any] = {"state": "stopped", "workers": [], "devices": []}
    if pool is not None:
        try:
            info.update(pool.status())
        except Exception as error:  # noqa: BLE001 - the panel shows what went wrong instead of failing
            info.update(state="error", error=str(error))
    info["machine"] = machine_memory()
    return info


def machine_memory() -> dict[str, Any]:
    import psutil

    memory = psutil.virtual_memory()
    result: dict[str, Any] = {"ram_total": memory.total, "ram_available": memory.available, "gpus": []}
    try:
        import torch

        if torch.cuda.is_available():
            for index in range(torch.cuda.device_count()):
                free, total = torch.cuda.mem_get_info(index)
                result["gpus"].append(
                    {"device": f"cuda:{index}", "name": torch.cuda.get_device_name(index), "free": free, "total": total}
                )
    except Exception:  # noqa: BLE001 - memory figures are informative only
        pass
    return result
