"""Frame shares learnt from measured speeds ("auto"): the balancer's rule, then a pool of two real workers
where one computes three times slower (tests/pool_slow_device_engine.py stands in for a slower GPU)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from distributed.engine.layout import FrameLayout
from distributed.pool import PoolConfig, WorkerPool
from distributed.pool.balance import ShareBalancer, cost_kind, imbalance_note
from tests.pool_fixtures import tiny_job

SLOW_ENGINE = f"{Path(__file__).with_name('pool_slow_device_engine.py')}:make_engine"


def test_shares_follow_speed_and_settle_where_every_rank_computes_as_long() -> None:
    balancer = ShareBalancer(2)
    assert balancer.shares() == (), "nothing measured: an even split"
    # Rank 1 is three times slower; each job is split as the balancer says and timed as that split would run.
    frames = (32, 32)
    for _ in range(8):
        balancer.record(frames, (frames[0] * 1.0, frames[1] * 3.0))
        shares = balancer.shares()
        frames = (round(64 * shares[0] / sum(shares)), 64 - round(64 * shares[0] / sum(shares)))
    assert frames == (48, 16)
    assert balancer.shares() == pytest.approx((1.5, 0.5), abs=0.01)


def test_two_jobs_of_one_kind_fit_each_rank_s_fixed_part_and_the_third_is_balanced() -> None:
    # Rank 1 is three times slower, and each rank also has a fixed part (text, halo and global frames):
    # 2 s on rank 0, 6 s on rank 1. The proportional rule alone needs many jobs to reach the balance.
    def times(frames: tuple[int, ...]) -> tuple[float, ...]:
        return (2.0 + 0.1 * frames[0], 6.0 + 0.3 * frames[1])

    balancer = ShareBalancer(2)
    kind = cost_kind({"frames": 64, "steps": 4, "seed": 1, "prompt": "a", "sampling": {"seed": 2, "cfg": 5}})
    assert kind == cost_kind({"frames": 64, "steps": 4, "seed": 9, "prompt": "b", "sampling": {"seed": 3, "cfg": 5}})
    assert kind != cost_kind({"frames": 64, "steps": 8, "seed": 1, "prompt": "a", "sampling": {"seed": 2, "cfg": 5}})
    split = (32, 32)
    for _ in range(2):
        balancer.record(split, times(split), kind)
        shares = balancer.shares(kind, 64)
        first = round(64 * shares[0] / sum(shares))
        split = (first, 64 - first)
    assert split == (58, 6)  # 2 + 5.8 = 7.8 s against 6 + 1.8 = 7.8 s
    proportional = balancer.shares()  # what a job of another kind gets: frames over time, not yet balanced
    assert round(64 * proportional[0] / sum(proportional)) < 58


def test_no_rank_is_given_more_frames_than_its_memory_holds() -> None:
    # Rank 0 is three times faster but holds only 20 of a 64-frame job; rank 1 holds all of it.
    balancer = ShareBalancer(2)
    kind = cost_kind({"frames": 64})
    balancer.record((32, 32), (32.0, 96.0), kind, capacity=(20, 64))
    assert balancer.shares() == (1.5, 0.5)  # a job of unknown kind: the speeds alone
    shares = balancer.shares(kind, 64)
    assert FrameLayout(64, 2, shares).counts == (19, 45), shares  # the cap less one frame of room for rounding
    # Caps that cannot hold the job together change nothing: the job's admission refuses it by itself.
    balancer.record((32, 32), (32.0, 96.0), kind, capacity=(20, 30))
    assert balancer.shares(kind, 64) == (1.5, 0.5)


def test_matched_devices_keep_an_even_split_and_a_foreign_layout_teaches_nothing() -> None:
    balancer = ShareBalancer(2)
    balancer.record((32, 32), (10.0, 11.2))  # 12 % apart: noise between matched devices on short jobs
    assert balancer.shares() == ()
    balancer.record((16, 16, 16), (1.0, 1.0, 4.0))  # another pool size
    balancer.record((32, 32), (10.0, 0.0))  # a rank without a time
    assert balancer.jobs == 1


def test_a_split_whose_workers_computed_far_apart_earns_a_note() -> None:
    note = imbalance_note((16, 16), (2.5, 7.7))
    assert note is not None and "3.1x apart (16 frames in 2.5 s, 16 frames in 7.7 s)" in note
    assert imbalance_note((16, 16), (2.5, 3.0)) is None  # 1.2x: within what matched devices show
    assert imbalance_note((32,), (2.5,)) is None


@pytest.mark.pool
@pytest.mark.slow  # several jobs until the split settles; the fitting itself is tested above
@pytest.mark.timeout(300)
def test_a_slow_worker_gets_fewer_frames_until_the_ranks_compute_as_long(tiny_pipeline: Path) -> None:
    # 128 x 128 pixels: the tiny model's work then grows with frames; at 32 x 32 its fixed costs hide them.
    def job(shares: tuple[float, ...]):
        return tiny_job(tiny_pipeline, frames=24, height=128, width=128, steps=2, frame_shares=list(shares))

    with WorkerPool(PoolConfig(devices="cpu:2", engine_factory=SLOW_ENGINE)) as pool:
        assert pool.balanced_shares() == (), "the first job is split evenly"
        runs, handles = [], []
        for _ in range(4):  # an even split, then three jobs split as "auto" splits them
            handles.append(pool.submit(job(pool.balanced_shares(job(())))))
            handles[-1].result(120)
            runs.append([(worker["frames"], worker["compute_s"]) for worker in pool.status()["workers"]])
        # Every rank's memory holds the whole 24-frame job here (the admission's estimate, bisected).
        assert pool.last_split is not None and pool.last_split["frame_capacity"] == [24, 24]

    frames_on_the_fast_rank = [run[0][0] for run in runs]
    # Even first, then more frames on the fast rank in every "auto" job (a fit may overshoot by a frame and
    # come back: 12, 18, 21, 20 is a good run too).
    assert frames_on_the_fast_rank[0] == 12 and min(frames_on_the_fast_rank[1:]) >= 18, runs
    imbalance = [max(seconds for _, seconds in run) / min(seconds for _, seconds in run) for run in runs]
    assert imbalance[0] > 2, f"the slow rank computed only {imbalance[0]:.2f}x as long on an even split"
    # From the third job on, the split is fitted on the first two (the same kind of job on two splits).
    # Seen here: 1.09 to 1.25 at best, against 2.9 to 3.3 on the even split; the bounds leave room for noise.
    assert min(imbalance[2:]) < 1.4 and imbalance[-1] < 1.5 and imbalance[-1] < imbalance[0] / 2, (imbalance, runs)
    # The split changes who computes what, not the video.
    for handle in handles[1:]:
        assert np.abs(handle.latents(0) - handles[0].latents(0)).max() < 1e-4
