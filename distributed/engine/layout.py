"""Who owns which frames, which frames each rank must borrow, and which frames are global."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property


@dataclass(frozen=True)
class FrameLayout:
    """T frames split into contiguous clips, one per rank; the first T % N ranks get one extra frame."""

    total: int
    world_size: int

    def __post_init__(self) -> None:
        if self.world_size < 1:
            raise ValueError("world_size must be at least 1")
        if self.total < self.world_size:
            raise ValueError(f"{self.total} frames cannot be split over {self.world_size} ranks")

    @cached_property
    def counts(self) -> tuple[int, ...]:
        base, extra = divmod(self.total, self.world_size)
        return tuple(base + (1 if r < extra else 0) for r in range(self.world_size))

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
