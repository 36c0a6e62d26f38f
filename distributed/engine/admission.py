"""Memory admission: a job's estimated peak per rank against what its device has free, before it runs."""

from __future__ import annotations

import socket
import zlib
from collections.abc import Callable

import torch

from .comm import Communicator
from .errors import InsufficientMemoryError
from .family import MemoryNeed
from .host_memory import available_bytes

GIB = 2**30


def free_bytes(device: torch.device) -> int:
    """Memory a new allocation can still get on `device`: device memory on CUDA (plus what torch caches
    but does not use), the host's available memory (within any cgroup limit) otherwise."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    return available_bytes()


def sharing_ranks(comm: Communicator) -> int:
    """How many ranks draw on the same memory as this one (the host's RAM, or one CUDA device); one
    all-gather, so every rank must call it at the same point."""
    device = comm.device
    where = f"{socket.gethostname()}|{device if device.type == 'cuda' else 'host'}"
    mine = torch.tensor([zlib.crc32(where.encode())], dtype=torch.int64, device=device)
    return sum(int(piece.item() == mine.item()) for piece in comm.all_gather(mine))


def check_fits(need: MemoryNeed, device: torch.device, sharing: int, fitting: int = 0) -> None:
    """Raises InsufficientMemoryError, with the estimate, what is free and what to change, when `sharing`
    ranks that each need `need.bytes` cannot fit in the device's free memory. fitting: how many of those
    frames would fit per worker (largest_fitting; 0: not known), for the message."""
    free = free_bytes(device)
    needed = need.bytes
    if needed * sharing <= free:
        return
    shared = f"; {sharing} workers share this memory, {needed * sharing / GIB:.1f} GiB in all" if sharing > 1 else ""
    room = f" (about {fitting} of those frames fit per worker now)" if fitting > 0 else ""
    raise InsufficientMemoryError(
        f"this job needs about {needed / GIB:.1f} GiB per worker ({need.holding}{shared}) but {free / GIB:.1f} GiB "
        f"is free on {device}. Use more workers so each holds fewer frames{room}, fewer frames, or a smaller width "
        "and height"
    )


def largest_fitting(needs: Callable[[int], MemoryNeed | None], most: int, device: torch.device, sharing: int) -> int:
    """The most frames (1 to `most`) whose estimated peak, `needs(frames)`, `sharing` ranks can hold in the
    device's free memory now; 0 when the estimate is unknown or not even one frame fits. The estimate grows
    with frames, so a bisection finds it."""
    free = free_bytes(device)

    def fits(frames: int) -> bool:
        need = needs(frames)
        return need is not None and need.bytes * sharing <= free

    if not fits(1):
        return 0
    low, high = 1, most  # fits(low) holds; the answer is in [low, high]
    while low < high:
        middle = (low + high + 1) // 2
        if fits(middle):
            low = middle
        else:
            high = middle - 1
    return low
