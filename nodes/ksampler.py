"""Clip-Parallel KSampler: core KSampler(Advanced) on the graph's own Wan or LTX-Video MODEL, one long video over
many workers."""

from __future__ import annotations

import uuid
from dataclasses import replace
from pathlib import Path
from typing import Any

from ..distributed.engine import choices
from . import pool_access
from .api import CATEGORY, Attention, Pool, io
from .previews import live_preview
from .progress import JobProgress, run_on_pool
from .values import DEFAULT_POOL, PoolChoice

MAX_SEED = 0xFFFFFFFFFFFFFFFF
MAX_STEPS = choices.COMFY_MAX_STEPS


def _samplers() -> list[str]:
    import comfy.samplers

    from ..distributed.models.wan.sampling import ADAPTIVE_SAMPLERS

    return [name for name in comfy.samplers.KSampler.SAMPLERS if name not in ADAPTIVE_SAMPLERS]


def _schedulers() -> list[str]:
    import comfy.samplers

    return list(comfy.samplers.KSampler.SCHEDULERS)


class ClipParallelKSampler(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="VideoInfinityClipParallelKSampler",
            display_name="Clip-Parallel KSampler (Video-Infinity)",
            category=CATEGORY,
            description="KSampler for long videos on ComfyUI's own Wan and LTX-Video models: the latent's frames are "
            "split into clips, one per worker, kept consistent by dual-scope attention. Takes the MODEL with its "
            "LoRAs; chain two (start/end step) for Wan 2.2's high- and low-noise experts.",
            inputs=[
                io.Model.Input(
                    "model",
                    tooltip="A Wan 2.1 / 2.2 or LTX-Video 0.9 model from core loaders (LoRAs included).",
                ),
                io.Conditioning.Input(
                    "positive", tooltip="What the video shows (Wan's umT5 or LTX-Video's T5 text encoder)."
                ),
                io.Conditioning.Input("negative", tooltip="What to steer away from."),
                io.Latent.Input(
                    "latent_image",
                    tooltip="From EmptyHunyuanLatentVideo, WanImageToVideo, EmptyLTXVLatentVideo, LTXVImgToVideo "
                    "and the like; every worker needs at least one latent frame (4 video frames for Wan, 8 for "
                    "LTX-Video).",
                ),
                io.Int.Input(
                    "seed",
                    default=0,
                    min=0,
                    max=MAX_SEED,
                    control_after_generate=True,
                    tooltip="The same seed gives the same video for any number of workers.",
                ),
                io.Int.Input("steps", default=20, min=1, max=MAX_STEPS, tooltip="Denoising steps, as in KSampler."),
                io.Float.Input(
                    "cfg",
                    default=6.0,
                    min=0.0,
                    max=100.0,
                    step=0.1,
                    round=0.01,
                    tooltip="Classifier-free guidance scale, as in KSampler.",
                ),
                io.Combo.Input(
                    "sampler_name",
                    options=_samplers(),
                    default="euler",
                    tooltip="ComfyUI's samplers; dpm_adaptive is left out (its step count depends on "
                    "the data, so workers would disagree).",
                ),
                io.Combo.Input("scheduler", options=_schedulers(), default="simple", tooltip="As in KSampler."),
                io.Float.Input(
                    "denoise",
                    default=1.0,
                    min=0.0,
                    max=1.0,
                    step=0.01,
                    tooltip="Below 1 keeps part of latent_image, as in KSampler.",
                ),
                io.Boolean.Input("add_noise", default=True, tooltip="Off for the second of two chained samplers."),
                io.Int.Input(
                    "start_at_step",
                    default=0,
                    min=0,
                    max=MAX_STEPS,
                    tooltip="First step to run, as in KSamplerAdvanced.",
                ),
                io.Int.Input(
                    "end_at_step",
                    default=MAX_STEPS,
                    min=0,
                    max=MAX_STEPS,
                    tooltip="Step to stop at, as in KSamplerAdvanced.",
                ),
                io.Boolean.Input(
                    "return_with_leftover_noise",
                    default=False,
                    tooltip="On for the first of two chained samplers (Wan 2.2 high-noise expert).",
                ),
                Attention.Input(
                    "attention",
                    optional=True,
                    tooltip="From Dual-Scope Attention; unconnected: the model's defaults (Wan: P 10, "
                    "LTX-Video: P 8; G 16 latent frames, no phase bias).",
                ),
                Pool.Input(
                    "pool", optional=True, tooltip="From Worker Pool; unconnected uses every GPU, else 2 CPU workers."
                ),
            ],
            outputs=[io.Latent.Output(display_name="LATENT")],
            hidden=[io.Hidden.unique_id],
        )

    @classmethod
    def execute(
        cls,
        model: Any,
        positive: list,
        negative: list,
        latent_image: dict,
        seed: int,
        steps: int,
        cfg: float,
        sampler_name: str,
        scheduler: str,
        denoise: float,
        add_noise: bool,
        start_at_step: int,
        end_at_step: int,
        return_with_leftover_noise: bool,
        attention: dict[str, Any] | None = None,
        pool: PoolChoice | None = None,
    ) -> io.NodeOutput:
        from ..distributed.engine.latent_job import ComfySampling

        sampling = ComfySampling(
            sampler_name=sampler_name,
            scheduler=scheduler,
            steps=steps,
            cfg=cfg,
            seed=seed,
            denoise=denoise,
            add_noise=add_noise,
            start_at_step=start_at_step,
            end_at_step=end_at_step,
            return_with_leftover_noise=return_with_leftover_noise,
        )
        pool = pool or DEFAULT_POOL
        engine_pool = pool_access.get_pool(pool)
        job, inputs = build_latent_job(model, positive, negative, latent_image, sampling, attention)
        try:
            job = replace(job, frame_shares=pool.shares(engine_pool, job))
            window = max(1, min(steps, end_at_step) - start_at_step)
            preview = live_preview(model.get_model_object("latent_format"))
            progress = JobProgress(window, cls.hidden.unique_id, engine_pool.world_size, preview)
            handle, _ = run_on_pool(engine_pool, job, progress, pool)
            latents = handle.latents(0)
        finally:
            inputs.unlink(missing_ok=True)
            pool_access.release_if_cold(engine_pool)
        import torch

        out = dict(latent_image)
        out["samples"] = torch.from_numpy(latents)
        return io.NodeOutput(out)


def build_latent_job(
    model: Any,
    positive: list,
    negative: list,
    latent: dict,
    sampling: Any,
    attention: Any,
):
    """The job and its inputs file; every problem found here is an InvalidSettingsError naming the fix."""
    import folder_paths
    import torch

    from ..distributed.engine.errors import InvalidSettingsError
    from ..distributed.engine.latent_job import LatentJob
    from ..distributed.engine.settings import DualScopeSettings
    from ..distributed.models.wan.architectures import architecture_of
    from ..distributed.models.wan.export import export_model
    from ..distributed.models.wan.inputs import JobInputs, check_conditioning, write_inputs

    architecture = architecture_of(model.model)  # first: an unsupported model's latent may be no tensor at all
    samples = latent["samples"]
    if getattr(samples, "ndim", None) != 5:  # a nested latent (video and audio) has none
        shape = tuple(samples.shape) if isinstance(samples, torch.Tensor) else type(samples).__name__
        raise InvalidSettingsError(
            f"latent_image has shape {shape}; a video latent (batch, channels, frames, height, width) is "
            "needed, e.g. from EmptyHunyuanLatentVideo, WanImageToVideo or EmptyLTXVLatentVideo"
        )
    noise_mask = latent.get("noise_mask")
    batch_index = [int(i) for i in latent["batch_index"]] if "batch_index" in latent else None
    root = Path(folder_paths.get_temp_directory()) / "video-infinity"
    exported = export_model(model, root / "models")
    text_width = architecture.text_width(model.get_model_object("diffusion_model"))
    for name, conditioning in (("positive", positive), ("negative", negative)):
        check_conditioning(
            name, conditioning, text_width, architecture.text_encoder, architecture.required_conditioning
        )
    settings = attention if isinstance(attention, DualScopeSettings) else None
    settings = settings or (DualScopeSettings.from_dict(attention) if attention else architecture.default_attention)
    inputs = root / "jobs" / f"{uuid.uuid4().hex}.safetensors"
    write_inputs(inputs, JobInputs(samples, positive, negative, exported.sampling, noise_mask, batch_index))
    job = LatentJob(exported.spec(), str(inputs), int(samples.shape[2]), sampling, settings)
    return job, inputs
