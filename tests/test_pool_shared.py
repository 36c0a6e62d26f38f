"""The process-wide pool the nodes use: reused while the config is equal, replaced (old workers ended) otherwise.
Uses the stand-in engine: what is tested is the pool's lifetime, not generation."""

from __future__ import annotations

import os

import numpy as np
import pytest

from distributed.engine.job import JobSpec
from distributed.pool import PoolConfig, current_shared_pool, shared_pool, shutdown_shared_pool
from tests.pool_fixtures import STANDIN_ENGINE, alive, wait_for

pytestmark = [pytest.mark.pool, pytest.mark.timeout(120)]


def job(frames: int = 2) -> JobSpec:
    return JobSpec.from_dict({"model": {"base": "stand-in"}, "prompt": "a red ball", "frames": frames, "height": 16, "width": 16,
            "steps": 2, "seed": 5, "attention": {"global_frames": 1, "local_window": 1}})  # fmt: skip


def test_equal_config_reuses_the_warm_pool_and_a_new_config_replaces_it() -> None:
    first_config = PoolConfig(devices="cpu:1", engine_factory=STANDIN_ENGINE)
    first = shared_pool(first_config)
    frames = first.submit(job()).result(60)
    assert np.array_equal(frames[:, 0, 0, 0], [5, 6])  # frame t is filled with seed + t
    pids = first.worker_pids()

    assert shared_pool(PoolConfig(devices="cpu:1", engine_factory=STANDIN_ENGINE)) is first
    assert first.worker_pids() == pids and first.status()["state"] == "ready"

    second = shared_pool(PoolConfig(devices="cpu:2", engine_factory=STANDIN_ENGINE))
    assert second is not first and current_shared_pool() is second
    assert first.status()["state"] == "closed"
    assert wait_for(lambda: not alive(pids), 5), "the replaced pool's workers are still running"
    assert second.submit(job(4)).result(60).shape == (4, 16, 16, 3)
    new_pids = second.worker_pids()

    shutdown_shared_pool()
    assert current_shared_pool() is None
    assert wait_for(lambda: not alive(new_pids), 5)


def test_store_folders_of_dead_coordinators_are_removed() -> None:
    import subprocess
    import sys
    import tempfile
    from pathlib import Path

    from distributed.pool.session import STORE_DIR_PREFIX, remove_stale_store_dirs

    finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead = Path(tempfile.mkdtemp(prefix=f"{STORE_DIR_PREFIX}{finished.stdout.strip()}-"))
    alive_owner = Path(tempfile.mkdtemp(prefix=f"{STORE_DIR_PREFIX}{os.getppid()}-"))
    try:
        removed = remove_stale_store_dirs()
        assert str(dead) in removed and not dead.exists()
        assert alive_owner.exists()
    finally:
        alive_owner.rmdir()
