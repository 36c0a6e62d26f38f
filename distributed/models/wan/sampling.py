"""ComfyUI's own samplers on one rank's clip, with every random draw taken from the whole video.

The latent, its noise and any per-frame conditioning are whole-video tensors sliced to the rank's frames;
ancestral and SDE samplers get a noise sampler that draws noise for the whole video and keeps the rank's
part, exactly as ComfyUI would draw it on one device. So the result does not depend on the worker count,
and on one worker with a window covering the video it equals ComfyUI's KSampler.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import torch

from ...engine.context import TemporalContext
from ...engine.contract import RunControl
from ...engine.errors import InvalidSettingsError
from ...engine.latent_job import ComfySampling
from .inputs import is_tensor_list

# Samplers whose step count depends on the data: ranks would disagree on how many model calls to make.
ADAPTIVE_SAMPLERS = ("dpm_adaptive",)
# Samplers that draw from a Brownian tree (by default on the CPU, except the _gpu variants).
BROWNIAN_SAMPLERS = (
    "dpmpp_sde",
    "dpmpp_sde_gpu",
    "dpmpp_2m_sde",
    "dpmpp_2m_sde_gpu",
    "dpmpp_2m_sde_heun",
    "dpmpp_2m_sde_heun_gpu",
    "dpmpp_3m_sde",
    "dpmpp_3m_sde_gpu",
)
# Samplers ComfyUI builds itself instead of through ksampler(name); they draw no noise while sampling.
SPECIAL_SAMPLERS = ("uni_pc", "uni_pc_bh2", "ddim", "dpm_fast")


def check_sampling(sampling: ComfySampling, samplers: tuple[str, ...], schedulers: tuple[str, ...]) -> None:
    if sampling.sampler_name not in samplers or sampling.sampler_name in ADAPTIVE_SAMPLERS:
        usable = [name for name in samplers if name not in ADAPTIVE_SAMPLERS]
        raise InvalidSettingsError(
            f"sampler {sampling.sampler_name!r} cannot run clip-parallel (its step count depends on the data, so "
            f"workers would disagree); use one of {usable}"
            if sampling.sampler_name in ADAPTIVE_SAMPLERS
            else f"sampler {sampling.sampler_name!r} is unknown; use one of {usable}"
        )
    if sampling.scheduler not in schedulers:
        raise InvalidSettingsError(f"scheduler {sampling.scheduler!r} is unknown; use one of {list(schedulers)}")


def sample_clip(
    comfy: Any,
    model: Any,
    ctx: TemporalContext,
    latent: torch.Tensor,
    positive: list,
    negative: list,
    sampling: ComfySampling,
    control: RunControl,
    noise_mask: torch.Tensor | None = None,
    batch_index: list[int] | None = None,
) -> torch.Tensor:
    """This rank's frames of the sampled latent. `latent` is the whole video (B, C, T, h, w), any batch;
    conditioning values with a frame axis of T are sliced to the rank's frames. `noise_mask` (the LATENT's,
    0 where a frame is kept, as Wan 2.2's image-to-video latent marks its first frame) is shaped for the
    whole video as ComfyUI shapes it, then sliced the same way. `batch_index` (the LATENT's) picks each
    video's noise from the seed as core KSampler does."""
    start, end = ctx.span
    total = latent.shape[2]
    latent = comfy.sample.fix_empty_latent_channels(model, latent)
    if sampling.add_noise:
        noise = comfy.sample.prepare_noise(latent, sampling.seed, batch_index)
    else:
        noise = torch.zeros(latent.shape, dtype=latent.dtype, layout=latent.layout, device="cpu")
    device = model.load_device
    own_mask = None
    if noise_mask is not None:
        own_mask = comfy.sampler_helpers.prepare_mask(noise_mask, noise.shape, device)[:, :, start:end]
    helper = comfy.samplers.KSampler(
        model, sampling.steps, device, sampling.sampler_name, sampling.scheduler, sampling.denoise, model.model_options
    )
    sigmas = _sigmas(helper.sigmas, sampling)
    own_latent = latent[:, :, start:end]
    if sigmas is None:
        return own_latent.clone()
    sampler = _sampler(comfy, sampling, tuple(latent.shape), (start, end), sigmas, device)
    total_steps = len(sigmas) - 1

    comm = ctx.comm

    def on_step(step: int, denoised: Any, x: Any, steps: int) -> None:
        control.record_step(comm)
        control.show_preview(step + 1, total_steps, denoised)
        control.progress(step + 1, total_steps, "denoising")
        control.check_cancel(comm, step + 1)
        comm.reset_counters()  # after the cancel check, so a step's count holds only the model's exchanges

    control.check_cancel(comm, 0)
    comm.reset_counters()
    samples = comfy.samplers.sample(
        model,
        noise[:, :, start:end],
        _own_frames(positive, start, end, total),
        _own_frames(negative, start, end, total),
        sampling.cfg,
        device,
        sampler,
        sigmas,
        model.model_options,
        latent_image=own_latent,
        denoise_mask=own_mask,
        callback=on_step,
        disable_pbar=True,
        seed=sampling.seed,
    )
    return samples.to("cpu", torch.float32)


def _sigmas(sigmas: torch.Tensor, sampling: ComfySampling) -> torch.Tensor | None:
    """KSamplerAdvanced's step window; None when nothing is left to sample."""
    last, first = sampling.end_at_step, sampling.start_at_step
    if last < len(sigmas) - 1:
        sigmas = sigmas[: last + 1].clone()
        if not sampling.return_with_leftover_noise:
            sigmas[-1] = 0
    if first >= len(sigmas) - 1:
        return None
    return sigmas[first:]


def _sampler(
    comfy: Any,
    sampling: ComfySampling,
    shape: tuple[int, ...],
    span: tuple[int, int],
    sigmas: torch.Tensor,
    device: Any,
) -> Any:
    name = sampling.sampler_name
    if name in SPECIAL_SAMPLERS:
        return comfy.samplers.sampler_object(name)
    function = getattr(comfy.k_diffusion.sampling, f"sample_{name}")
    if "noise_sampler" not in inspect.signature(function).parameters:
        return comfy.samplers.ksampler(name)
    whole = _whole_video_noise(comfy, name, shape, sampling.seed, sigmas, device)
    start, end = span

    def own_part(sigma: Any, sigma_next: Any) -> torch.Tensor:
        return whole(sigma, sigma_next)[:, :, start:end]

    return comfy.samplers.ksampler(name, {"noise_sampler": own_part})


def _whole_video_noise(
    comfy: Any, name: str, shape: tuple[int, ...], seed: int, sigmas: torch.Tensor, device: Any
) -> Callable[[Any, Any], torch.Tensor]:
    """The noise sampler ComfyUI would build for the whole video on one device."""
    k_sampling = comfy.k_diffusion.sampling
    like = torch.zeros(shape, dtype=torch.float32, device=device)
    if name in BROWNIAN_SAMPLERS:
        positive = sigmas[sigmas > 0]
        return k_sampling.BrownianTreeNoiseSampler(
            like, positive.min(), sigmas.max(), seed=seed, cpu=not name.endswith("_gpu")
        )
    return k_sampling.default_noise_sampler(like, seed=seed)


def _own_frames(conditioning: list, start: int, end: int, total: int) -> list:
    """The conditioning with every per-frame tensor (frame axis 2 of length `total`), alone or in a list (VACE's
    control latents and masks), cut to [start, end)."""

    def cut(value: Any) -> Any:
        if isinstance(value, torch.Tensor) and value.ndim == 5 and value.shape[2] == total:
            return value[:, :, start:end]
        if is_tensor_list(value):
            return [cut(item) for item in value]
        return value

    return [[tensor, {key: cut(value) for key, value in extras.items()}] for tensor, extras in conditioning]
