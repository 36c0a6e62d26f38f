"""Who owns which frames, which frames each rank must borrow, and which frames are global."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property

from .errors import InvalidSettingsError


@dataclass(frozen=True)
class FrameLayout:
    """T frames split into contiguous clips, one per rank, in proportion to the ranks' shares (a faster or
    larger device takes more); every rank gets at least one frame. Even shares (or none): the first T % N
    ranks get one extra frame. The video is the same for any split (docs/algorithm.md section 6)."""

    total: int
    world_size: int
    shares: tuple[float, ...] = ()  # relative frames per rank; () = even

    def __post_init__(self) -> None:
        if self.world_size < 1:
            raise ValueError("world_size must be at least 1")
        if self.total < self.world_size:
            raise ValueError(f"{self.total} frames cannot be split over {self.world_size} ranks")
        if self.shares:
            check_shares(self.shares, self.world_size)

    @cached_property
    def counts(self) -> tuple[int, ...]:
        shares = self.shares or (1.0,) * self.world_size
        whole = sum(shares)
        ideal = [self.total * share / whole for share in shares]
        counts = [max(1, int(value)) for value in ideal]
        # Settle the rounding one frame at a time, where it is furthest from the ideal (lowest rank on ties).
        while sum(counts) > self.total:
            rank = max((r for r in range(self.world_size) if counts[r] > 1), key=lambda r: counts[r] - ideal[r])
            counts[rank] -= 1
        while sum(counts) < self.total:
            rank = max(range(self.world_size), key=lambda r: ideal[r] - counts[r])
            counts[rank] += 1
        return tuple(counts)

    @cached_property
    def starts(self) -> tuple[int, ...]:
        starts, position = [], 0
        for count in self.counts:
            starts.append(position)
            position += count
        return tuple(starts)

    def span(self, rank: int) -> tuple[int, int]:
        """[start, end) of the rank's own frames."""
        return self.starts[rank], self.starts[rank] + self.counts[rank]

    def halo(self, rank: int, width: int) -> tuple[tuple[int, int], tuple[int, int]]:
        """Frames the rank borrows on each side, clipped to the video: ((a, b), (c, d)) as [a, b) and [c, d)."""
        start, end = self.span(rank)
        return (max(0, start - width), start), (end, min(self.total, end + width))

    def transfers(self, width: int) -> list[tuple[int, int, int, int]]:
        """Every (sender, receiver, first_frame, last_frame_exclusive) message a halo of `width` needs.

        Halos may span several ranks when clips are shorter than the halo. The list is in one canonical
        order, so every rank derives the same plan and posts matching sends and receives.
        """
        messages = []
        for receiver in range(self.world_size):
            for first, last in self.halo(receiver, width):
                for sender in range(self.world_size):
                    if sender == receiver:
                        continue
                    s_start, s_end = self.span(sender)
                    lo, hi = max(first, s_start), min(last, s_end)
                    if lo < hi:
                        messages.append((sender, receiver, lo, hi))
        return messages


def check_shares(shares: Sequence[float], workers: int) -> None:
    """One positive, finite share per worker; raises InvalidSettingsError naming the fix."""
    if len(shares) != workers:
        raise InvalidSettingsError(
            f"frame_shares gives {len(shares)} share(s) but the pool has {workers} workers; give one per worker, "
            "in rank order (local devices first, then the remote workers), or leave it empty for an even split"
        )
    _check_positive(shares)


def _check_positive(shares: Sequence[float]) -> None:
    bad = [share for share in shares if not 0 < share < float("inf")]
    if bad:
        raise InvalidSettingsError(f"frame_shares has {bad[0]!r}; every share must be a number greater than 0")


def parse_shares(text: str) -> tuple[float, ...]:
    """ "3,1" -> (3.0, 1.0); "" -> () (an even split). Raises InvalidSettingsError naming the expected form."""
    parts = [part.strip() for part in text.replace(" ", ",").split(",") if part.strip()]
    try:
        shares = tuple(float(part) for part in parts)
    except ValueError:
        raise InvalidSettingsError(
            f"frame_shares is {text!r}; give one number per worker separated by commas, such as 3,1 (the first "
            "worker takes three times the frames of the second), or leave it empty for an even split (the Worker "
            "Pool node also takes 'auto': a split by the workers' measured speeds)"
        ) from None
    _check_positive(shares)
    return shares


def global_indices_exact(total: int, count: int) -> list[int]:
    """G frames spread evenly over the whole timeline, independent of the rank count."""
    return [min(total - 1, int((j + 0.5) * total / count)) for j in range(count)]


def global_indices_reference(layout: FrameLayout, count: int) -> list[int]:
    """The public reference code's rule: every rank contributes a strided subset of its own frames.

    m = G // N per rank, stride = F // m (at least 1; only local index 0 if m == 0); contributions are
    concatenated in rank order and cut to the first G.
    """
    indices: list[int] = []
    per_rank = count // layout.world_size
    for rank in range(layout.world_size):
        start, frames = layout.starts[rank], layout.counts[rank]
        if per_rank == 0:
            local = [0]
        else:
            stride = max(1, frames // per_rank)
            local = list(range(0, frames, stride))
        indices += [start + i for i in local]
    return indices[:count]
