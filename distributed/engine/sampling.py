"""The engine's own denoising loop, shared by families that run diffusers-style noise predictors.

Owned here so every rank makes the same collective calls in the same order: classifier-free guidance
is batched the same way everywhere, and noise is drawn on the global timeline (docs/algorithm.md section 7).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from diffusers import DDIMScheduler, DPMSolverMultistepScheduler

from . import choices
from .context import TemporalContext
from .contract import RunControl
from .job import JobSpec
from .layout import FrameLayout

# (model input with the unconditional and conditional halves stacked on the batch axis, timestep) -> prediction
Predictor = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def make_scheduler(name: str, config: dict[str, Any]) -> Any:
    """DDIM, DPM++ 2M, or SDE-DPM++ as the reference uses it (linspace timesteps, no Karras sigmas)."""
    if name == "ddim":
        return DDIMScheduler.from_config(config)
    common = dict(solver_order=2, use_karras_sigmas=False, timestep_spacing="linspace")
    if name == "dpmpp_2m":
        return DPMSolverMultistepScheduler.from_config(config, algorithm_type="dpmsolver++", **common)
    if name == "sde_dpmpp":
        return DPMSolverMultistepScheduler.from_config(config, algorithm_type="sde-dpmsolver++", **common)
    raise ValueError(f"unknown sampler {name!r}; use one of {list(choices.SAMPLERS)}")


def initial_noise(
    shape: tuple[int, ...],
    layout: FrameLayout,
    rank: int,
    job: JobSpec,
    step: int | None = None,
    checkpoint: Callable[[], None] | None = None,
):
    """Exact: one global tensor from the seed, sliced by rank (the same video for any rank count).
    Reference: an independent tensor per rank from seed + rank. Frames are axis 2 of `shape`.
    checkpoint: called now and then while a long video's noise is drawn, on every rank equally often."""
    start, end = layout.span(rank)
    generator = torch.Generator("cpu")
    if job.attention.mode == "exact":
        salt = 0 if step is None else 1_000_003 * (step + 1)
        generator.manual_seed((job.seed + salt) % (2**63))
        return frames_of_randn(generator, (*shape[:2], layout.total, *shape[3:]), start, end, checkpoint)
    salt = 0 if step is None else 7_919 * (step + 1)
    generator.manual_seed((job.seed + rank + salt) % (2**63))
    return torch.randn((*shape[:2], end - start, *shape[3:]), generator=generator)


RANDN_CHUNK = 1 << 20  # elements drawn at a time; a multiple of 16, see frames_of_randn
CHUNKS_PER_CHECKPOINT = 16  # about 0.1 s of drawing on a CPU core between two checkpoints


def frames_of_randn(
    generator: torch.Generator,
    shape: tuple[int, ...],
    start: int,
    end: int,
    checkpoint: Callable[[], None] | None = None,
) -> torch.Tensor:
    """torch.randn(shape, generator=generator)[:, :, start:end], without holding the whole tensor.

    The stream is drawn in chunks whose sizes are multiples of 16 with a last chunk of at least 16: the CPU
    normal sampler transforms uniforms in groups of 16 and redraws the last 16 of a tensor whose size is not
    a multiple of 16, so such chunks give the very same values as one call (a unit test holds this).
    Only the frames [start, end) of each (batch, channel) row are kept.
    """
    rows, frames = shape[0] * shape[1], shape[2]
    per_frame = math.prod(shape[3:])
    row_length, total = frames * per_frame, math.prod(shape)
    if total < 2 * RANDN_CHUNK:
        return torch.randn(shape, generator=generator)[:, :, start:end].clone()
    out = torch.empty((rows, (end - start) * per_frame))
    wanted = [(row * row_length + start * per_frame, row * row_length + end * per_frame) for row in range(rows)]
    position = drawn = 0
    while position < total:
        if checkpoint is not None and drawn and drawn % CHUNKS_PER_CHECKPOINT == 0:
            checkpoint()  # the stream is the whole video's on every rank, so every rank gets here equally often
        drawn += 1
        size = RANDN_CHUNK if total - position >= 2 * RANDN_CHUNK else total - position  # the last chunk: >= 16
        chunk = torch.randn(size, generator=generator)
        for row, (lo, hi) in enumerate(wanted):
            a, b = max(lo, position), min(hi, position + size)
            if a < b:
                out[row, a - lo : b - lo] = chunk[a - position : b - position]
        position += size
    return out.view(*shape[:2], end - start, *shape[3:])


def denoise(
    predict: Predictor,
    scheduler_config: dict[str, Any],
    shape: tuple[int, ...],
    job: JobSpec,
    ctx: TemporalContext,
    control: RunControl,
    device: torch.device,
    dtype: torch.dtype,
) -> torch.Tensor:
    """Runs the job's scheduler from noise to this rank's final latents of `shape` (1, C, own frames, h, w)."""
    comm, layout = ctx.comm, ctx.layout
    assert layout is not None, "denoise runs inside a job (ctx.begin_job)"
    scheduler = make_scheduler(job.sampler, scheduler_config)
    scheduler.set_timesteps(job.steps)
    # A long video's noise takes a while: a Cancel meanwhile is honoured (as at step 0).
    noise = initial_noise(shape, layout, comm.rank, job, checkpoint=lambda: control.check_cancel(comm, 0))
    latents = noise.to(device) * scheduler.init_noise_sigma
    stochastic = job.sampler in choices.STOCHASTIC_SAMPLERS
    total = len(scheduler.timesteps)
    for index, timestep in enumerate(scheduler.timesteps):
        control.check_cancel(comm, index)
        comm.reset_counters()
        ctx.timestep = float(timestep)
        model_input = scheduler.scale_model_input(torch.cat([latents, latents]), timestep)
        uncond, cond = predict(model_input.to(dtype), timestep).float().chunk(2)
        guided = uncond + job.cfg * (cond - uncond)
        extra = {}
        if stochastic:
            extra["variance_noise"] = initial_noise(shape, layout, comm.rank, job, step=index).to(device)
        if control.preview is not None:
            first_frame = denoised_estimate(scheduler, latents[:, :, :1], guided[:, :, :1], timestep)
            control.show_preview(index + 1, total, first_frame)
        latents = scheduler.step(guided, timestep, latents, **extra).prev_sample
        control.record_step(comm)
        control.progress(index + 1, total, "denoising")
    return latents


def denoised_estimate(scheduler: Any, sample: torch.Tensor, prediction: torch.Tensor, timestep: Any) -> torch.Tensor:
    """The clean latents the model's prediction at `timestep` implies, read as the scheduler's config says
    (noise, velocity or the sample itself): what DDIM calls pred_original_sample, for every sampler."""
    alpha = scheduler.alphas_cumprod[int(timestep)].to(sample.device, torch.float32)
    kind = scheduler.config.prediction_type
    if kind == "epsilon":
        return (sample - (1 - alpha).sqrt() * prediction) / alpha.sqrt()
    if kind == "v_prediction":
        return alpha.sqrt() * sample - (1 - alpha).sqrt() * prediction
    return prediction
