"""What crosses between the engine and its callers (the pool's workers, tests, scripts): typed, not dicts."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

import numpy as np
import torch

from .comm import Communicator
from .errors import JobCancelled

if TYPE_CHECKING:
    from .job import JobSpec
    from .latent_job import LatentJob

ProgressFn = Callable[[int, int, str], None]  # (step, total, phase)
# (step, total, the first frame of the video's current denoised estimate, float32 on the CPU: latents (1, C, 1,
# h, w) in the model's space, as ComfyUI's samplers hand them to their previewers, or pixels (see PREVIEW_KINDS))
PreviewFn = Callable[[int, int, torch.Tensor], None]
# What a watcher wants to see after each step: nothing, the latent frame (drawn by ComfyUI's previewer), or
# pixels (the frame decoded by the model's own VAE, for latents whose colours no previewer knows: (1, 3, 1,
# H, W) in [-1, 1]; a family that cannot decode sends latents).
PREVIEW_KINDS = ("none", "latent", "pixels")
CancelFn = Callable[[], bool]
AllocateFn = Callable[[tuple[int, ...]], np.ndarray]  # where rank 0 should gather the frames

PHASES = ("loading", "denoising", "decoding", "gathering")


@dataclass
class RunStats:
    """Communication per denoising step of this rank, the split of the video and each rank's compute time."""

    bytes_sent_per_step: list[int] = field(default_factory=list)
    bytes_received_per_step: list[int] = field(default_factory=list)
    calls_per_step: list[int] = field(default_factory=list)  # communication calls of one model evaluation
    rounds_per_step: list[int] = field(default_factory=list)  # waits of one model evaluation (comm.rounds)
    frames_per_rank: tuple[int, ...] = ()
    # Every rank's seconds of its own work in the job (denoising and decoding, less its waits for the
    # others), known to every rank after the job: what balances the next split (pool.balance).
    compute_seconds: tuple[float, ...] = ()
    # Every rank's largest share of this job's frames that its memory would hold (0: unknown), for the same.
    frame_capacity: tuple[int, ...] = ()


@dataclass
class GenerationResult:
    """One job's outcome on one rank. Frames and latents are gathered on rank 0 only (None elsewhere)."""

    frames: np.ndarray | None  # (T, H, W, 3) uint8; None for latent jobs
    latents: torch.Tensor | None  # (B, C, T, h, w) float32 (B videos: 1 but for batched Wan latents), model scale
    stats: RunStats


class JobEngine(Protocol):
    """What a worker needs from an engine: run jobs, count model loads, let go of memory."""

    loads: int

    def run(
        self,
        job: JobSpec | LatentJob,
        on_progress: ProgressFn | None = None,
        should_cancel: CancelFn | None = None,
        allocate_output: AllocateFn | None = None,
        on_preview: PreviewFn | None = None,
        preview_pixels: bool = False,
    ) -> GenerationResult: ...

    def release(self) -> None: ...


@dataclass
class RunControl:
    """The hooks of one running job, handed to the model family."""

    progress: ProgressFn
    should_cancel: CancelFn | None
    stats: RunStats
    preview: PreviewFn | None = None  # set on the rank that holds the video's first frame (rank 0)
    preview_pixels: bool = False  # the family decodes the preview frame with its VAE where it can
    # Set by a family that honours preview_pixels: (1, C, 1, h, w) latents -> (1, 3, 1, H, W) pixels, on the device
    preview_decoder: Callable[[torch.Tensor], torch.Tensor] | None = None

    @classmethod
    def create(
        cls,
        progress: ProgressFn | None,
        should_cancel: CancelFn | None,
        stats: RunStats,
        preview: PreviewFn | None = None,
        preview_pixels: bool = False,
    ) -> RunControl:
        return cls(progress or (lambda step, total, phase: None), should_cancel, stats, preview, preview_pixels)

    def show_preview(self, step: int, total: int, denoised: torch.Tensor) -> None:
        """Hands the preview hook the first frame of `denoised`, (B, C, frames, h, w), if anyone watches (see
        `preview`: callers that must compute `denoised` first check it); decoded first, on the device, where the
        family set a decoder."""
        if self.preview is None:
            return
        frame = denoised[:1, :, :1].detach()
        if self.preview_decoder is not None:
            frame = self.preview_decoder(frame).clamp(-1, 1)
        self.preview(step, total, frame.to("cpu", torch.float32))

    def check_cancel(self, comm: Communicator, step: int, phase: str = "denoising") -> None:
        """Rank 0 decides and every rank learns it in one collective, so all stop at the same step. Until
        the next check, a Cancel stops the step from inside, at its next exchange or checkpoint."""
        asked = self.should_cancel
        if comm.agree(bool(asked and comm.is_root and asked())):
            raise JobCancelled(step, phase)
        comm.watch_cancel(asked, step)

    def record_step(self, comm: Communicator) -> None:
        """The communication of the step just run, as the communicator counted it since its last reset."""
        self.stats.bytes_sent_per_step.append(comm.bytes_sent)
        self.stats.bytes_received_per_step.append(comm.bytes_received)
        self.stats.calls_per_step.append(comm.calls)
        self.stats.rounds_per_step.append(comm.rounds)
