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
            return _padded_halo(left, right, dim, width, pad_ends)

        return finish

    @property
    def halo_rides_all_gather(self) -> bool:
        """Whether a layer's halo travels inside its all-gather. An all-gather brings a rank's piece to every
        other rank; at two ranks that is exactly where its halo goes, so the halo costs no extra bytes there
        and the layer one call fewer. With more ranks it would reach ranks that do not need it, so it goes
        point to point, posted beside the all-gather."""
        return self.comm.world_size == 2

    def start_halo_with(
        self, x: torch.Tensor, dim: int, width: int, pad_ends: bool, parts: Sequence[torch.Tensor]
    ) -> Callable[[], tuple[torch.Tensor, torch.Tensor, list[list[torch.Tensor]]]]:
        """Posts the halo of `width` of x together with an all-gather of `parts` (this rank's pieces, shaped
        alike on every rank): one call where the halo rides the all-gather, else the all-gather and the
        point-to-point halo posted together. The returned call waits (one round) and gives (left, right,
        every part's pieces in rank order)."""
        assert self.layout is not None
        comm, layout = self.comm, self.layout
        if self.halo_rides_all_gather and width > 0:
            wait_all = comm.start_all_gather_parts([*parts, comm.halo_piece(x, dim, layout, width)])

            def finish_together() -> tuple[torch.Tensor, torch.Tensor, list[list[torch.Tensor]]]:
                *gathered, halo_pieces = wait_all()
                left, right = comm.halo_from_pieces(halo_pieces, dim, layout, width)
                return (*_padded_halo(left, right, dim, width, pad_ends), gathered)

            return finish_together
        gathers = [comm.start_all_gather(part) for part in parts]
        borrow = self.start_borrow(x, dim, width, pad_ends)

        def finish() -> tuple[torch.Tensor, torch.Tensor, list[list[torch.Tensor]]]:
            left, right = borrow()
            return left, right, [gather() for gather in gathers]

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
        """Posts both exchanges of halo_and_globals (one call where the halo rides the global all-gather);
        the returned call waits for them (one round), so the caller can compute on its own frames meanwhile."""
        parts = [self._global_piece(x, dim)] if self.global_indices else []
        arrived = self.start_halo_with(x, dim, width, pad_ends, parts)

        def finish() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
            left, right, gathered = arrived()
            return left, right, self._stack_globals(gathered[0], dim) if gathered else x.narrow(dim, 0, 0)

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
        wait = self.comm.start_all_gather(self._global_piece(x, dim))
        return lambda: self._stack_globals(wait(), dim)

    def _global_piece(self, x: torch.Tensor, dim: int) -> torch.Tensor:
        """This rank's global frames of x, padded to the largest rank's share."""
        assert self.layout is not None
        shares = self._global_shares()
        start = self.layout.starts[self.comm.rank]
        mine = shares[self.comm.rank]
        source = torch.tensor([self.global_indices[row] - start for row in mine], device=x.device, dtype=torch.long)
        piece = x.index_select(dim, source)
        widest = max(len(rows) for rows in shares)
        return _pad_frames(piece, dim, widest, at_start=False) if piece.shape[dim] < widest else piece

    def _stack_globals(self, pieces: Sequence[torch.Tensor], dim: int) -> torch.Tensor:
        """Every rank's _global_piece (rank order) as the global frames in global-index order."""
        shares = self._global_shares()
        rows_in_order = [row for rows in shares for row in rows]
        order = sorted(range(len(rows_in_order)), key=rows_in_order.__getitem__)
        stacked = torch.cat([p.narrow(dim, 0, len(rows)) for p, rows in zip(pieces, shares, strict=True)], dim=dim)
        return stacked.index_select(dim, torch.tensor(order, device=stacked.device, dtype=torch.long))

    def _global_shares(self) -> list[list[int]]:
        """For each rank, the rows of global_indices that fall into its clip."""
        assert self.layout is not None
        return [
            [row for row, frame in enumerate(self.global_indices) if start <= frame < start + count]
            for start, count in zip(self.layout.starts, self.layout.counts, strict=True)
        ]


def _padded_halo(
    left: torch.Tensor, right: torch.Tensor, dim: int, width: int, pad_ends: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """With pad_ends, the halo's frames missing past the video's ends become zeros (both sides `width`)."""
    if not pad_ends:
        return left, right
    return _pad_frames(left, dim, width, at_start=True), _pad_frames(right, dim, width, at_start=False)


def _pad_frames(x: torch.Tensor, dim: int, width: int, at_start: bool) -> torch.Tensor:
    missing = width - x.shape[dim]
    if missing <= 0:
        return x
    shape = list(x.shape)
    shape[dim] = missing
    zeros = x.new_zeros(shape)
    return torch.cat([zeros, x] if at_start else [x, zeros], dim=dim)
