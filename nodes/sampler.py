"""Clip-Parallel Sampler: one long video, its frames split over the pool's workers."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np

from ..distributed.engine import choices
from . import devices, pool_access
from .api import CATEGORY, Attention, Frames, Pool, VideoModel, io
from .previews import pipeline_preview
from .progress import JobProgress, run_on_pool
from .validation import InvalidInput, given, validate_node
from .values import DEFAULT_POOL, ModelChoice, PoolChoice, VideoFrames


def build_job(model: ModelChoice | None, attention: dict[str, Any] | None, **settings: Any):
    """The one JobSpec of this node's inputs, validated by the engine (InvalidSettingsError names the fix).

    Without a model (at validation, where links carry no value yet) only the widgets are checked.
    """
    from ..distributed.engine.job import JobSpec, check_job_settings

    if model is None:
        check_job_settings(**settings)
        return None
    return JobSpec.build(model.spec(), settings.pop("prompt"), settings.pop("frames"), attention=attention, **settings)


class ClipParallelSampler(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="VideoInfinityClipParallelSampler",
            display_name="Clip-Parallel Sampler (Video-Infinity)",
            category=CATEGORY,
            description="Generates one long video with its frames split into clips, one per worker; dual-scope "
            "attention keeps the clips consistent. Progress per step; Cancel stops every worker.",
            inputs=[
                VideoModel.Input("model", tooltip="From Load Video Model (Video-Infinity)."),
                io.String.Input(
                    "prompt",
                    multiline=True,
                    default="a red ball bouncing on a green floor",
                    tooltip="What the video shows. For a prompt schedule write one line per frame range, covering "
                    "every frame once: '0-47: a red ball' then '48-95: a blue ball' (frames count from 0).",
                ),
                io.String.Input(
                    "negative_prompt",
                    multiline=True,
                    default="",
                    tooltip="What to steer away from (used with cfg > 1).",
                ),
                io.Int.Input(
                    "frames",
                    default=32,
                    min=1,
                    max=choices.MAX_FRAMES,
                    tooltip="Video length in frames; every worker needs at least one frame.",
                ),
                io.Int.Input(
                    "width",
                    default=choices.DEFAULT_WIDTH,
                    min=8,
                    max=choices.MAX_SIDE,
                    step=8,
                    tooltip="Width in pixels, a multiple of 8 (VideoCrafter2: 512, Zeroscope: 576).",
                ),
                io.Int.Input(
                    "height",
                    default=choices.DEFAULT_HEIGHT,
                    min=8,
                    max=choices.MAX_SIDE,
                    step=8,
                    tooltip="Height in pixels, a multiple of 8 (VideoCrafter2: 320, Zeroscope: 320).",
                ),
                io.Int.Input(
                    "steps", default=choices.DEFAULT_STEPS, min=1, max=choices.MAX_STEPS, tooltip="Denoising steps."
                ),
                io.Float.Input(
                    "cfg",
                    default=choices.DEFAULT_CFG,
                    min=0.0,
                    max=choices.MAX_CFG,
                    step=0.5,
                    tooltip="Classifier-free guidance scale; 1 turns the negative prompt pass off.",
                ),
                io.Combo.Input(
                    "sampler",
                    options=list(choices.SAMPLERS),
                    default=choices.DEFAULT_SAMPLER,
                    tooltip=f"Scheduler: {choices.SAMPLER_HELP}.",
                ),
                io.Int.Input(
                    "seed",
                    default=0,
                    min=0,
                    max=0xFFFFFFFFFFFFFFFF,
                    control_after_generate=True,
                    tooltip="Noise seed; the same seed gives the same video for any number of workers.",
                ),
                io.Float.Input(
                    "fps",
                    default=choices.DEFAULT_FPS,
                    min=0.1,
                    max=choices.MAX_FPS,
                    step=0.1,
                    tooltip="Frame rate the model is conditioned on and the video is saved at.",
                ),
                io.Int.Input(
                    "blend",
                    default=0,
                    min=0,
                    max=choices.MAX_BLEND,
                    tooltip="Frames over which neighbouring prompt-schedule segments cross-fade (0: cut).",
                ),
                io.Boolean.Input(
                    "return_images",
                    default=True,
                    tooltip="Off for long videos: IMAGE then carries only the first frame, and the whole video goes "
                    "out as uint8 frames to Save Video (Video-Infinity), avoiding a float32 copy (4x the size).",
                ),
                Attention.Input(
                    "attention",
                    optional=True,
                    tooltip="From Dual-Scope Attention; unconnected uses the reference defaults.",
                ),
                Pool.Input(
                    "pool", optional=True, tooltip="From Worker Pool; unconnected uses every GPU, else 2 CPU workers."
                ),
            ],
            outputs=[
                io.Image.Output(display_name="images", tooltip="The frames as ComfyUI IMAGE (float32)."),
                Frames.Output(
                    display_name="video_frames",
                    tooltip="The frames as uint8 plus fps, for Save Video (Video-Infinity).",
                ),
                io.Float.Output(display_name="fps", tooltip="The frame rate, for core Create Video."),
                io.Latent.Output(
                    display_name="latent",
                    tooltip="The final latents of the whole video, (1, C, frames, H/8, W/8), in the model's scaled "
                    "latent space (as ComfyUI's LATENT), e.g. to refine or decode elsewhere.",
                ),
            ],
            hidden=[io.Hidden.unique_id],
        )

    @classmethod
    def validate_inputs(cls, **values: Any) -> bool:
        # The model, attention and pool come through links (None here): check what the widgets alone decide.
        known = given(values)
        settings = {name: value for name, value in known.items() if name != "return_images"}

        def check() -> None:
            from ..distributed.engine.job import check_split

            build_job(None, None, **settings)
            if "pool" not in values and "frames" in known:  # no Worker Pool connected: the default pool runs it
                check_split(known["frames"], len(devices.resolve(DEFAULT_POOL.devices)))
            if {"frames", "width", "height"} <= known.keys():
                check_video_fits(known["frames"], known["width"], known["height"], known.get("return_images", True))

        return validate_node(cls, values, check)

    @classmethod
    def execute(
        cls,
        model: ModelChoice,
        return_images: bool,
        attention: dict[str, Any] | None = None,
        pool: PoolChoice | None = None,
        **settings: Any,
    ) -> io.NodeOutput:
        pool = pool or DEFAULT_POOL
        engine_pool = pool_access.get_pool(pool)
        job = build_job(model, attention, **settings)
        job = replace(job, frame_shares=pool.shares(engine_pool, job))
        workers = engine_pool.world_size
        job.validate(workers)  # an impossible split is refused before any worker starts
        preview = pipeline_preview(job.model.base)
        progress = JobProgress(job.steps, cls.hidden.unique_id, workers, preview)
        try:
            handle, video = run_on_pool(engine_pool, job, progress, pool)
        finally:
            pool_access.release_if_cold(engine_pool)
        latent = {"samples": to_latent(handle.latents(0))}  # the engine always gathers the final latents
        info = {"workers": workers, "model": model.name, "seed": job.seed}
        result = VideoFrames(frames=video, fps=job.fps, info=info)
        images = to_image(video if return_images else video[:1])
        return io.NodeOutput(images, result, job.fps, latent)


def check_video_fits(frames: int, width: int, height: int, return_images: bool) -> None:
    """The finished video is held in this process (uint8, and float32 as IMAGE too): refuse what cannot fit."""
    from ..distributed.engine.host_memory import available_bytes

    need = frames * width * height * 3 * (5 if return_images else 1)
    available = available_bytes()
    if need > 0.8 * available:
        image_note = " plus its float32 IMAGE copy" if return_images else ""
        fix = "; turning return_images off saves four fifths" if return_images else ""
        raise InvalidInput(
            f"the finished video alone ({frames} frames of {width}x{height}{image_note}) needs {need / 2**30:.1f} GiB "
            f"of memory and this machine has {available / 2**30:.1f} GiB free: make it shorter or smaller{fix}"
        )


def to_image(frames: np.ndarray):
    """uint8 (T,H,W,3) -> ComfyUI IMAGE float32 in [0,1], converted in place of a second float copy."""
    import torch

    out = torch.from_numpy(np.ascontiguousarray(frames)).to(torch.float32)
    return out.div_(255.0)


def to_latent(latents: np.ndarray):
    """(1, C, T, h, w) float32 -> ComfyUI video LATENT samples (a tensor of the same shape)."""
    import torch

    return torch.from_numpy(np.ascontiguousarray(latents))
