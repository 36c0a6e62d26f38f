"""A stand-in engine with the real engine's contract (engine.contract.JobEngine), for pool tests about process
handling, where loading a real model would only make every worker start slower.

Loaded by file path inside worker processes (PoolConfig.engine_factory). Frame t of a job is filled with
(seed + t) % 256; each denoising step sleeps briefly; rank 0 decides about cancel and broadcasts it.
A job whose negative prompt is "stand-in: hang rank N" makes rank N stop answering (a hung rank);
"stand-in: long first step" keeps every rank in a first step that never ends (a step far longer than a
cancel's grace); "stand-in: grow memory" makes every rank allocate 64 MiB every 50 ms (up to 4 GiB each).
"""

from __future__ import annotations

import importlib
import time
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

STEP_S = 0.05


class StandInEngine:
    def __init__(self, rank: int, world_size: int, device: torch.device):
        self.rank, self.world_size, self.device = rank, world_size, device
        self.loads = 0
        self._key: Any = None
        # The engine's own types, registered under the workers' module name.
        self._cancelled = importlib.import_module("video_infinity_engine.engine.errors").JobCancelled
        contract = importlib.import_module("video_infinity_engine.engine.contract")
        self._result, self._stats = contract.GenerationResult, contract.RunStats

    def run(
        self, job, on_progress=None, should_cancel=None, allocate_output=None, on_preview=None, preview_pixels=False
    ):
        progress = on_progress or (lambda step, total, phase: None)
        if self._key != job.model.base:
            self.loads += 1
            self._key = job.model.base
        frames, height, width, steps = job.frames, job.height, job.width, job.steps
        if job.negative_prompt == f"stand-in: hang rank {self.rank}":
            time.sleep(3600)
        if job.negative_prompt == "stand-in: long first step":
            progress(0, steps, "denoising")
            time.sleep(3600)
        if job.negative_prompt == "stand-in: grow memory":
            held = []
            for _ in range(64):
                held.append(np.ones(64 * 2**20, np.uint8))  # written, so the pages are really taken
                time.sleep(STEP_S)
        for step in range(steps):
            flag = torch.tensor([int(bool(should_cancel and should_cancel()))])
            if self.world_size > 1:
                dist.broadcast(flag, 0)
            if flag.item():
                raise self._cancelled(step)
            time.sleep(STEP_S)
            progress(step + 1, steps, "denoising")
        if frames % self.world_size:
            raise ValueError("the stand-in engine needs frames divisible by the worker count")
        per_rank = frames // self.world_size
        first = self.rank * per_rank
        mine = torch.empty((per_rank, height, width, 3), dtype=torch.uint8)
        for index in range(per_rank):
            mine[index] = (job.seed + first + index) % 256
        parts = [torch.empty_like(mine) for _ in range(self.world_size)]
        if self.world_size > 1:
            dist.all_gather(parts, mine)
        else:
            parts = [mine]
        if self.rank != 0:
            return self._result(frames=None, latents=None, stats=self._stats())
        shape = (frames, height, width, 3)
        out = allocate_output(shape) if allocate_output else np.empty(shape, np.uint8)
        out[...] = torch.cat(parts).numpy()
        return self._result(frames=out, latents=None, stats=self._stats())

    def release(self) -> None:
        self._key = None


def make_engine(rank: int, world_size: int, device: torch.device) -> StandInEngine:
    return StandInEngine(rank, world_size, device)
