"""One pool per process for the ComfyUI nodes: reused while its config is unchanged."""

from __future__ import annotations

import atexit
import threading

from .balance import ShareBalancer
from .config import PoolConfig
from .pool import WorkerPool

_lock = threading.Lock()
_pool: WorkerPool | None = None
_balancers: dict[tuple[tuple[str, ...], int], ShareBalancer] = {}  # by (local devices, remote workers)


def shared_pool(config: PoolConfig | None = None) -> WorkerPool:
    """The process-wide pool for `config`: the warm one when its config is equal (it adopts the settings that
    need no restart, such as keep_warm), else a new one (the old one is shut down first, so two pools never
    hold the same GPUs). Validates the config; starts lazily."""
    global _pool
    config = config or PoolConfig()
    with _lock:
        if _pool is not None and _pool.config == config and _pool.status()["state"] != "closed":
            _pool.config = config
            return _pool
        if _pool is not None:
            _pool.shutdown()
            _pool = None
        _pool = WorkerPool(config)
        # Speeds learnt on these devices carry over to the new pool (a pool not kept warm is a new one each job).
        _pool.balancer = _balancers.setdefault((tuple(_pool.devices), config.remote_workers), _pool.balancer)
        return _pool


def current_shared_pool() -> WorkerPool | None:
    return _pool


def shutdown_shared_pool() -> None:
    global _pool
    with _lock:
        if _pool is not None:
            _pool.shutdown()
            _pool = None


atexit.register(shutdown_shared_pool)
