"""Memory admission: a job's estimated peak per rank against what its device has free, before it runs."""

from __future__ import annotations

import socket
import zlib
from dataclasses import dataclass

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


@dataclass(frozen=True)
class Placement:
    """Which ranks share memory with this one, learnt once per engine."""

    sharing_memory: int  # ranks that draw on this rank's memory (the host's RAM, or one CUDA device)
    on_host: int  # ranks on this machine
    host_index: int  # this rank's position among them


def placement(comm: Communicator) -> Placement:
    """This rank's Placement; two all-gathers, so every rank must call it at the same point."""
    host = socket.gethostname()
    device = comm.device
    memory = f"{host}|{device if device.type == 'cuda' else 'host'}"
    memories = comm.all_gather_ints(zlib.crc32(memory.encode()))
    hosts = comm.all_gather_ints(zlib.crc32(host.encode()))
    mine = hosts[comm.rank]
    return Placement(
        sharing_memory=memories.count(memories[comm.rank]),
        on_host=hosts.count(mine),
        host_index=hosts[: comm.rank].count(mine),
    )


def check_fits(need: MemoryNeed, device: torch.device, sharing: int) -> None:
    """Raises InsufficientMemoryError, with the estimate, what is free and what to change, when `sharing`
    ranks that each need `need.bytes` cannot fit in the device's free memory."""
    free = free_bytes(device)
    needed = need.bytes
    if needed * sharing <= free:
        return
    shared = f"; {sharing} workers share this memory, {needed * sharing / GIB:.1f} GiB in all" if sharing > 1 else ""
    raise InsufficientMemoryError(
        f"this job needs about {needed / GIB:.1f} GiB per worker ({need.holding}{shared}) but {free / GIB:.1f} GiB "
        f"is free on {device}. Use more workers so each holds fewer frames, fewer frames, or a smaller width and "
        "height"
    )
