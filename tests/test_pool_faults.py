"""Faults with real worker processes: a worker that raises, a worker killed with SIGKILL, a killed coordinator."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from distributed.engine.errors import JobCancelled
from distributed.engine.host_memory import available_bytes
from distributed.engine.job import JobSpec
from distributed.pool import PoolConfig, PoolError, WorkerError, WorkerPool
from distributed.pool.launch import describe_exit
from tests.pool_fixtures import STANDIN_ENGINE, alive, first_denoising_step, tiny_job, wait_for

pytestmark = [pytest.mark.pool, pytest.mark.faults, pytest.mark.timeout(300)]
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def pool() -> WorkerPool:
    with WorkerPool(PoolConfig(devices="cpu:2")) as private:
        yield private


def test_worker_exception_reaches_the_caller_and_the_pool_stays_warm(
    pool: WorkerPool, tiny_pipeline: Path, tmp_path: Path
) -> None:
    pool.start()
    pids, starts = pool.worker_pids(), pool.status()["starts"]
    broken = Path(shutil.copytree(tiny_pipeline, tmp_path / "broken-model"))
    weights = broken / "unet" / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(b"not a safetensors file")
    with pytest.raises(WorkerError) as failed:
        pool.submit(tiny_job(broken)).result(120)
    error = failed.value
    assert error.kind == "ModelLoadError"
    assert f"could not load the UNet from {broken / 'unet'}" in error.message
    assert str(weights) in error.message and "not a safetensors file" in error.message
    assert error.rank in (0, 1) and f"worker rank {error.rank}" in str(error)
    assert "Traceback" in error.traceback_text and "load_pipeline" in error.traceback_text
    assert pool.status()["last_error"] == str(error)
    # Every rank failed while preparing, before any exchange: the group is in step and stays warm.
    assert pool.status()["state"] == "ready" and pool.worker_pids() == pids
    assert pool.submit(tiny_job(tiny_pipeline)).result(180).shape == (4, 32, 32, 3)
    assert pool.status()["starts"] == starts and pool.worker_pids() == pids


def test_a_job_too_large_for_the_memory_is_refused_before_it_runs_and_the_pool_stays_warm(
    pool: WorkerPool, tiny_pipeline: Path
) -> None:
    """Admission: 100,000 frames at 64x64 would need tens of GiB per worker for its steps (the finished video,
    1.2 GB, would fit); every rank refuses it after loading the model, before any step."""
    pool.start()
    pids = pool.worker_pids()
    job = tiny_job(tiny_pipeline, frames=100_000, height=64, width=64)
    began = time.monotonic()
    with pytest.raises(WorkerError) as refused:
        pool.submit(job).result(120)
    assert time.monotonic() - began < 60
    error = refused.value
    assert error.kind == "InsufficientMemoryError"
    assert "GiB per worker (50000 frames per worker at 64x64; 2 workers share this memory" in error.message
    assert "GiB is free on cpu. Use more workers so each holds fewer frames" in error.message
    needed = float(error.message.split("needs about ")[1].split(" GiB")[0])
    assert needed * 2**30 > available_bytes() / 2
    assert pool.status()["state"] == "ready" and pool.worker_pids() == pids
    assert pool.submit(tiny_job(tiny_pipeline)).result(180).shape == (4, 32, 32, 3)


def test_sigkilled_worker_fails_the_job_naming_its_rank_and_a_fresh_pool_runs_the_next(
    pool: WorkerPool, tiny_pipeline: Path
) -> None:
    pool.start()
    old = pool.worker_pids()
    starts = pool.status()["starts"]
    handle = pool.submit(tiny_job(tiny_pipeline, steps=500))
    first_denoising_step(handle, 120)
    victim = pool.status()["workers"][1]
    os.kill(victim["pid"], signal.SIGKILL)
    killed_at = time.monotonic()
    with pytest.raises(WorkerError) as failed:
        handle.result(10)
    detected = handle.finished_at - killed_at
    assert failed.value.rank == 1 and "SIGKILL" in str(failed.value), str(failed.value)
    assert detected < 10
    assert wait_for(lambda: not alive(old), 5), f"workers {alive(old)} of the failed pool are still running"
    assert pool.status()["state"] == "stopped"

    frames = pool.submit(tiny_job(tiny_pipeline)).result(180)
    assert frames.shape == (4, 32, 32, 3)
    assert pool.status()["starts"] == starts + 1
    assert not set(pool.worker_pids()) & set(old)


def test_thirty_jobs_back_to_back_keep_the_workers_memory_flat(pool: WorkerPool, tiny_pipeline: Path) -> None:
    import psutil

    def workers_rss() -> int:
        return sum(psutil.Process(pid).memory_info().rss for pid in pool.worker_pids())

    for seed in range(5):  # warm-up: the model loads, allocator pools fill
        pool.submit(tiny_job(tiny_pipeline, seed=seed)).result(180)
    after_warm_up = workers_rss()
    for seed in range(5, 35):
        pool.submit(tiny_job(tiny_pipeline, seed=seed)).result(180)
    growth = workers_rss() / after_warm_up - 1
    print(f"worker RSS after 30 more jobs: {growth:+.1%}")
    assert growth < 0.05, f"the workers grew by {growth:.1%} over 30 jobs"


COORDINATOR = """
import json, sys, time
from distributed.pool import PoolConfig, WorkerPool
pool = WorkerPool(PoolConfig(devices="cpu:2", engine_factory=sys.argv[1]))
pool.start()
print(json.dumps(pool.worker_pids()), flush=True)
time.sleep(600)
"""


def test_workers_exit_when_the_coordinator_is_killed() -> None:
    # The stand-in engine keeps the start short; what is tested is the workers' parent-death watch.
    coordinator = subprocess.Popen(
        [sys.executable, "-c", COORDINATOR, STANDIN_ENGINE], cwd=REPO, stdout=subprocess.PIPE, text=True
    )
    try:
        pids = json.loads(coordinator.stdout.readline())
        assert len(pids) == 2 and len(alive(pids)) == 2
        coordinator.kill()
        coordinator.wait(10)
        assert wait_for(lambda: not alive(pids), 10), f"workers {alive(pids)} outlived their coordinator"
    finally:
        coordinator.kill()
        coordinator.wait()


def test_a_worker_that_cannot_start_reports_why(tmp_path: Path) -> None:
    broken = tmp_path / "broken_engine.py"
    broken.write_text("def make_engine(rank, world_size, device):\n    raise RuntimeError('no engine on this box')\n")
    with WorkerPool(PoolConfig(devices="cpu:1", engine_factory=f"{broken}:make_engine")) as pool:
        with pytest.raises(WorkerError, match="worker rank 0 .*failed: RuntimeError: no engine on this box"):
            pool.start()
        assert pool.status()["state"] == "stopped" and not pool.worker_pids()


def test_a_hung_rank_cannot_hang_the_caller_past_the_collective_timeout() -> None:
    with WorkerPool(PoolConfig(devices="cpu:2", engine_factory=STANDIN_ENGINE, collective_timeout_s=3)) as pool:
        pool.start()
        pids = pool.worker_pids()
        began = time.monotonic()
        with pytest.raises(WorkerError) as failed:
            pool.submit(standin_job("stand-in: hang rank 1")).result(30)
        assert time.monotonic() - began < 15
        # Rank 0 reported the timeout; rank 1 is alive but never came to the exchange: it is the one to blame.
        error = failed.value
        assert error.rank == 1 and error.kind == "WorkerStuck", str(error)
        assert "rank 0 reported" in error.message and "timed out" in error.message.lower(), str(error)
        assert wait_for(lambda: not alive(pids), 5), "the hung rank was left running"


def standin_job(negative_prompt: str = "", steps: int = 2) -> JobSpec:
    job = {"model": {"base": "stand-in"}, "prompt": "a red ball", "frames": 2, "height": 16, "width": 16,
           "steps": steps, "negative_prompt": negative_prompt, "attention": {"global_frames": 1, "local_window": 1}}  # fmt: skip
    return JobSpec.from_dict(job)


def test_a_stopped_worker_is_named_within_the_hang_timeout() -> None:
    with WorkerPool(PoolConfig(devices="cpu:2", engine_factory=STANDIN_ENGINE, hang_timeout_s=2)) as pool:
        pool.start()
        pids = pool.worker_pids()
        handle = pool.submit(standin_job(steps=1000))
        first_denoising_step(handle, 60)
        os.kill(pids[1], signal.SIGSTOP)
        stopped_at = time.monotonic()
        with pytest.raises(WorkerError) as failed:
            handle.result(30)
        error = failed.value
        assert error.rank == 1 and error.kind == "WorkerHung", str(error)
        assert "stopped (SIGSTOP" in error.message, str(error)
        assert handle.finished_at - stopped_at < 6
        assert wait_for(lambda: not alive(pids), 5), "the stopped worker was left behind"
        assert pool.submit(standin_job()).result(60).shape == (2, 16, 16, 3)


def test_cancel_in_a_step_that_never_ends_stops_the_workers_by_force() -> None:
    with WorkerPool(PoolConfig(devices="cpu:2", engine_factory=STANDIN_ENGINE, cancel_grace_s=1)) as pool:
        pool.start()
        pids = pool.worker_pids()
        handle = pool.submit(standin_job("stand-in: long first step"))
        first_denoising_step(handle, 60)
        handle.cancel()
        with pytest.raises(JobCancelled):
            handle.result(15)
        assert handle.finished_at - handle.cancel_requested_at < 4
        assert "did not stop within" in pool.status()["last_error"]
        assert wait_for(lambda: not alive(pids), 5)
        # Not "job N is still running": the next job starts fresh workers and runs.
        assert pool.submit(standin_job()).result(60).shape == (2, 16, 16, 3)


def test_a_job_that_eats_the_memory_is_stopped_before_the_oom_killer_acts() -> None:
    # The floor is set just under what is free now, so the test needs only ~0.5 GiB of growth, not a full machine.
    floor = available_bytes() - 512 * 2**20
    with WorkerPool(PoolConfig(devices="cpu:2", engine_factory=STANDIN_ENGINE, memory_floor_bytes=floor)) as pool:
        pool.start()
        with pytest.raises(PoolError, match="the machine ran out of memory") as failed:
            pool.submit(standin_job("stand-in: grow memory")).result(60)
        assert "rank 0" in str(failed.value) and "rank 1" in str(failed.value)
        assert available_bytes() > floor - 2**30  # it stopped near the floor, not at the end of the machine


@pytest.mark.parametrize(
    ("oom", "expected"),
    [(True, "out-of-memory killer ended it"), (False, "not the out-of-memory killer"), (None, "or by the")],
)
def test_a_sigkill_is_only_blamed_on_the_oom_killer_when_it_acted(oom, expected) -> None:
    text = describe_exit(-signal.SIGKILL, oom)
    assert text.startswith("killed by SIGKILL") and expected in text
