"""Plain data from rank 0 to every rank with torch.distributed, so local and remote ranks get jobs alike."""

from __future__ import annotations

import json
from typing import Any

import torch
import torch.distributed as dist


def broadcast_json(obj: Any, rank: int, world_size: int, device: torch.device) -> Any:
    """Rank 0's `obj` on every rank: a length, then the JSON bytes (two broadcasts NCCL and gloo both do)."""
    if world_size == 1:
        return obj
    payload = json.dumps(obj).encode() if rank == 0 else b""
    length = torch.tensor([len(payload)], dtype=torch.int64, device=device)
    dist.broadcast(length, 0)
    size = int(length.item())
    if rank == 0:
        data = torch.frombuffer(bytearray(payload), dtype=torch.uint8).to(device)
    else:
        data = torch.empty(size, dtype=torch.uint8, device=device)
    dist.broadcast(data, 0)
    if rank == 0:
        return obj
    return json.loads(bytes(data.cpu().numpy()).decode())


def self_test(rank: int, world_size: int, device: torch.device) -> None:
    """A tiny all_reduce right after the group forms: a broken link shows up now, not mid-job."""
    value = torch.full((1,), float(rank + 1), device=device)
    dist.all_reduce(value)
    expected = world_size * (world_size + 1) / 2
    if abs(float(value.item()) - expected) > 1e-3:
        raise RuntimeError(f"process-group self-test: all_reduce gave {value.item()}, expected {expected}")
