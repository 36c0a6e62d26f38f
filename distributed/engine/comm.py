"""Communication between ranks over torch.distributed (NCCL on CUDA, gloo on CPU).

Only collectives both backends implement are used: batched point-to-point, all_reduce, all_gather and
broadcast. A single rank never communicates. Bytes and calls are counted so the cost model can be checked.

Cancel inside a step: while a job's steps run, every all-gather carries one more value, whether a Cancel
was asked on that rank, so all ranks learn it at the same exchange and stop there together, with no
collective of its own. The layers also pass `cancel_checkpoint` once each, where a single rank reads the
request itself and several ranks with no all-gather since the last checkpoint agree on it explicitly.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.distributed as dist

from .errors import JobCancelled
from .layout import FrameLayout
from .stopwatch import Stopwatch

# One output tensor for every rank's piece: fewer copies than a list of outputs (NCCL), and on gloo a
# round trip 0.12 ms shorter (0.50 against 0.62 ms for a norm's statistics, 2 ranks on loopback).
_all_gather_into = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor


def _never() -> bool:
    return False


@dataclass
class _Posted:
    """An exchange posted and not yet waited for."""

    wait: Callable[[], object]  # the transport's own wait, for settle()
    overlapped: bool = False  # another wait ran while it travelled, so waiting for it is no round of its own


class Communicator:
    def __init__(self, rank: int, world_size: int, device: torch.device | str, group: object | None = None):
        self.rank = rank
        self.world_size = world_size
        self.device = torch.device(device)
        self.group = group
        self.bytes_sent = 0
        self.bytes_received = 0
        self.calls = 0  # communication calls (a batch of point-to-point transfers counts once)
        self.rounds = 0  # points where this rank waits; calls in flight together count once
        self.stalls = Stopwatch(self.device)  # time spent waiting for other ranks (balances a split)
        self._in_flight: dict[int, _Posted] = {}  # by the key _post gave
        self._posted = 0
        self._cancel_requested: Callable[[], bool] | None = None  # set while a job's steps run
        self._cancel_step = 0
        self._carried_cancel = False  # an all-gather carried the flag since the last checkpoint

    @classmethod
    def single(cls, device: torch.device | str = "cpu") -> Communicator:
        return cls(0, 1, device)

    @property
    def is_root(self) -> bool:
        return self.rank == 0

    def reset_counters(self) -> None:
        self.bytes_sent = 0
        self.bytes_received = 0
        self.calls = 0
        self.rounds = 0

    @property
    def in_flight(self) -> int:
        """Exchanges posted and not yet waited for."""
        return len(self._in_flight)

    def settle(self) -> int:
        """Waits for every exchange posted and not yet waited for, and returns how many there were.

        For a job that stopped inside a layer: a Cancel carried by one of several exchanges posted together
        raises on every rank before the others are waited for. Left travelling, they would meet the next
        job's collectives and leave the ranks out of step (a warm pool's next job hangs). Every rank stops at
        the same exchange, so every rank posted the same ones and these waits complete. Their own errors are
        dropped: the job has already stopped for a reason of its own."""
        posted, self._in_flight = list(self._in_flight.values()), {}
        for exchange in posted:
            try:
                exchange.wait()
            except Exception:  # noqa: BLE001, S110 - the stopped job's error is the one reported
                pass
        return len(posted)

    def _overlap_all(self) -> None:
        for exchange in self._in_flight.values():
            exchange.overlapped = True

    def _count_wait(self) -> None:
        """One blocking wait: a round of its own, and it overlaps every exchange still in flight."""
        self.rounds += 1
        self._overlap_all()

    def _post(self, wait: Callable[[], object]) -> int:
        """Registers a posted exchange and its transport wait; its key goes to the caller's wait (_waited)."""
        key = self._posted
        self._posted += 1
        self._in_flight[key] = _Posted(wait)
        return key

    def _waited(self, key: int) -> None:
        """The wait for posted exchange `key`: a round unless another wait overlapped it. Every exchange still
        in flight travelled during it, so their own waits are no rounds of their own."""
        if not self._in_flight.pop(key).overlapped:
            self.rounds += 1
        self._overlap_all()

    def borrow_frames(
        self, x: torch.Tensor, dim: int, layout: FrameLayout, width: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The frames of the rank's halo of `width` on each side, clipped to the video, from their owners.

        `x` holds this rank's own frames along `dim`. Returns (left, right) with the borrowed frames in
        global order; they may come from several ranks when neighbouring clips are short.
        """
        return self.start_borrow_frames(x, dim, layout, width)()

    def start_borrow_frames(
        self, x: torch.Tensor, dim: int, layout: FrameLayout, width: int
    ) -> Callable[[], tuple[torch.Tensor, torch.Tensor]]:
        """Posts borrow_frames' transfers and returns the call that waits for them and gives (left, right)."""
        (l_lo, l_hi), (r_lo, r_hi) = layout.halo(self.rank, width)
        shape = list(x.shape)
        shape[dim] = l_hi - l_lo
        left = x.new_empty(shape)
        shape[dim] = r_hi - r_lo
        right = x.new_empty(shape)
        if self.world_size == 1 or width == 0:
            return lambda: (left, right)
        start = layout.starts[self.rank]
        ops, landings = [], []
        for tag, (sender, receiver, lo, hi) in enumerate(layout.transfers(width)):
            if sender == self.rank:
                piece = x.narrow(dim, lo - start, hi - lo).contiguous()
                ops.append(dist.P2POp(dist.isend, piece, receiver, self.group, tag))
                self.bytes_sent += piece.numel() * piece.element_size()
            elif receiver == self.rank:
                target, offset = (left, l_lo) if hi <= start else (right, r_lo)
                view = target.narrow(dim, lo - offset, hi - lo)
                # A received piece lands in a contiguous buffer first: narrow() of a non-leading dim is strided.
                buffer = torch.empty_like(view, memory_format=torch.contiguous_format)
                ops.append(dist.P2POp(dist.irecv, buffer, sender, self.group, tag))
                landings.append((view, buffer))
                self.bytes_received += buffer.numel() * buffer.element_size()
        requests, key = [], None

        def wait_all() -> None:
            for request in requests:
                request.wait()

        if ops:
            requests = dist.batch_isend_irecv(ops)
            self.calls += 1
            key = self._post(wait_all)

        def finish() -> tuple[torch.Tensor, torch.Tensor]:
            if key is not None:
                self._waited(key)  # exchanges posted together wait once
            with self.stalls.interval():
                wait_all()
            for view, buffer in landings:
                view.copy_(buffer)
            return left, right

        return finish

    def halo_piece(self, x: torch.Tensor, dim: int, layout: FrameLayout, width: int) -> torch.Tensor:
        """What this rank sends for a halo of `width` when the halo travels inside an all-gather: its frames
        of every transfer it makes (in the canonical order), padded to the widest rank's, so every rank's
        piece has one shape. halo_from_pieces undoes it."""
        start = layout.starts[self.rank]
        transfers = layout.transfers(width)
        sent_by = [0] * self.world_size
        for sender, _, lo, hi in transfers:
            sent_by[sender] += hi - lo
        pieces = [x.narrow(dim, lo - start, hi - lo) for sender, _, lo, hi in transfers if sender == self.rank]
        sent = torch.cat(pieces, dim=dim) if pieces else x.narrow(dim, 0, 0)
        missing = max(sent_by) - sent.shape[dim]
        if missing:
            shape = list(x.shape)
            shape[dim] = missing
            sent = torch.cat([sent, x.new_zeros(shape)], dim=dim)
        return sent

    def halo_from_pieces(
        self, pieces: Sequence[torch.Tensor], dim: int, layout: FrameLayout, width: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(left, right) as borrow_frames gives them, read from every rank's halo_piece (rank order)."""
        (l_lo, l_hi), (r_lo, r_hi) = layout.halo(self.rank, width)
        start = layout.starts[self.rank]
        parts_left, parts_right = [], []
        offsets = [0] * self.world_size
        for sender, receiver, lo, hi in layout.transfers(width):
            if receiver == self.rank:
                piece = pieces[sender].narrow(dim, offsets[sender], hi - lo)
                (parts_left if hi <= start else parts_right).append(piece)
            offsets[sender] += hi - lo
        empty = pieces[0].narrow(dim, 0, 0)
        left = torch.cat(parts_left, dim=dim) if parts_left else empty
        right = torch.cat(parts_right, dim=dim) if parts_right else empty
        assert left.shape[dim] == l_hi - l_lo and right.shape[dim] == r_hi - r_lo
        return left, right

    def all_reduce_(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum over ranks in place. Counted as a ring all-reduce: 2 (N-1)/N of the tensor each way."""
        if self.world_size > 1:
            with self.stalls.interval():
                dist.all_reduce(tensor, group=self.group)
            self.calls += 1
            self._count_wait()
            moved = 2 * (self.world_size - 1) * tensor.numel() * tensor.element_size() // self.world_size
            self.bytes_sent += moved
            self.bytes_received += moved
        return tensor

    def all_gather(self, tensor: torch.Tensor) -> list[torch.Tensor]:
        """Every rank's equally shaped tensor, in rank order. Counted as a ring: N-1 pieces each way.

        While a Cancel is watched, the flag travels as one extra value and JobCancelled is raised on
        every rank when any rank set it."""
        return self.start_all_gather(tensor)()

    def start_all_gather(self, tensor: torch.Tensor) -> Callable[[], list[torch.Tensor]]:
        """Posts the all-gather and returns the call that waits for it, so a rank can do other work (or
        other exchanges) while it travels. Every rank must finish it before starting its next one."""
        if self.world_size == 1:
            return lambda: [tensor]
        watched = self._cancel_requested is not None
        sent = tensor.contiguous().reshape(-1)  # flat: every backend splits the output along its first dim
        if watched:
            sent = tensor.new_empty(tensor.numel() + 1)
            sent[:-1].view(tensor.shape).copy_(tensor)
            sent[-1] = 1 if self._cancel_requested() else 0
        gathered = sent.new_empty(self.world_size * sent.numel())
        work = _all_gather_into(gathered, sent, group=self.group, async_op=True)
        rows = gathered.view(self.world_size, -1)
        self.calls += 1
        moved = (self.world_size - 1) * sent.numel() * sent.element_size()
        self.bytes_sent += moved
        self.bytes_received += moved
        key = self._post(work.wait)

        def finish() -> list[torch.Tensor]:
            self._waited(key)
            with self.stalls.interval():
                work.wait()
            if not watched:
                return [row.view(tensor.shape) for row in rows]
            self._carried_cancel = True
            if bool(rows[:, -1].any()):  # one device sync for all flags
                raise JobCancelled(self._cancel_step)
            return [row[:-1].view(tensor.shape) for row in rows]

        return finish

    def start_all_gather_parts(self, parts: Sequence[torch.Tensor]) -> Callable[[], list[list[torch.Tensor]]]:
        """One all-gather for several tensors, of any dtypes, each shaped alike on every rank: they travel
        as the bytes of one tensor, so a layer's exchanges cost one call. The returned call gives, for each
        part, every rank's piece in rank order."""
        raw = [part.contiguous().reshape(-1).view(torch.uint8) for part in parts]
        wait = self.start_all_gather(torch.cat(raw))

        def finish() -> list[list[torch.Tensor]]:
            rows = wait()
            gathered, offset = [], 0
            for part, size in zip(parts, (r.numel() for r in raw), strict=True):
                # A copy first: a wider dtype's view needs its bytes aligned, a slice of the row may not be.
                gathered.append([row[offset : offset + size].clone().view(part.dtype).view(part.shape) for row in rows])
                offset += size
            return gathered

        return finish

    def send_to(self, tensor: torch.Tensor, rank: int) -> None:
        with self.stalls.interval():
            dist.send(tensor.contiguous(), rank, group=self.group)
        self.calls += 1
        self._count_wait()
        self.bytes_sent += tensor.numel() * tensor.element_size()

    def recv_from(self, tensor: torch.Tensor, rank: int) -> None:
        with self.stalls.interval():
            dist.recv(tensor, rank, group=self.group)
        self.calls += 1
        self._count_wait()
        self.bytes_received += tensor.numel() * tensor.element_size()

    def broadcast_(self, tensor: torch.Tensor, src: int = 0) -> torch.Tensor:
        if self.world_size > 1:
            with self.stalls.interval():
                dist.broadcast(tensor, src, group=self.group)
            self.calls += 1
            self._count_wait()
        return tensor

    def agree(self, decision_on_root: bool) -> bool:
        """Rank 0's decision, known to every rank at the same point of the loop."""
        if self.world_size == 1:
            return decision_on_root
        flag = torch.tensor([1 if decision_on_root else 0], dtype=torch.int32, device=self.device)
        self.broadcast_(flag)
        return bool(flag.item())

    def watch_cancel(self, requested: Callable[[], bool] | None, step: int) -> None:
        """From here until `unwatch_cancel`, a Cancel asked during denoising step `step` stops the job inside
        the step. `requested` is read on the ranks that have it (those on the coordinator's machine); the
        others pass None."""
        self._cancel_requested = requested or _never
        self._cancel_step = step
        self._carried_cancel = False

    def unwatch_cancel(self) -> None:
        self._cancel_requested = None

    def cancel_checkpoint(self) -> None:
        """Once per layer, at the same place on every rank. Raises JobCancelled when a Cancel was asked.

        One rank reads the request itself. Several ranks cost nothing when an all-gather has carried the
        flag since the last checkpoint (every exact-mode temporal norm does); otherwise they agree in one
        small broadcast from the root."""
        if self._cancel_requested is None:
            return
        if self.world_size == 1:
            self.poll_cancel()
        elif self._carried_cancel:
            self._carried_cancel = False
        elif self.agree(self._cancel_requested()):
            raise JobCancelled(self._cancel_step)

    def poll_cancel(self) -> bool:
        """Inside a long stretch of one rank's own work (a layer's chunks). A lone rank that sees a Cancel
        stops at once. With several ranks, True tells the caller to skip the rest of its work: the next
        all-gather or checkpoint carries the request and every rank stops there, and the skipped work's
        result is never used."""
        if self._cancel_requested is None or not self._cancel_requested():
            return False
        if self.world_size == 1:
            raise JobCancelled(self._cancel_step)
        return True

    def failed_anywhere(self, failed_here: bool) -> list[int]:
        """The ranks that report a failure, known to every rank at the same point (one all-gather)."""
        if self.world_size == 1:
            return [0] if failed_here else []
        flags = self.all_gather(torch.tensor([1 if failed_here else 0], dtype=torch.int32, device=self.device))
        return [rank for rank, flag in enumerate(flags) if flag.item()]

    def gather_frames_to_root(
        self, own: torch.Tensor, layout: FrameLayout, out: torch.Tensor | None = None
    ) -> torch.Tensor | None:
        """Concatenates every rank's frames (leading dim) on rank 0, in rank order; None elsewhere."""
        if self.world_size == 1:
            if out is None:
                return own
            out.copy_(own)
            return out
        if self.rank != 0:
            dist.send(own.contiguous(), 0, group=self.group)
            return None
        if out is None:
            out = own.new_empty((layout.total, *own.shape[1:]))
        out[: layout.counts[0]].copy_(own)
        for sender in range(1, self.world_size):
            start, end = layout.span(sender)
            buffer = own.new_empty((end - start, *own.shape[1:]))
            dist.recv(buffer, sender, group=self.group)
            out[start:end].copy_(buffer)
        return out
