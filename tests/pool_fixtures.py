"""Helpers shared by the pool tests (real worker processes on gloo/CPU; no GPU or second machine here)."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil

from distributed.engine.job import JobSpec
from distributed.pool import JobHandle, ProgressEvent

STANDIN_ENGINE = f"{Path(__file__).with_name('pool_standin_engine.py')}:make_engine"


def tiny_job(pipeline: Path | str, **overrides: Any) -> JobSpec:
    """A job the tiny random pipeline runs in about a second per step on one CPU core."""
    job: dict[str, Any] = {
        "model": {"base": str(pipeline), "unet": None, "dtype": "fp32"},
        "prompt": "a red ball",
        "frames": 4,
        "height": 32,
        "width": 32,
        "steps": 2,
        "cfg": 7.0,
        "sampler": "ddim",
        "seed": 0,
        "attention": {"local_window": 2, "global_frames": 4},
    }
    job.update(overrides)
    return JobSpec.from_dict(job)


def wait_for(predicate: Callable[[], bool], timeout: float, interval: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()


def first_denoising_step(handle: JobHandle, timeout: float) -> list[ProgressEvent]:
    """Waits until the job finished its first denoising step; returns the events seen so far."""
    seen: list[ProgressEvent] = []

    def stepped() -> bool:
        seen.extend(handle.poll_events())
        return any(e.phase == "denoising" for e in seen) or handle.done()

    assert wait_for(stepped, timeout), f"no denoising step within {timeout} s"
    return seen


def alive(pids: list[int]) -> list[int]:
    """The pids that still exist as live (non-zombie) processes."""
    living = []
    for pid in pids:
        try:
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                living.append(pid)
        except psutil.NoSuchProcess:
            pass
    return living
