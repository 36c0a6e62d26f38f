"""Frame shares that balance mismatched devices, learnt from the jobs a pool has run.

After each job every rank reports its compute time (its own work, less its waits for the others). A rank's
speed is its frames over that time, and the next split gives each rank frames in proportion to its speed.
The split where this stops moving is the one where every rank computes for the same time, so the ranks
reach each exchange together and nobody waits. The video is the same for any split, so learning costs
nothing but the first jobs' balance.

A rank's time is not all per frame (text encoding, the halo and global frames, per-step work), so the
proportional rule only approaches the balance over several jobs. When two jobs of the same kind (the same
model, size, length and steps: the same workflow queued again) ran on different splits, each rank's time
is fitted as fixed + per frame, and the next job of that kind gets the split that equalises the fitted
times at once.

Each rank also reports how many of a job's frames its memory would hold (its admission estimate at the
job's start). A split for a job of a kind seen before gives no rank more than that, so a fast device with
little memory is not handed a share it would refuse.
"""

from __future__ import annotations

import json
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any

EVEN_WITHIN = 0.15  # speeds this close count as equal: matched devices keep an even split, without jitter
NOTE_FROM = 1.3  # compute times this far apart on a fixed split earn a console note suggesting "auto"
NEWEST_WEIGHT = 0.75  # weight of the newest job against what earlier jobs taught (smooths noise)
KINDS_KEPT = 32  # kinds of job remembered (a server runs a handful of workflows)
FIT_FROM = 0.1  # a rank's frames must differ this much (relative) between two jobs to fit its fixed part
# Job settings that do not change what a job costs, left out of its kind (cost_kind).
COST_FREE = frozenset({"seed", "frame_shares", "prompt", "prompts", "negative_prompt", "inputs"})

Split = tuple[tuple[int, ...], tuple[float, ...]]  # frames and compute seconds per rank


@dataclass
class ShareBalancer:
    world_size: int
    speeds: tuple[float, ...] | None = None  # frames per compute second, relative (mean 1), rank order
    jobs: int = 0  # jobs measured
    # Per kind of job: the last split measured, and the fit (fixed, per frame) seconds per rank.
    last_of_kind: dict[Hashable, Split] = field(default_factory=dict)
    fits: dict[Hashable, tuple[tuple[float, float], ...]] = field(default_factory=dict)
    capacity: dict[Hashable, tuple[int, ...]] = field(default_factory=dict)  # per kind: frames each rank holds

    def record(
        self,
        frames: Sequence[int],
        seconds: Sequence[float],
        kind: Hashable | None = None,
        capacity: Sequence[int] = (),
    ) -> None:
        """One finished job: its frames and compute seconds per rank, its kind (cost_kind) and the frames each
        rank's memory would hold (0: unknown). A job from another layout (a pool that changed size) or without
        a time for every rank teaches nothing."""
        if len(frames) != self.world_size or len(seconds) != self.world_size or min(seconds, default=0) <= 0:
            return
        if kind is not None:
            if len(capacity) == self.world_size and min(capacity) > 0:
                self.capacity[kind] = tuple(capacity)
            split = (tuple(frames), tuple(seconds))
            earlier = self.last_of_kind.get(kind)
            fit = _fit(earlier, split) if earlier is not None else None
            if fit is not None:
                self.fits[kind] = fit
            self.last_of_kind.pop(kind, None)  # re-inserted last: the oldest kinds go first past KINDS_KEPT
            self.last_of_kind[kind] = split
            for stale in list(self.last_of_kind)[:-KINDS_KEPT]:
                del self.last_of_kind[stale]
                self.fits.pop(stale, None)
                self.capacity.pop(stale, None)
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

    def shares(self, kind: Hashable | None = None, frames: int | None = None) -> tuple[float, ...]:
        """Shares for the next job (layout.FrameLayout) of `frames` frames and kind `kind`; () for an even
        split: nothing measured yet, or the devices are matched within EVEN_WITHIN."""
        fit = self.fits.get(kind) if kind is not None and frames else None
        wanted = _equal_times(fit, frames) if fit is not None else self.speeds
        if wanted is None or max(wanted) <= (1 + EVEN_WITHIN) * min(wanted):
            return ()
        caps = self.capacity.get(kind) if kind is not None else None
        if caps is not None and frames:
            wanted = _within(tuple(frames * share / sum(wanted) for share in wanted), caps, frames)
        return tuple(round(share, 3) for share in _relative(wanted))


def cost_kind(job: dict[str, Any]) -> str:
    """What a job's compute time depends on (a job's to_dict without seeds, prompts and shares): two jobs of
    one kind cost the same on the same split."""

    def strip(value: Any) -> Any:
        if isinstance(value, dict):
            return {key: strip(item) for key, item in value.items() if key not in COST_FREE}
        return value

    return json.dumps(strip(job), sort_keys=True, default=str)


def _fit(first: Split, second: Split) -> tuple[tuple[float, float], ...] | None:
    """(fixed, per frame) seconds per rank through two splits' times; None unless every rank's frames
    differ by FIT_FROM and its time grows with them."""
    fit = []
    for (f1, t1), (f2, t2) in zip(zip(*first, strict=True), zip(*second, strict=True), strict=True):
        if abs(f2 - f1) < FIT_FROM * max(f1, f2):
            return None
        per_frame = (t2 - t1) / (f2 - f1)
        if per_frame <= 0:  # noise larger than the change: nothing to fit
            return None
        fit.append((max(t1 - per_frame * f1, 0.0), per_frame))  # a negative fixed part is noise too
    return tuple(fit)


def _equal_times(fit: Sequence[tuple[float, float]], frames: int) -> tuple[float, ...]:
    """Frames per rank, summing to about `frames`, at which every rank's fitted time is the same; a rank
    too slow for even one frame keeps one (every rank holds at least one frame)."""
    # fixed_r + per_frame_r * f_r = T for every r, and sum f_r = frames.
    time = (frames + sum(fixed / per_frame for fixed, per_frame in fit)) / sum(1 / per_frame for _, per_frame in fit)
    return tuple(max((time - fixed) / per_frame, 1.0) for fixed, per_frame in fit)


def _within(counts: tuple[float, ...], caps: tuple[int, ...], frames: int) -> tuple[float, ...]:
    """Frames per rank, none above its cap (less a frame): what a capped rank cannot hold goes to the others
    in proportion to their counts. When the caps together hold fewer than `frames`, no split fits and the
    counts stay (the job's admission refuses it with its own message)."""
    limits = [max(cap - 1, 1) for cap in caps]  # one frame of room for the layout's rounding
    if sum(limits) < frames:
        return counts
    counts, capped = list(counts), set()
    while over := [rank for rank, count in enumerate(counts) if rank not in capped and count > limits[rank]]:
        for rank in over:
            capped.add(rank)
            counts[rank] = float(limits[rank])
        free = [rank for rank in range(len(counts)) if rank not in capped]
        weight = sum(counts[rank] for rank in free)
        if not free or weight <= 0:
            break
        rest = frames - sum(counts[rank] for rank in capped)
        for rank in free:
            counts[rank] = rest * counts[rank] / weight
    return tuple(counts)


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
