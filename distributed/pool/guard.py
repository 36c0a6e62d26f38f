"""What the coordinator's monitor checks between events: hung workers, overdue cancels, and running out of memory.

Each check returns a fault for the pool to act on (it tears the process group down, which stops any
work at once), or None. Workers send a heartbeat every events.HEARTBEAT_S from a thread of their own, so a
rank that is stopped or frozen is named as soon as it falls silent, not when a peer's collective times
out (and then blames the peer).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import psutil

from ..engine.errors import JobCancelled, VideoInfinityError
from ..engine.host_memory import available_bytes
from .errors import PoolError, WorkerError
from .handle import JobHandle
from .session import Session

CHECK_EVERY_S = 0.25


@dataclass(frozen=True)
class GuardSettings:
    hang_timeout_s: float  # a ready rank silent this long is hung
    cancel_grace_s: float  # how long (plus 1.5 steps) a cancelled job may take to stop before it is stopped by force
    memory_floor_bytes: int  # free memory below which a growing job is stopped


@dataclass(frozen=True)
class Fault:
    error: VideoInfinityError  # what the job (if any) ends with
    reason: str  # for the pool's last_error


class Guard:
    def __init__(self, settings: GuardSettings):
        self.settings = settings
        self._next_check = 0.0
        self._job_id: int | None = None
        self._rss_at_start = 0

    def check(self, session: Session, job: JobHandle | None) -> Fault | None:
        now = time.monotonic()
        if now < self._next_check or not session.ready.is_set():
            return None
        self._next_check = now + CHECK_EVERY_S
        running = job is not None and not job.done()
        if running and job.id != self._job_id:
            self._job_id, self._rss_at_start = job.id, sum(_local_rss(session).values())
        return (
            self._hung(session, now)
            or (self._overdue_cancel(job, now) if running else None)
            or (self._low_memory(session) if running else None)
        )

    def _hung(self, session: Session, now: float) -> Fault | None:
        for info in session.ranks.values():
            silent = now - info.last_seen
            if info.ready and info.rank not in session.deaths and silent > self.settings.hang_timeout_s:
                state = _process_state(info.pid) if info.local else None
                why = (
                    f"the process is {state}"
                    if state
                    else "the process is stopped or frozen, or its machine is unreachable"
                )
                error = WorkerError(
                    info.rank,
                    f"stopped responding: no sign of life for {silent:.0f} s ({why}); the workers were stopped and the "
                    "next job starts fresh ones",
                    "WorkerHung",
                    device=info.device,
                    pid=info.pid,
                )
                return Fault(error, str(error))
        return None

    def _overdue_cancel(self, job: JobHandle, now: float) -> Fault | None:
        asked = job.cancel_requested_at
        # Workers stop at the next step boundary: give a slow step the time to reach it before using force.
        grace = self.settings.cancel_grace_s + 1.5 * (job.last_step_s or 0.0)
        if asked is None or now - asked < grace:
            return None
        step = job.latest.step if job.latest and job.latest.phase == "denoising" else 0
        reason = (
            f"job {job.id} did not stop within {grace:.0f} s of Cancel (it was "
            f"{job.latest.phase if job.latest else 'starting'}); its workers were stopped, the next job starts fresh ones"
        )
        return Fault(JobCancelled(step), reason)

    def _low_memory(self, session: Session) -> Fault | None:
        free = available_bytes()
        if free >= self.settings.memory_floor_bytes:
            return None
        rss = _local_rss(session)
        grown = sum(rss.values()) - self._rss_at_start
        if grown <= 0:
            return None  # something else is using the memory; this job is not what fills it
        held = ", ".join(f"rank {rank} {size / 2**30:.1f} GiB" for rank, size in sorted(rss.items()))
        error = PoolError(
            f"the machine ran out of memory: {free / 2**30:.2f} GiB left (the pool stops jobs below "
            f"{self.settings.memory_floor_bytes / 2**30:.2f} GiB, before the system's out-of-memory killer acts); "
            f"the workers held {held}, {grown / 2**30:.1f} GiB more than when the job began. Make the video "
            "shorter or smaller, or spread it over more workers or machines"
        )
        return Fault(error, str(error))


def _rss(pid: int | None) -> int:
    try:
        return psutil.Process(pid).memory_info().rss if pid else 0
    except psutil.Error:
        return 0


def _local_rss(session: Session) -> dict[int, int]:
    """Resident memory of each of this machine's ranks."""
    return {info.rank: _rss(info.pid) for info in session.ranks.values() if info.local}


def _process_state(pid: int | None) -> str | None:
    """'stopped (SIGSTOP or a debugger)' and the like for a local process, None when it looks normal."""
    try:
        status = psutil.Process(pid).status() if pid else None
    except psutil.Error:
        return None
    return {
        psutil.STATUS_STOPPED: "stopped (SIGSTOP, a debugger or a shell's Ctrl+Z)",
        psutil.STATUS_TRACING_STOP: "stopped by a debugger",
        psutil.STATUS_DISK_SLEEP: "stuck waiting on the disk or a device",
        psutil.STATUS_ZOMBIE: "dead",
    }.get(status)
