"""The real engine, with one rank computing SLOWDOWN times slower than the others: a stand-in for mismatched
GPUs, which this machine does not have. Loaded by file path inside worker processes (PoolConfig.engine_factory).

Before each wait for the other ranks, the slow rank sleeps (SLOWDOWN - 1) times the work it did since its
last wait, so each piece of its work takes SLOWDOWN times as long; every number it computes is the real
engine's.
"""

from __future__ import annotations

import importlib
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch

SLOW_RANK = 1
SLOWDOWN = 3.0


class SlowedStalls:
    """Wraps a communicator's stall stopwatch; the sleep happens before the wait, so it counts as work."""

    def __init__(self, stalls: Any):
        self.stalls = stalls
        self.last_wait_end = time.perf_counter()

    def reset(self) -> None:
        self.stalls.reset()
        self.last_wait_end = time.perf_counter()

    @contextmanager
    def interval(self) -> Iterator[None]:
        time.sleep((SLOWDOWN - 1) * (time.perf_counter() - self.last_wait_end))
        with self.stalls.interval():
            yield
        self.last_wait_end = time.perf_counter()

    def seconds(self) -> float:
        return self.stalls.seconds()


def make_engine(rank: int, world_size: int, device: torch.device) -> Any:
    comm = importlib.import_module("video_infinity_engine.engine.comm").Communicator(rank, world_size, device)
    if rank == SLOW_RANK:
        comm.stalls = SlowedStalls(comm.stalls)
    return importlib.import_module("video_infinity_engine.engine.runner").Engine(comm)
