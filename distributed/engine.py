"""One engine per rank: keeps the patched model warm and runs jobs on it."""

from __future__ import annotations

import gc
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .comm import Communicator
from .context import TemporalContext
from .job import JobSpec, ModelSpec
from .loader import LoadedPipeline, load_pipeline
from .patch import PatchReport, patch_unet
from .sampling import AllocateFn, CancelFn, ProgressFn, RunStats, generate


class Engine:
    def __init__(self, comm: Communicator):
        self.comm = comm
        self.ctx = TemporalContext(comm)
        self.loads = 0
        self.last_stats = RunStats()
        self.patch_report: PatchReport | None = None
        self._pipeline: LoadedPipeline | None = None
        self._key: tuple[Any, ...] | None = None

    def pipeline(self, spec: ModelSpec) -> LoadedPipeline:
        """The loaded, patched model for `spec`; reloads only when the files or dtype change.

        Attention settings are not part of the key: patched layers read them from the context at call
        time, so a settings change needs no reload.
        """
        key = model_key(spec)
        if self._pipeline is None or key != self._key:
            self.release()
            pipe = load_pipeline(spec, self.comm.device)
            self.patch_report = patch_unet(pipe.unet, self.ctx)
            self._pipeline, self._key = pipe, key
            self.loads += 1
        return self._pipeline

    def run(
        self,
        job: dict[str, Any] | JobSpec,
        on_progress: ProgressFn | None = None,
        should_cancel: CancelFn | None = None,
        allocate_output: AllocateFn | None = None,
    ) -> np.ndarray | None:
        spec = job if isinstance(job, JobSpec) else JobSpec.from_dict(job)
        spec.validate(self.comm.world_size)
        if on_progress:
            on_progress(0, 1, "loading")
        pipe = self.pipeline(spec.model)
        if on_progress:
            on_progress(1, 1, "loading")
        self.last_stats = RunStats()
        return generate(pipe, spec, self.ctx, on_progress, should_cancel, allocate_output, self.last_stats)

    def release(self) -> None:
        self._pipeline = None
        self._key = None
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def model_key(spec: ModelSpec) -> tuple[Any, ...]:
    """Files identify a model by path, size and modification time, so an edited file reloads."""
    stamps = []
    for location in (spec.base, spec.unet):
        if not location:
            continue
        path = Path(location)
        files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        for file in files:
            try:
                stat = os.stat(file)
                stamps.append((str(file), stat.st_size, stat.st_mtime_ns))
            except OSError:
                stamps.append((str(file), -1, -1))
    return (spec.dtype, tuple(stamps))
