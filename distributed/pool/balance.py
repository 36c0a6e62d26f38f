"""Frame shares that balance mismatched devices, learnt from the jobs a pool has run.

After each job every rank reports its compute time (its own work, less its waits for the others). A rank's
speed is its frames over that time, and the next split gives each rank frames in proportion to its speed.
The split where this stops moving is the one where every rank computes for the same time, so the ranks
reach each exchange together and nobody waits. The video is the same for any split, so learning costs
nothing but the first jobs' balance.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

EVEN_WITHIN = 0.15  # speeds this close count as equal: matched devices keep an even split, without jitter
NOTE_FROM = 1.3  # compute times this far apart on a fixed split earn a console note suggesting "auto"
NEWEST_WEIGHT = 0.75  # weight of the newest job against what earlier jobs taught (smooths noise)


@dataclass
class ShareBalancer:
    world_size: int
    speeds: tuple[float, ...] | None = None  # frames per compute second, relative (mean 1), rank order
    jobs: int = 0  # jobs measured

    def record(self, frames: Sequence[int], seconds: Sequence[float]) -> None:
        """One finished job: its frames and compute seconds per rank. A job from another layout (a pool that
        changed size) or without a time for every rank teaches nothing."""
        if len(frames) != self.world_size or len(seconds) != self.world_size or min(seconds, default=0) <= 0:
            return
        measured = _relative([count / time for count, time in zip(frames, seconds, strict=True)])
        if self.speeds is not None:
            measured = _relative(
                [
                    (1 - NEWEST_WEIGHT) * old + NEWEST_WEIGHT * new
                    for old, new in zip(self.speeds, measured, strict=True)
                ]
            )
        self.speeds = measured
        self.jobs += 1

    def shares(self) -> tuple[float, ...]:
        """Shares for the next job (layout.FrameLayout); () for an even split: nothing measured yet, or the
        devices are matched within EVEN_WITHIN."""
        if self.speeds is None or max(self.speeds) <= (1 + EVEN_WITHIN) * min(self.speeds):
            return ()
        return tuple(round(speed, 3) for speed in self.speeds)


def _relative(values: Sequence[float]) -> tuple[float, ...]:
    mean = sum(values) / len(values)
    return tuple(value / mean for value in values)


def imbalance_note(frames: Sequence[int], seconds: Sequence[float]) -> str | None:
    """A line for the console when a job's ranks computed for very different times on a split the user
    fixed (even or explicit shares): the fast ones waited for the slow ones at every exchange."""
    if len(seconds) < 2 or len(frames) != len(seconds) or min(seconds) <= 0:
        return None
    ratio = max(seconds) / min(seconds)
    if ratio < NOTE_FROM:
        return None
    per_worker = ", ".join(f"{count} frames in {time:.1f} s" for count, time in zip(frames, seconds, strict=True))
    return (
        f"the workers' compute times were {ratio:.1f}x apart ({per_worker}); the faster ones waited for the slower ones"
    )
