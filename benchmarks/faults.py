"""Fault table: for each injected fault, how long until the job ends, with what error, and whether the pool stays warm.

Real worker processes on gloo/CPU: the tiny random pipeline (built in a temporary folder) for model and
cancel cases, the tests' stand-in engine where a worker must hang, never finish a step, or eat memory.

    python -m benchmarks.faults            # about 2 minutes on 2 CPU cores
"""

from __future__ import annotations

import os
import shutil
import signal
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from distributed.engine.host_memory import available_bytes
from distributed.engine.job import JobSpec
from distributed.pool import JobHandle, PoolConfig, WorkerPool
from support.tiny_models import build_tiny_pipeline

STANDIN = f"{Path(__file__).resolve().parents[1] / 'tests' / 'pool_standin_engine.py'}:make_engine"


@dataclass
class Row:
    case: str
    seconds: float | None  # from the fault (or the Cancel) to the job's end
    error: str
    warm: bool  # the same worker processes serve the next job


def job(model: str, **changes: Any) -> JobSpec:
    spec: dict[str, Any] = {
        "model": {"base": model},
        "prompt": "a red ball",
        "frames": 4,
        "height": 32,
        "width": 32,
        "steps": 3,
        "sampler": "ddim",
        "attention": {"local_window": 2, "global_frames": 2},
    }
    spec.update(changes)
    return JobSpec.from_dict(spec)


def first_step(handle: JobHandle, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not handle.done():
        if handle.latest is not None and handle.latest.phase == "denoising":
            return
        time.sleep(0.02)


def run_case(
    name: str, pool: WorkerPool, submit: Callable[[], JobHandle], fault: Callable[[JobHandle], float], good: JobSpec
) -> Row:
    """Submits, injects the fault (which returns when it acted), waits for the end, then runs a good job."""
    pool.start()
    pids = pool.worker_pids()
    handle = submit()
    acted = fault(handle)
    error = ""
    try:
        handle.result(120)
    except Exception as failure:  # noqa: BLE001 - the error text is what the table shows
        error = f"{type(failure).__name__}: {failure}"
    seconds = handle.finished_at - acted if handle.finished_at is not None else None
    pool.submit(good).result(180)
    return Row(name, seconds, error, pool.worker_pids() == pids)


def at_once(handle: JobHandle) -> float:
    return time.monotonic()


def cancel_at_step(handle: JobHandle) -> float:
    first_step(handle)
    handle.cancel()
    return time.monotonic()


def cancel_in_phase(phase: str) -> Callable[[JobHandle], float]:
    def fault(handle: JobHandle) -> float:
        while not handle.done() and (handle.latest is None or handle.latest.phase != phase):
            time.sleep(0.01)
        handle.cancel()
        return time.monotonic()

    return fault


def cancel_after(seconds: float) -> Callable[[JobHandle], float]:
    def fault(handle: JobHandle) -> float:
        time.sleep(seconds)
        handle.cancel()
        return time.monotonic()

    return fault


def signal_rank(pool: WorkerPool, rank: int, sig: signal.Signals) -> Callable[[JobHandle], float]:
    def fault(handle: JobHandle) -> float:
        first_step(handle)
        os.kill(pool.worker_pids()[rank], sig)
        return time.monotonic()

    return fault


def model_cases(model: Path, folder: Path) -> list[Row]:
    truncated = Path(shutil.copytree(model, folder / "truncated"))
    weights = truncated / "unet" / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-1000])
    pickled = Path(shutil.copytree(model, folder / "pickled"))
    from safetensors.torch import load_file

    unet = pickled / "unet"
    torch.save(load_file(str(unet / "diffusion_pytorch_model.safetensors")), unet / "diffusion_pytorch_model.bin")
    (unet / "diffusion_pytorch_model.safetensors").unlink()
    good = job(str(model))
    rows = []
    with WorkerPool(PoolConfig(devices="cpu:2")) as pool:
        pool.submit(good).result(180)  # warm: the model is loaded
        for name, bad in (("truncated UNet weights", truncated), ("UNet weights as a pickle (.bin)", pickled)):
            rows.append(run_case(name, pool, lambda bad=bad: pool.submit(job(str(bad))), at_once, good))
        rows.append(run_case("a job too large for the memory (admission)", pool,
                             lambda: pool.submit(job(str(model), frames=100_000, height=64, width=64)), at_once,
                             good))  # fmt: skip
        rows.append(run_case("Cancel at a denoising step", pool, lambda: pool.submit(job(str(model), steps=200)),
                             cancel_at_step, good))  # fmt: skip
        rows.append(run_case("Cancel inside a long first step (4,096 frames)", pool,
                             lambda: pool.submit(job(str(model), frames=4096, steps=2)), cancel_after(4.0),
                             good))  # fmt: skip
        rows.append(run_case("Cancel while decoding (1,024 frames at 64x64)", pool,
                             lambda: pool.submit(job(str(model), frames=1024, steps=1, height=64, width=64)),
                             cancel_in_phase("decoding"), good))  # fmt: skip
        fresh = str(shutil.copytree(model, folder / "fresh"))  # another folder: the job must load it first
        rows.append(run_case("Cancel while the model loads", pool, lambda: pool.submit(job(fresh)),
                             cancel_after(0.05), good))  # fmt: skip
        for rank in (0, 1):
            rows.append(run_case(f"SIGKILL rank {rank}", pool, lambda: pool.submit(job(str(model), steps=200)),
                                 signal_rank(pool, rank, signal.SIGKILL), good))  # fmt: skip
    return rows


def standin_cases() -> list[Row]:
    good = job("stand-in", frames=2)
    rows = []
    config = PoolConfig(devices="cpu:2", engine_factory=STANDIN, hang_timeout_s=5, collective_timeout_s=10)
    with WorkerPool(config) as pool:
        for rank in (0, 1):
            rows.append(run_case(f"SIGSTOP rank {rank}", pool, lambda: pool.submit(job("stand-in", frames=2, steps=1000)),
                                 signal_rank(pool, rank, signal.SIGSTOP), good))  # fmt: skip
        rows.append(run_case("rank 1 stuck (alive, never reaches the exchange)", pool,
                             lambda: pool.submit(job("stand-in", frames=2, negative_prompt="stand-in: hang rank 1")),
                             at_once, good))  # fmt: skip
        rows.append(run_case("Cancel in a step with no checkpoint (stand-in: forced stop)", pool,
                             lambda: pool.submit(job("stand-in", frames=2, negative_prompt="stand-in: long first step")),
                             cancel_after(0.5), good))  # fmt: skip
    floor = available_bytes() - 512 * 2**20
    with WorkerPool(PoolConfig(devices="cpu:2", engine_factory=STANDIN, memory_floor_bytes=floor)) as pool:
        rows.append(run_case("a job that eats the memory", pool,
                             lambda: pool.submit(job("stand-in", frames=2, negative_prompt="stand-in: grow memory")),
                             at_once, good))  # fmt: skip
    return rows


def main() -> None:
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as folder:
        model = build_tiny_pipeline(Path(folder) / "tiny", words=["red", "ball"])
        rows = model_cases(model, Path(folder)) + standin_cases()
    print("| fault | time to the job's end, s | error | pool stayed warm |")
    print("|---|---|---|---|")
    for row in rows:
        seconds = "-" if row.seconds is None else f"{row.seconds:.2f}"
        text = row.error.replace("|", "/").splitlines()[0][:220] if row.error else "(none)"
        print(f"| {row.case} | {seconds} | {text} | {'yes' if row.warm else 'no'} |")


if __name__ == "__main__":
    main()
