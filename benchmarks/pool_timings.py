"""Worker pool timings: start, cold vs warm job, cancel latency, and how fast a killed worker is noticed.

Uses real worker processes, the real engine and the tiny random pipeline (built in a temporary folder).

    python -m benchmarks.pool_timings                   # 2 gloo/CPU workers
    python -m benchmarks.pool_timings --devices cuda:all --frames 16 --size 256
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from distributed.engine.errors import JobCancelled
from distributed.engine.job import JobSpec
from distributed.pool import JobHandle, PoolConfig, WorkerError, WorkerPool
from support.tiny_models import build_tiny_pipeline

STANDIN = f"{Path(__file__).resolve().parents[1] / 'tests' / 'pool_standin_engine.py'}:make_engine"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", default="cpu:2")
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--size", type=int, default=64, help="width and height in pixels")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--json", action="store_true", help="print the numbers as JSON too")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as folder:
        model = build_tiny_pipeline(Path(folder) / "tiny", words=["red", "ball"])
        job = JobSpec.from_dict(
            {
                "model": {"base": str(model)},
                "prompt": "a red ball",
                "frames": args.frames,
                "height": args.size,
                "width": args.size,
                "steps": args.steps,
                "cfg": 7.0,
                "sampler": "ddim",
                "seed": 0,
                "attention": {"local_window": 2, "global_frames": min(4, args.frames)},
            }
        )
        numbers = measure(PoolConfig(devices=args.devices), job)
        numbers["pool start without the engine import (stand-in engine)"] = start_only(
            PoolConfig(devices=args.devices, engine_factory=STANDIN)
        )
    width = max(len(name) for name in numbers)
    print(f"pool timings ({args.devices}, {args.frames} frames {args.size}x{args.size}, {args.steps} steps)")
    for name, value in numbers.items():
        print(f"  {name:<{width}}  {value:8.3f} s")
    if args.json:
        print(json.dumps(numbers))


def measure(config: PoolConfig, job: JobSpec) -> dict[str, float]:
    numbers: dict[str, float] = {}
    with WorkerPool(config) as pool:
        began = time.monotonic()
        pool.start()
        numbers["pool start (spawn, group, self-test)"] = time.monotonic() - began
        numbers["cold job (loads the model)"] = timed_job(pool, job)
        numbers["warm job"] = timed_job(pool, job)
        numbers["warm job, again"] = timed_job(pool, job)

        # Rank 0's live preview after each step: none, the latent frame, or the frame decoded by the VAE.
        for preview in ("none", "latent", "pixels"):
            handle = pool.submit(replace(job, steps=200), preview=preview)
            step_times = wait_denoising_steps(handle, 7)
            handle.cancel()
            try:
                handle.result(120)
            except JobCancelled:
                pass
            numbers[f"one denoising step (median), preview {preview}"] = statistics.median(step_times)
        numbers["cancel latency (request -> JobCancelled)"] = handle.finished_at - handle.cancel_requested_at

        handle = pool.submit(replace(job, steps=200))
        wait_denoising_steps(handle, 2)
        victim = pool.status()["workers"][-1]["pid"]
        os.kill(victim, signal.SIGKILL)
        killed = time.monotonic()
        try:
            handle.result(60)
        except WorkerError:
            pass
        numbers["killed worker detected (SIGKILL -> WorkerError)"] = handle.finished_at - killed

        began = time.monotonic()
        pool.submit(job).result(600)
        numbers["next job on a fresh pool (start + load + run)"] = time.monotonic() - began
    return numbers


def start_only(config: PoolConfig) -> float:
    with WorkerPool(config) as pool:
        began = time.monotonic()
        pool.start()
        return time.monotonic() - began


def timed_job(pool: WorkerPool, job: JobSpec) -> float:
    began = time.monotonic()
    pool.submit(job).result(600)
    return time.monotonic() - began


def wait_denoising_steps(handle: JobHandle, count: int) -> list[float]:
    """Waits for `count` denoising steps; returns the time between consecutive steps."""
    stamps: list[float] = []
    while len(stamps) < count:
        stamps += [e.time for e in handle.poll_events() if e.phase == "denoising"]
        time.sleep(0.01)
    return [b - a for a, b in zip(stamps, stamps[1:], strict=False)] or [0.0]


if __name__ == "__main__":
    main()
