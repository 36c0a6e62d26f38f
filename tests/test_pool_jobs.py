"""A warm pool of two gloo/CPU workers (real processes, the real engine, a tiny random model)."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import numpy as np
import pytest

from distributed.engine.errors import InvalidSettingsError, JobCancelled
from distributed.pool import PoolConfig, WorkerPool, shared_pool
from tests.pool_fixtures import first_denoising_step, tiny_job, wait_for

pytestmark = [pytest.mark.pool, pytest.mark.timeout(240)]


@pytest.fixture(scope="module")
def pool() -> WorkerPool:
    # The process-wide pool, as the nodes use it; other pool test modules reuse it while warm.
    return shared_pool(PoolConfig(devices="cpu:2"))


@pytest.fixture(scope="module")
def own_model(tiny_pipeline: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy at a new path: its first job must load it, whatever ran on the pool before."""
    return Path(shutil.copytree(tiny_pipeline, tmp_path_factory.mktemp("pool-jobs") / "model"))


def test_second_job_on_a_warm_pool_reuses_the_model_and_is_faster(pool: WorkerPool, own_model: Path) -> None:
    pool.start()
    began = time.monotonic()
    first_handle = pool.submit(tiny_job(own_model))
    first = first_handle.result(120)
    cold = time.monotonic() - began
    loads_after_first = pool.status()["loads"]

    began = time.monotonic()
    second = pool.submit(tiny_job(own_model)).result(120)
    warm = time.monotonic() - began

    assert pool.status()["loads"] == loads_after_first, "the second job reloaded the model"
    assert warm < cold, f"warm job took {warm:.2f} s, cold {cold:.2f} s"
    assert first.shape == (4, 32, 32, 3) and first.dtype == np.uint8
    latents = first_handle.latents(0)
    assert latents is not None and latents.shape == (1, 4, 4, 4, 4)  # (B, C, T, h, w): every frame, gathered
    assert np.isfinite(latents).all() and latents.std() > 0
    assert np.array_equal(first, second), "the same job and seed gave different frames"


def test_changed_model_key_reloads(pool: WorkerPool, own_model: Path, tiny_pipeline: Path) -> None:
    pool.submit(tiny_job(own_model)).result(120)
    before = pool.status()["loads"]
    pool.submit(tiny_job(tiny_pipeline)).result(120)
    assert pool.status()["loads"] == before + 1


def test_progress_events_cover_every_phase(pool: WorkerPool, tiny_pipeline: Path) -> None:
    handle = pool.submit(tiny_job(tiny_pipeline, steps=3))
    handle.result(120)
    events = handle.poll_events()
    phases = [e.phase for e in events]
    assert {"loading", "denoising", "decoding", "gathering"} <= set(phases)
    denoising = [(e.step, e.total) for e in events if e.phase == "denoising"]
    assert denoising == [(1, 3), (2, 3), (3, 3)]
    assert handle.poll_events() == [], "poll_events returned old events twice"


def test_the_newest_preview_reaches_the_caller_and_is_taken_once(pool: WorkerPool, tiny_pipeline: Path) -> None:
    handle = pool.submit(tiny_job(tiny_pipeline, steps=3))
    frames = handle.result(120)
    preview = handle.take_preview()
    assert preview is not None and (preview.step, preview.total) == (3, 3)
    assert preview.frame.shape == (1, 4, 1, 4, 4) and preview.frame.dtype == np.float32
    first_frame = handle.latents(0)[:, :, :1]
    assert np.abs(preview.frame - first_frame).max() < 0.05 * np.abs(first_frame).max()
    assert frames.shape[0] == 4 and handle.take_preview() is None


def test_previews_can_be_decoded_by_the_model_or_left_out(pool: WorkerPool, tiny_pipeline: Path) -> None:
    handle = pool.submit(tiny_job(tiny_pipeline, steps=2), preview="pixels")
    handle.result(120)
    preview = handle.take_preview()
    assert preview is not None and preview.frame.shape == (1, 3, 1, 32, 32)
    assert np.abs(preview.frame).max() <= 1
    handle = pool.submit(tiny_job(tiny_pipeline, steps=2), preview="none")
    handle.result(120)
    assert handle.take_preview() is None
    with pytest.raises(InvalidSettingsError, match="preview is 'jpeg'"):
        pool.submit(tiny_job(tiny_pipeline), preview="jpeg")


def test_cancel_stops_within_one_step_and_the_pool_stays_warm(pool: WorkerPool, tiny_pipeline: Path) -> None:
    pids = pool.worker_pids()
    handle = pool.submit(tiny_job(tiny_pipeline, steps=200))
    seen = first_denoising_step(handle, 120)
    steps_seen = max(e.step for e in seen if e.phase == "denoising")
    handle.cancel()
    with pytest.raises(JobCancelled) as cancelled:
        handle.result(60)
    latency = handle.finished_at - handle.cancel_requested_at
    later = [e for e in handle.poll_events() if e.phase == "denoising"]
    step_times = np.diff([e.time for e in seen + later if e.phase == "denoising"])
    one_step = float(np.median(step_times)) if len(step_times) else 1.0
    # Rank 0 checks the flag at the start of each step: at most the step in flight (and an event still
    # in transit) completes after the request.
    assert cancelled.value.step <= steps_seen + 2
    assert latency < one_step * 2 + 1.0, f"cancel took {latency:.2f} s; one step takes {one_step:.2f} s"
    status = pool.status()
    assert status["state"] == "ready"
    assert all(w["alive"] for w in status["workers"]) and pool.worker_pids() == pids
    frames = pool.submit(tiny_job(tiny_pipeline)).result(120)
    assert frames.shape == (4, 32, 32, 3)
    assert pool.worker_pids() == pids, "the pool restarted after a cancel"


def test_cancel_inside_a_long_first_step_stops_there_and_the_pool_stays_warm(
    pool: WorkerPool, tiny_pipeline: Path
) -> None:
    # 4,096 frames: one step takes several seconds per worker, so the Cancel lands inside step 0. The
    # flag rides on the step's exchanges: both ranks stop at the same one, without the pool's forced stop.
    pids = pool.worker_pids()
    handle = pool.submit(tiny_job(tiny_pipeline, frames=4096, steps=2))
    seen: list = []

    def loaded() -> bool:
        seen.extend(handle.poll_events())
        return any(e.phase == "loading" and e.step == e.total for e in seen) or handle.done()

    assert wait_for(loaded, 120)
    time.sleep(2.0)  # past the starting noise, into the first step
    assert not any(e.phase == "denoising" for e in seen + handle.poll_events()), "step 0 ended too soon"
    handle.cancel()
    with pytest.raises(JobCancelled) as cancelled:
        handle.result(60)
    assert cancelled.value.step == 0
    latency = handle.finished_at - handle.cancel_requested_at
    assert latency < 2.0, f"cancel inside a step took {latency:.2f} s"
    assert "did not stop within" not in (pool.status()["last_error"] or "")
    assert pool.worker_pids() == pids, "the pool restarted after a cancel"
    assert pool.submit(tiny_job(tiny_pipeline)).result(120).shape == (4, 32, 32, 3)


def test_cancel_while_decoding_stops_every_rank_at_the_same_round(pool: WorkerPool, tiny_pipeline: Path) -> None:
    pids = pool.worker_pids()
    handle = pool.submit(tiny_job(tiny_pipeline, frames=1024, steps=1, height=64, width=64))
    seen: list = []

    def decoding() -> bool:
        seen.extend(handle.poll_events())
        return any(e.phase == "decoding" for e in seen) or handle.done()

    assert wait_for(decoding, 120, interval=0.01)
    handle.cancel()
    with pytest.raises(JobCancelled, match="cancelled while decoding") as cancelled:
        handle.result(60)
    assert cancelled.value.phase == "decoding"
    assert handle.finished_at - handle.cancel_requested_at < 2.0
    assert pool.worker_pids() == pids, "the pool restarted after a cancel"
    assert pool.submit(tiny_job(tiny_pipeline)).result(120).shape == (4, 32, 32, 3)


def test_invalid_job_is_refused_before_it_reaches_the_workers(pool: WorkerPool, tiny_pipeline: Path) -> None:
    jobs_done = pool.status()["jobs_done"]
    with pytest.raises(InvalidSettingsError, match="multiple of 8"):
        pool.submit(tiny_job(tiny_pipeline, height=30))
    with pytest.raises(InvalidSettingsError, match="every worker needs at least one frame"):
        pool.submit(tiny_job(tiny_pipeline, frames=1, attention={"global_frames": 1, "local_window": 1}))
    assert pool.status()["jobs_done"] == jobs_done
    assert pool.status()["state"] == "ready"


def test_status_is_json_and_describes_the_workers(pool: WorkerPool, tiny_pipeline: Path) -> None:
    pool.submit(tiny_job(tiny_pipeline)).result(120)
    status = json.loads(json.dumps(pool.status()))
    assert status["state"] == "ready" and status["backend"] == "gloo" and status["world_size"] == 2
    assert [w["rank"] for w in status["workers"]] == [0, 1]
    assert all(w["alive"] and w["pid"] and w["rss_bytes"] > 0 for w in status["workers"])
    assert status["model"]["base"] == str(tiny_pipeline)
    assert status["loads"] >= 1 and status["last_error"] is None


def test_a_second_submit_while_busy_is_refused(pool: WorkerPool, tiny_pipeline: Path) -> None:
    from distributed.pool import PoolError

    handle = pool.submit(tiny_job(tiny_pipeline, steps=200))
    try:
        with pytest.raises(PoolError, match="still running"):
            pool.submit(tiny_job(tiny_pipeline))
    finally:
        handle.cancel()
        with pytest.raises(JobCancelled):
            handle.result(60)
