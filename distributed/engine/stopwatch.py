"""Time spent on a device, summed over intervals: host time on CPU, stream time on CUDA.

A rank's compute time is what balances a split over mismatched devices (pool.balance): its busy time in
a job less the time it stood waiting for other ranks. On CPU a wait blocks the process, so the host clock
measures it. On CUDA the host runs ahead and a collective's wait holds the stream, not the host, so
intervals are CUDA events on the current stream, read once at the end of a job (reading them sooner
would make the host wait for the device).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

import torch


class Stopwatch:
    def __init__(self, device: torch.device | str):
        self.on_stream = torch.device(device).type == "cuda"
        self._host_seconds = 0.0
        self._events: list[tuple[torch.cuda.Event, torch.cuda.Event]] = []

    def reset(self) -> None:
        self._host_seconds = 0.0
        self._events.clear()

    @contextmanager
    def interval(self) -> Iterator[None]:
        if self.on_stream:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            try:
                yield
            finally:
                end.record()
                self._events.append((start, end))
            return
        began = time.perf_counter()
        try:
            yield
        finally:
            self._host_seconds += time.perf_counter() - began

    def seconds(self) -> float:
        """The summed intervals so far (on CUDA this waits for the device to finish its queued work)."""
        if not self._events:
            return self._host_seconds
        torch.cuda.synchronize(self._events[-1][1].device)  # every stream: a library may record on its own
        return self._host_seconds + sum(start.elapsed_time(end) for start, end in self._events) / 1000
