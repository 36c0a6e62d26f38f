"""Errors of the worker pool. Both are VideoInfinityError, so callers can treat every engine error alike."""

from __future__ import annotations

from ..engine.errors import VideoInfinityError


class PoolError(VideoInfinityError):
    """The pool could not start, lost its workers, or was asked something it cannot do now."""


class WorkerError(VideoInfinityError):
    """A worker failed: carries its rank and its own error text, so the real cause reaches the user."""

    def __init__(
        self,
        rank: int,
        message: str,
        kind: str = "Error",
        traceback_text: str = "",
        device: str = "",
        pid: int | None = None,
    ):
        where = f"worker rank {rank}" + (f" ({device}, pid {pid})" if device and pid else "")
        super().__init__(f"{where} failed: {kind}: {message}")
        self.rank = rank
        self.kind = kind
        self.message = message
        self.traceback_text = traceback_text
        self.device = device
        self.pid = pid
