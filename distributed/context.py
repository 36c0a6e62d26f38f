"""Runtime state shared by every patched layer of one model: who we are, the job's layout, the step."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .comm import Communicator
from .layout import FrameLayout, global_indices_exact, global_indices_reference
from .settings import DualScopeSettings


@dataclass
class TemporalContext:
    comm: Communicator
    settings: DualScopeSettings = field(default_factory=DualScopeSettings)
    layout: FrameLayout | None = None  # None: layers behave as the unpatched model
    timestep: float = 0.0
    global_indices: tuple[int, ...] = ()

    def begin_job(self, layout: FrameLayout, settings: DualScopeSettings) -> None:
        self.layout = layout
        self.settings = settings
        count = settings.global_frames
        if count == 0 or settings.mode == "independent":
            self.global_indices = ()
        elif settings.mode == "reference":
            self.global_indices = tuple(global_indices_reference(layout, count))
        else:
            self.global_indices = tuple(global_indices_exact(layout.total, count))

    def end_job(self) -> None:
        self.layout = None

    @property
    def active(self) -> bool:
        return self.layout is not None and self.settings.mode != "independent"

    @property
    def span(self) -> tuple[int, int]:
        assert self.layout is not None
        return self.layout.span(self.comm.rank)

    @property
    def global_phase(self) -> bool:
        return self.timestep >= self.settings.phase_threshold

    def borrow(self, x: torch.Tensor, dim: int, width: int, pad_ends: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """Halo frames on each side. With pad_ends, missing frames at the video ends become zeros so
        both sides are exactly `width` long (reference behaviour); otherwise they are simply absent."""
        assert self.layout is not None
        left, right = self.comm.borrow_frames(x, dim, self.layout, width)
        if pad_ends:
            left = _pad_frames(left, dim, width, at_start=True)
            right = _pad_frames(right, dim, width, at_start=False)
        return left, right

    def gather_global(self, x: torch.Tensor, dim: int) -> torch.Tensor:
        """The global frames (same set on every rank), stacked along `dim`."""
        start, end = self.span
        shape = list(x.shape)
        shape[dim] = len(self.global_indices)
        buffer = x.new_zeros(shape)
        rows = [(row, frame - start) for row, frame in enumerate(self.global_indices) if start <= frame < end]
        if rows:
            dest = torch.tensor([r for r, _ in rows], device=x.device)
            source = torch.tensor([f for _, f in rows], device=x.device)
            buffer.index_copy_(dim, dest, x.index_select(dim, source))
        # Rows are owned by exactly one rank and zero elsewhere, so the sum is an exact gather.
        return self.comm.all_reduce_(buffer)


def _pad_frames(x: torch.Tensor, dim: int, width: int, at_start: bool) -> torch.Tensor:
    missing = width - x.shape[dim]
    if missing <= 0:
        return x
    shape = list(x.shape)
    shape[dim] = missing
    zeros = x.new_zeros(shape)
    return torch.cat([zeros, x] if at_start else [x, zeros], dim=dim)
