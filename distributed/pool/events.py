"""What workers report to the coordinator, as typed events.

Events cross process boundaries as plain dicts (a multiprocessing queue from local workers, JSON lines
from node agents), because the coordinator and a worker import the engine under different module names
and could not unpickle each other's classes. `to_wire` and `from_wire` are that boundary; everything on
either side of it works with the dataclasses.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np


@dataclass(frozen=True)
class WorkerEvent:
    rank: int
    time: float = field(default_factory=time.time, kw_only=True)  # seconds since the epoch, when it happened


@dataclass(frozen=True)
class Ready(WorkerEvent):
    pid: int
    device: str
    host: str
    backend: str


@dataclass(frozen=True)
class Stats(WorkerEvent):
    rss: int
    loads: int | None
    cuda_allocated: int | None = None
    cuda_reserved: int | None = None


@dataclass(frozen=True)
class Progress(WorkerEvent):
    job: int | None
    step: int
    total: int
    phase: str  # one of engine.contract.PHASES


@dataclass(frozen=True)
class Preview(WorkerEvent):
    """Rank 0's first frame of the denoised estimate after a step, for the caller's live preview."""

    job: int | None
    step: int
    total: int
    frame: np.ndarray  # float32 latents (1, C, 1, h, w) or pixels (1, 3, 1, H, W): a few hundred kB at most


@dataclass(frozen=True)
class Result(WorkerEvent):
    job: int
    shm: str | None  # shared-memory block holding the frames (None: a latent job, no frames)
    shape: tuple[int, ...]
    loads: int | None
    latents: np.ndarray | None  # small next to the frames (1/48 of them as float32), so it rides the queue
    frames_per_rank: tuple[int, ...] = ()  # the job's split of its latent frames
    compute_seconds: tuple[float, ...] = ()  # each rank's own work in the job, less its waits (RunStats)
    frame_capacity: tuple[int, ...] = ()  # each rank's largest share of the job that its memory holds (RunStats)


@dataclass(frozen=True)
class Cancelled(WorkerEvent):
    job: int
    step: int
    phase: str = "denoising"


@dataclass(frozen=True)
class Failed(WorkerEvent):
    job: int | None
    phase: str  # "start" or "job"
    kind: str  # the exception's type name
    message: str
    traceback: str
    user_error: bool  # a VideoInfinityError: the job was wrong, not the worker
    pid: int
    device: str
    recoverable: bool = False  # every rank stopped at the same point: the group is in step and stays warm


@dataclass(frozen=True)
class Stopped(WorkerEvent):
    pass


HEARTBEAT_S = 1.0  # how often a worker says it is alive


@dataclass(frozen=True)
class Heartbeat(WorkerEvent):
    """Sent every few seconds from a thread of its own: the rank is alive even while it computes."""


@dataclass(frozen=True)
class Died(WorkerEvent):
    """Seen by whoever started the process: it exited without a word."""

    exitcode: int | None


@dataclass(frozen=True)
class AgentLost(WorkerEvent):
    """The node agent hosting these ranks disconnected (rank is the first of them)."""

    ranks: tuple[int, ...]
    host: str


EVENT_TYPES: dict[str, type[WorkerEvent]] = {
    cls.__name__: cls
    for cls in (Ready, Stats, Progress, Preview, Result, Cancelled, Failed, Stopped, Heartbeat, Died, AgentLost)
}


def to_wire(event: WorkerEvent) -> dict[str, Any]:
    data = {f.name: getattr(event, f.name) for f in fields(event)}  # no deep copy of the latents
    data["type"] = type(event).__name__
    return data


def from_wire(data: Any) -> WorkerEvent | None:
    """The event, or None for anything that is not a well-formed event (it is ignored, never trusted)."""
    if not isinstance(data, dict) or data.get("type") not in EVENT_TYPES:
        return None
    cls = EVENT_TYPES[data["type"]]
    try:
        values = {f.name: data[f.name] for f in fields(cls) if f.name in data}
        for name in ("shape", "ranks", "frames_per_rank", "compute_seconds", "frame_capacity"):
            if isinstance(values.get(name), list):
                values[name] = tuple(values[name])
        return cls(**values)
    except TypeError:
        return None
