"""What the caller holds while a job runs: progress events, cancel, and the result (or the error)."""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from ..engine.job import JobSpec
from ..engine.latent_job import LatentJob


@dataclass(frozen=True)
class ProgressEvent:
    step: int
    total: int
    phase: str  # one of engine.contract.PHASES
    time: float  # seconds since the epoch, when the worker reported it


@dataclass(frozen=True)
class PreviewEvent:
    step: int
    total: int
    # The video's first frame of the denoised estimate, float32: latents (1, C, 1, h, w) in the model's space, or
    # pixels (1, 3, 1, H, W) in [-1, 1] (the submit's preview kind)
    frame: np.ndarray


class JobHandle:
    """Filled in by the pool (record_progress, complete); read by the caller."""

    def __init__(self, job_id: int, job: JobSpec | LatentJob, request_cancel: Callable[[int], None]):
        self.id = job_id
        self.job = job
        self.finished_at: float | None = None
        self.cancel_requested_at: float | None = None
        self.latest: ProgressEvent | None = None
        self.last_step_s: float | None = None  # how long the last denoising step took, as seen here
        self._last_step_seen: float | None = None
        self._request_cancel = request_cancel
        self._events: deque[ProgressEvent] = deque()
        self._preview: PreviewEvent | None = None  # only the newest matters: a slow reader skips the others
        self._done = threading.Event()
        self._frames: np.ndarray | None = None
        self._latents: np.ndarray | None = None
        self._error: BaseException | None = None

    def poll_events(self) -> list[ProgressEvent]:
        """Progress events since the last call; never blocks."""
        events = []
        while self._events:
            events.append(self._events.popleft())
        return events

    def take_preview(self) -> PreviewEvent | None:
        """The newest preview not taken yet, if any; never blocks."""
        preview, self._preview = self._preview, None
        return preview

    def cancel(self) -> None:
        """Asks every rank to stop at the next denoising step; result() then raises JobCancelled."""
        if not self._done.is_set():
            self.cancel_requested_at = time.monotonic()
            self._request_cancel(self.id)

    def done(self) -> bool:
        return self._done.is_set()

    def wait(self, timeout: float | None = None) -> bool:
        return self._done.wait(timeout)

    def result(self, timeout: float | None = None) -> np.ndarray | None:
        """(T, H, W, 3) uint8 frames (None for a latent job: see latents()).
        Raises JobCancelled, WorkerError, PoolError, or TimeoutError."""
        self._wait_or_raise(timeout)
        if self._error is not None:
            raise self._error
        return self._frames

    def latents(self, timeout: float | None = None) -> np.ndarray | None:
        """Final latents (B, C, T, h, w) float32 of a finished job, before the VAE's scaling; None if failed."""
        self._wait_or_raise(timeout)
        return self._latents

    def record_progress(self, event: ProgressEvent) -> None:
        previous = self.latest
        if event.phase == "denoising" and previous is not None and previous.phase == "denoising":
            if event.step > previous.step and self._last_step_seen is not None:
                self.last_step_s = (time.monotonic() - self._last_step_seen) / (event.step - previous.step)
        if event.phase == "denoising":
            self._last_step_seen = time.monotonic()
        self.latest = event
        self._events.append(event)

    def record_preview(self, event: PreviewEvent) -> None:
        self._preview = event

    def complete(
        self, frames: np.ndarray | None = None, error: BaseException | None = None, latents: np.ndarray | None = None
    ) -> None:
        """The job's end: frames (and latents) or the error. Later calls are ignored."""
        if self._done.is_set():
            return
        self._frames, self._latents, self._error = frames, latents, error
        self.finished_at = time.monotonic()
        self._done.set()

    def _wait_or_raise(self, timeout: float | None) -> None:
        if not self._done.wait(timeout):
            raise TimeoutError(f"job {self.id} is still running after {timeout} s")
