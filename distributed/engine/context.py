"""Runtime state shared by every patched layer of one model: who we are, the job's layout, the step."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch

from .comm import Communicator
from .errors import JobCancelled
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
        count = settings.global_count(layout.total)
        if count == 0 or settings.mode == "independent":
            self.global_indices = ()
        elif settings.mode == "reference":
            self.global_indices = tuple(global_indices_reference(layout, count))
        else:
            self.global_indices = tuple(global_indices_exact(layout.total, count))

    def end_job(self) -> None:
        self.layout = None
        self.comm.unwatch_cancel()

    @contextmanager
    def job(self, layout: FrameLayout, settings: DualScopeSettings) -> Iterator[None]:
        """begin_job ... end_job around a job's steps. A Cancel stops every rank at the same exchange, maybe
        with others posted alongside it still travelling (a DiT's keys and values): they are settled here,
        so they cannot meet the next job's collectives (Communicator.settle)."""
        self.begin_job(layout, settings)
        try:
            yield
        except JobCancelled:
            self.comm.settle()
            raise
        finally:
            self.end_job()

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

    def cancel_checkpoint(self) -> None:
        """Once per patched layer: a Cancel asked during the step stops it here (engine.comm). Ranks that
        run independent clips never talk, so with several of them only the step boundaries decide."""
        if self.active or self.comm.world_size == 1:
            self.comm.cancel_checkpoint()

    def borrow(self, x: torch.Tensor, dim: int, width: int, pad_ends: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """Halo frames on each side. With pad_ends, missing frames at the video ends become zeros so
        both sides are exactly `width` long (reference behaviour); otherwise they are simply absent."""
        return self.start_borrow(x, dim, width, pad_ends)()

    def start_borrow(
        self, x: torch.Tensor, dim: int, width: int, pad_ends: bool
    ) -> Callable[[], tuple[torch.Tensor, torch.Tensor]]:
        """Posts borrow's transfers; the returned call waits for them."""
        assert self.layout is not None
        wait = self.comm.start_borrow_frames(x, dim, self.layout, width)

        def finish() -> tuple[torch.Tensor, torch.Tensor]:
            left, right = wait()
            if pad_ends:
                left = _pad_frames(left, dim, width, at_start=True)
                right = _pad_frames(right, dim, width, at_start=False)
            return left, right

        return finish

    def halo_and_globals(
        self, x: torch.Tensor, dim: int, width: int, pad_ends: bool
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(left halo, right halo, global frames) of an attention input, in one round: the global
        all-gather is posted first and travels while the halo frames are exchanged."""
        return self.start_halo_and_globals(x, dim, width, pad_ends)()

    def start_halo_and_globals(
        self, x: torch.Tensor, dim: int, width: int, pad_ends: bool
    ) -> Callable[[], tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """Posts both exchanges of halo_and_globals; the returned call waits for them (one round), so the
        caller can compute on its own frames meanwhile."""
        gather = self.start_gather_global(x, dim) if self.global_indices else None
        borrow = self.start_borrow(x, dim, width, pad_ends)

        def finish() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
            left, right = borrow()
            return left, right, gather() if gather is not None else x.narrow(dim, 0, 0)

        return finish

    def start_halo_and_globals_of(
        self, tensors: Sequence[torch.Tensor], dim: int, width: int, pad_ends: bool
    ) -> Callable[[], list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]]:
        """start_halo_and_globals for several tensors of the same frames (a DiT's keys and values), all posted
        before any is waited for; the returned call waits for each in turn. When a Cancel carried by the
        first raises, the rest are settled at the end of the job (`job`)."""
        finishes = [self.start_halo_and_globals(x, dim, width, pad_ends) for x in tensors]
        return lambda: [finish() for finish in finishes]

    def start_gather_global(self, x: torch.Tensor, dim: int) -> Callable[[], torch.Tensor]:
        """Posts the exchange of the global frames (the same set on every rank); the returned call waits
        and stacks them along `dim` in global-index order.

        Each rank contributes the global frames it owns, padded to the largest share so every rank
        sends an equally shaped piece; an all-gather then moves about G frames per rank, half of what
        gathering K and V would cost.
        """
        assert self.layout is not None
        shares = self._global_shares()
        start = self.layout.starts[self.comm.rank]
        mine = shares[self.comm.rank]
        source = torch.tensor([self.global_indices[row] - start for row in mine], device=x.device, dtype=torch.long)
        piece = x.index_select(dim, source)
        widest = max(len(rows) for rows in shares)
        if piece.shape[dim] < widest:
            piece = _pad_frames(piece, dim, widest, at_start=False)
        wait = self.comm.start_all_gather(piece)
        rows_in_order = [row for rows in shares for row in rows]
        order = sorted(range(len(rows_in_order)), key=rows_in_order.__getitem__)

        def finish() -> torch.Tensor:
            pieces = wait()
            stacked = torch.cat([p.narrow(dim, 0, len(rows)) for p, rows in zip(pieces, shares, strict=True)], dim=dim)
            return stacked.index_select(dim, torch.tensor(order, device=x.device, dtype=torch.long))

        return finish

    def _global_shares(self) -> list[list[int]]:
        """For each rank, the rows of global_indices that fall into its clip."""
        assert self.layout is not None
        return [
            [row for row, frame in enumerate(self.global_indices) if start <= frame < start + count]
            for start, count in zip(self.layout.starts, self.layout.counts, strict=True)
        ]


def _pad_frames(x: torch.Tensor, dim: int, width: int, at_start: bool) -> torch.Tensor:
    missing = width - x.shape[dim]
    if missing <= 0:
        return x
    shape = list(x.shape)
    shape[dim] = missing
    zeros = x.new_zeros(shape)
    return torch.cat([zeros, x] if at_start else [x, zeros], dim=dim)
