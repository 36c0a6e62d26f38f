"""The diffusers UNet3D family (ModelScope, Zeroscope, VideoCrafter2's port) behind the engine's seam."""

from __future__ import annotations

import os
from collections.abc import Hashable
from dataclasses import replace
from pathlib import Path

import torch

from ...engine.comm import Communicator
from ...engine.context import TemporalContext
from ...engine.contract import RunControl
from ...engine.family import LatentLayout, MemoryNeed
from ...engine.job import JobSpec, ModelSpec
from ...engine.sampling import denoise
from .loader import LoadedPipeline, load_pipeline
from .memory import DECODE_CHUNK, job_peak_bytes
from .model import run_unet3d
from .patch import patch_unet
from .text import frame_text


class UNet3DFamily:
    name = "unet3d"

    def localise(self, job: JobSpec, comm: Communicator) -> JobSpec:
        return job  # a pipeline folder is read where the job names it, on every machine (docs/2)

    def model_key(self, model: ModelSpec) -> Hashable:
        """Files by path, size and modification time, so an edited file reloads."""
        stamps = []
        for location in (model.base, model.unet):
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
        return (model.dtype, tuple(stamps))

    def load(self, model: ModelSpec, device: torch.device) -> LoadedPipeline:
        return load_pipeline(model, device)

    def patch(self, loaded: LoadedPipeline, ctx: TemporalContext) -> None:
        patch_unet(loaded.unet, ctx)

    def latent_layout(self, loaded: LoadedPipeline) -> LatentLayout:
        return LatentLayout(channels=loaded.unet.config.in_channels, spatial_factor=loaded.vae_scale)

    def peak_bytes(self, loaded: LoadedPipeline, job: JobSpec, own: int, held: int) -> MemoryNeed:
        factor = loaded.vae_scale
        needed = job_peak_bytes(
            loaded.unet.config.block_out_channels,
            loaded.vae.config.block_out_channels,
            loaded.dtype,
            loaded.device,
            held,
            (job.height // factor, job.width // factor),
            (job.height, job.width),
            (loaded.tokenizer.model_max_length, loaded.unet.config.cross_attention_dim),
        )
        return MemoryNeed(needed, f"{own} frames per worker at {job.width}x{job.height}")

    def denoise(self, loaded: LoadedPipeline, job: JobSpec, ctx: TemporalContext, control: RunControl) -> torch.Tensor:
        start, end = ctx.span
        text = frame_text(loaded, job, range(start, end))
        layout = self.latent_layout(loaded)
        factor = layout.spatial_factor
        shape = (1, layout.channels, end - start, job.height // factor, job.width // factor)
        frame_index = torch.arange(start, end, device=loaded.device)

        def predict(model_input: torch.Tensor, timestep: torch.Tensor) -> torch.Tensor:
            return run_unet3d(loaded.unet, model_input, timestep, text, job.fps, frame_index)

        if control.preview is not None and control.preview_pixels:
            control = replace(control, preview_decoder=lambda frame: _pixels(loaded, frame[:, :, 0]).unsqueeze(2))
        return denoise(predict, loaded.scheduler_config, shape, job, ctx, control, loaded.device, loaded.dtype)

    def decode(
        self, loaded: LoadedPipeline, latents: torch.Tensor, ctx: TemporalContext, control: RunControl
    ) -> torch.Tensor:
        """Per-frame VAE decode of this rank's frames to (F, H, W, 3) uint8: no exchange needed.

        Every rank goes through as many rounds as the largest share needs (a rank with fewer frames has
        empty ones), and a Cancel is agreed before each, so all ranks stop at the same round."""
        assert ctx.layout is not None
        frames = latents[0].permute(1, 0, 2, 3)
        pieces = []
        rounds = -(-max(ctx.layout.counts) // DECODE_CHUNK)
        for number in range(rounds):
            control.check_cancel(ctx.comm, number, phase="decoding")
            chunk = frames[number * DECODE_CHUNK : (number + 1) * DECODE_CHUNK]
            if len(chunk):
                images = _pixels(loaded, chunk)
                pieces.append(((images / 2 + 0.5).clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1))
            control.progress(number + 1, rounds, "decoding")
        return torch.cat(pieces)


def _pixels(loaded: LoadedPipeline, frames: torch.Tensor) -> torch.Tensor:
    """(N, C, h, w) latents in the model's scale, decoded by the pipeline's VAE: (N, 3, H, W) float32, about
    [-1, 1]."""
    vae = loaded.vae
    return vae.decode((frames / vae.config.scaling_factor).to(loaded.dtype)).sample.float()
