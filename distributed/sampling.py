"""The denoising loop, owned here so every rank makes the same collective calls in the same order."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from diffusers import DDIMScheduler, DPMSolverMultistepScheduler

from .context import TemporalContext
from .errors import JobCancelled
from .job import JobSpec
from .layout import FrameLayout
from .loader import LoadedPipeline
from .models.unet3d import run_unet3d
from .prompts import frame_weights

ProgressFn = Callable[[int, int, str], None]
CancelFn = Callable[[], bool]
AllocateFn = Callable[[tuple[int, ...]], np.ndarray]
DECODE_CHUNK = 8


@dataclass
class RunStats:
    bytes_sent_per_step: list[int] = field(default_factory=list)
    bytes_received_per_step: list[int] = field(default_factory=list)
    calls_per_step: list[int] = field(default_factory=list)  # communication calls of the UNet evaluation
    frames_per_rank: tuple[int, ...] = ()
    latents: torch.Tensor | None = None  # final latents of the whole video (C, T, h, w), rank 0 only


def make_scheduler(name: str, config: dict[str, Any]) -> Any:
    """DDIM, DPM++ 2M, or SDE-DPM++ as the reference uses it (linspace timesteps, no Karras sigmas)."""
    if name == "ddim":
        return DDIMScheduler.from_config(config)
    common = dict(solver_order=2, use_karras_sigmas=False, timestep_spacing="linspace")
    if name == "dpmpp_2m":
        return DPMSolverMultistepScheduler.from_config(config, algorithm_type="dpmsolver++", **common)
    if name == "sde_dpmpp":
        return DPMSolverMultistepScheduler.from_config(config, algorithm_type="sde-dpmsolver++", **common)
    raise ValueError(f"unknown sampler {name!r}")


def encode_text(pipe: LoadedPipeline, prompts: list[str]) -> torch.Tensor:
    tokenizer = pipe.tokenizer
    tokens = tokenizer(
        prompts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True, return_tensors="pt"
    )
    return pipe.text_encoder(tokens.input_ids.to(pipe.device))[0]


def frame_text(pipe: LoadedPipeline, spec: JobSpec, frames: range) -> torch.Tensor:
    """(2, F, L, D): unconditional then conditional embedding of each of the given global frames."""
    prompts = [segment.prompt for segment in spec.prompts]
    embeddings = encode_text(pipe, [spec.negative_prompt, *prompts]).float()
    weights = frame_weights(spec.prompts, frames, spec.blend).to(embeddings)
    cond = torch.einsum("fs,sld->fld", weights, embeddings[1:])
    uncond = embeddings[:1].expand(len(frames), -1, -1)
    return torch.stack([uncond, cond]).to(pipe.dtype)


def initial_noise(shape: tuple[int, ...], layout: FrameLayout, rank: int, spec: JobSpec, step: int | None = None):
    """Exact: one global tensor from the seed, sliced by rank (the same video for any rank count).
    Reference: an independent tensor per rank from seed + rank."""
    start, end = layout.span(rank)
    generator = torch.Generator("cpu")
    if spec.attention.mode == "exact":
        salt = 0 if step is None else 1_000_003 * (step + 1)
        generator.manual_seed((spec.seed + salt) % (2**63))
        full = torch.randn((*shape[:2], layout.total, *shape[3:]), generator=generator)
        return full[:, :, start:end].clone()
    salt = 0 if step is None else 7_919 * (step + 1)
    generator.manual_seed((spec.seed + rank + salt) % (2**63))
    return torch.randn((*shape[:2], end - start, *shape[3:]), generator=generator)


@torch.inference_mode()
def generate(
    pipe: LoadedPipeline,
    spec: JobSpec,
    ctx: TemporalContext,
    on_progress: ProgressFn | None = None,
    should_cancel: CancelFn | None = None,
    allocate_output: AllocateFn | None = None,
    stats: RunStats | None = None,
) -> np.ndarray | None:
    comm = ctx.comm
    progress = on_progress or (lambda step, total, phase: None)
    layout = FrameLayout(spec.frames, comm.world_size)
    start, end = layout.span(comm.rank)
    stats = stats if stats is not None else RunStats()
    stats.frames_per_rank = layout.counts
    ctx.begin_job(layout, spec.attention)
    try:
        text = frame_text(pipe, spec, range(start, end))
        scheduler = make_scheduler(spec.sampler, pipe.scheduler_config)
        scheduler.set_timesteps(spec.steps)
        channels = pipe.unet.config.in_channels
        shape = (1, channels, end - start, spec.height // 8, spec.width // 8)
        latents = initial_noise(shape, layout, comm.rank, spec).to(pipe.device) * scheduler.init_noise_sigma
        stochastic = spec.sampler == "sde_dpmpp"
        total = len(scheduler.timesteps)
        for index, timestep in enumerate(scheduler.timesteps):
            if comm.agree(bool(should_cancel and comm.is_root and should_cancel())):
                raise JobCancelled(index)
            comm.reset_counters()
            ctx.timestep = float(timestep)
            model_input = scheduler.scale_model_input(torch.cat([latents, latents]), timestep)
            prediction = run_unet3d(pipe.unet, model_input.to(pipe.dtype), timestep, text, spec.fps).float()
            uncond, cond = prediction.chunk(2)
            guided = uncond + spec.cfg * (cond - uncond)
            extra = {}
            if stochastic:
                extra["variance_noise"] = initial_noise(shape, layout, comm.rank, spec, step=index).to(pipe.device)
            latents = scheduler.step(guided, timestep, latents, **extra).prev_sample
            stats.bytes_sent_per_step.append(comm.bytes_sent)
            stats.bytes_received_per_step.append(comm.bytes_received)
            stats.calls_per_step.append(comm.calls)
            progress(index + 1, total, "denoising")
        frames = decode(pipe, latents, progress)
    finally:
        ctx.end_job()
    progress(0, 1, "gathering")
    own_latents = latents[0].permute(1, 0, 2, 3).contiguous()  # frames first, for the gather
    gathered_latents = comm.gather_frames_to_root(own_latents, layout)
    if gathered_latents is not None:
        stats.latents = gathered_latents.permute(1, 0, 2, 3).cpu()
    out = None
    if comm.is_root and allocate_output is not None:
        out = torch.from_numpy(allocate_output((spec.frames, *frames.shape[1:])))
    gathered = comm.gather_frames_to_root(frames, layout, out)
    progress(1, 1, "gathering")
    return None if gathered is None else gathered.cpu().numpy()


def decode(pipe: LoadedPipeline, latents: torch.Tensor, progress: ProgressFn) -> torch.Tensor:
    """Per-frame VAE decode of this rank's frames to (F, H, W, 3) uint8."""
    vae = pipe.vae
    frames = latents[0].permute(1, 0, 2, 3) / vae.config.scaling_factor
    pieces = []
    chunks = range(0, frames.shape[0], DECODE_CHUNK)
    for number, first in enumerate(chunks):
        images = vae.decode(frames[first : first + DECODE_CHUNK].to(pipe.dtype)).sample.float()
        pieces.append(((images / 2 + 0.5).clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1))
        progress(number + 1, len(chunks), "decoding")
    return torch.cat(pieces)
