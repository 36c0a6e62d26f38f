"""One engine per rank: keeps a patched model warm and runs jobs on it through the model's family."""

from __future__ import annotations

import gc
from collections.abc import Hashable
from typing import Any

import torch

from .admission import check_fits, largest_fitting, sharing_ranks
from .comm import Communicator
from .context import TemporalContext
from .contract import AllocateFn, CancelFn, GenerationResult, PreviewFn, ProgressFn, RunControl, RunStats
from .errors import PreparationFailed, mark_in_step
from .family import MemoryNeed, ModelFamily, family
from .job import JobSpec, ModelSpec
from .latent_job import LatentJob
from .layout import FrameLayout
from .stopwatch import Stopwatch


class Engine:
    """Satisfies contract.JobEngine."""

    def __init__(self, comm: Communicator):
        self.comm = comm
        self.ctx = TemporalContext(comm)
        self.loads = 0
        self._loaded: Any = None
        self._family: ModelFamily | None = None
        self._key: Hashable | None = None
        self._sharing: int | None = None  # ranks that share this rank's memory, learnt at the first job
        self._capacity = 0  # the most frames of the current job that fit this rank's memory (0: unknown)

    def model(self, spec: ModelSpec) -> Any:
        """The loaded, patched model for `spec`; reloads only when its family says the weights changed.

        Attention settings are not part of the key: patched layers read them from the context at call
        time, so a settings change needs no reload.
        """
        kind = family(spec.family)
        key = (spec.family, kind.model_key(spec))
        if self._loaded is None or key != self._key:
            self.release()
            loaded = kind.load(spec, self.comm.device)
            kind.patch(loaded, self.ctx)
            self._loaded, self._family, self._key = loaded, kind, key
            self.loads += 1
        return self._loaded

    def run(
        self,
        job: JobSpec | LatentJob,
        on_progress: ProgressFn | None = None,
        should_cancel: CancelFn | None = None,
        allocate_output: AllocateFn | None = None,
        on_preview: PreviewFn | None = None,
        preview_pixels: bool = False,
    ) -> GenerationResult:
        """on_preview: called after each denoising step with the first frame of the denoised estimate, on rank
        0 only (the rank that holds that frame); the others ignore it. preview_pixels: that frame decoded by
        the model's VAE where its family can (contract.PREVIEW_KINDS)."""
        preview = on_preview if self.comm.is_root else None
        control = RunControl.create(on_progress, should_cancel, RunStats(), preview, preview_pixels)
        control.progress(0, 1, "loading")
        loaded, job = self._prepare(job)
        control.progress(1, 1, "loading")
        kind = self._family
        assert kind is not None
        comm = self.comm
        layout = FrameLayout(job.frames, comm.world_size, job.frame_shares)
        control.stats.frames_per_rank = layout.counts
        busy = Stopwatch(comm.device)
        comm.stalls.reset()
        with self.ctx.job(layout, job.attention), torch.inference_mode(), busy.interval():
            latents = kind.denoise(loaded, job, self.ctx, control)
            frames = kind.decode(loaded, latents, self.ctx, control)
        control.stats.compute_seconds, control.stats.frame_capacity = self._rank_report(
            busy.seconds() - comm.stalls.seconds()
        )
        control.progress(0, 1, "gathering")
        own_latents = latents.permute(2, 0, 1, 3, 4).contiguous()  # frames first, for the gather
        gathered_latents = comm.gather_frames_to_root(own_latents, layout)
        gathered = None
        if frames is not None:
            out = None
            if comm.is_root and allocate_output is not None:
                out = torch.from_numpy(allocate_output((job.frames, *frames.shape[1:])))
            gathered = comm.gather_frames_to_root(frames, layout, out)
        control.progress(1, 1, "gathering")
        return GenerationResult(
            frames=None if gathered is None else gathered.cpu().numpy(),
            latents=None if gathered_latents is None else gathered_latents.permute(1, 2, 0, 3, 4).cpu(),
            stats=control.stats,
        )

    def _rank_report(self, seconds: float) -> tuple[tuple[float, ...], tuple[int, ...]]:
        """Every rank's compute seconds and frame capacity, in rank order (one small all-gather after the job)."""
        mine = torch.tensor([max(seconds, 0.0), self._capacity], dtype=torch.float64, device=self.comm.device)
        pieces = [piece.tolist() for piece in self.comm.all_gather(mine)]
        return tuple(piece[0] for piece in pieces), tuple(int(piece[1]) for piece in pieces)

    def _prepare(self, job: JobSpec | LatentJob) -> tuple[Any, JobSpec | LatentJob]:
        """Checks the job, brings its files within this rank's reach and loads its model; every rank then
        learns whether all ranks managed. Returns the model and the job as this rank reads it.

        An error here (bad settings, a broken or unsupported model file) is the job's, not the group's:
        the failing rank raises it (marked in step), the others PreparationFailed, all at the same point,
        so the ranks stay in step and the warm pool survives it.
        """
        if self._sharing is None:
            self._sharing = sharing_ranks(self.comm)
        loaded, cause = None, None
        try:
            job.validate(self.comm.world_size)
            job = family(job.model.family).localise(job, self.comm)  # collective: every rank, same point
            loaded = self.model(job.model)
            self._admit(job, loaded)
        except Exception as error:  # noqa: BLE001 - any preparation error is reported with the rank's text
            cause = error  # a failed load has released the old model already (model()); a bad job keeps it
        failed = self.comm.failed_anywhere(cause is not None)
        if cause is not None:
            raise mark_in_step(cause, failed)
        if failed:
            raise PreparationFailed(failed)
        return loaded, job

    def _admit(self, job: JobSpec | LatentJob, loaded: Any) -> None:
        """Refuses a job whose estimated peak on this rank does not fit in its device's free memory, and
        notes how many of the job's frames would (what a measured split may give this rank next time)."""
        kind = self._family
        assert kind is not None and self._sharing is not None

        def need(own: int) -> MemoryNeed | None:
            held = own + 2 * job.attention.local_window + job.attention.global_count(job.frames)  # halo, globals
            return kind.peak_bytes(loaded, job, own, min(held, job.frames))

        self._capacity = largest_fitting(need, job.frames, self.comm.device, self._sharing)
        layout = FrameLayout(job.frames, self.comm.world_size, job.frame_shares)
        mine = need(layout.counts[self.comm.rank])
        if mine is not None:
            check_fits(mine, self.comm.device, self._sharing, self._capacity)

    def release(self) -> None:
        self._loaded = self._family = self._key = None
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
