"""Clip-Parallel Sampler: one long video, its frames split over the pool's workers."""

from __future__ import annotations

from typing import Any

import numpy as np

from . import pool_access
from .api import CATEGORY, Attention, Frames, Pool, VideoModel, io
from .progress import JobProgress, wait_for
from .values import ModelChoice, PoolChoice, VideoFrames

SAMPLERS = ("ddim", "dpmpp_2m", "sde_dpmpp")  # the engine's choices (distributed/job.py)
MAX_FRAMES = 100_000
DEFAULT_POOL = PoolChoice(devices="auto")


def job_dict(
    model: ModelChoice | None,
    prompt: str,
    negative_prompt: str,
    frames: int,
    width: int,
    height: int,
    steps: int,
    cfg: float,
    sampler: str,
    seed: int,
    fps: float,
    blend: int,
    attention: dict[str, Any] | None,
) -> dict[str, Any]:
    """The engine's job: plain data, validated by JobSpec.from_dict on both sides of the process boundary."""
    return {
        "model": model.job_model() if model else {"base": "<validation>", "dtype": "fp32"},
        "prompt": prompt,
        "negative_prompt": negative_prompt,
        "blend": blend,
        "frames": frames,
        "height": height,
        "width": width,
        "steps": steps,
        "cfg": cfg,
        "sampler": sampler,
        "seed": seed,
        "fps": fps,
        "attention": attention,
    }


def check_job(job: dict[str, Any], workers: int | None = None) -> None:
    from ..distributed.job import JobSpec

    JobSpec.from_dict(job).validate(workers)


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
                io.String.Input("negative_prompt", multiline=True, default="",
                                tooltip="What to steer away from (used with cfg > 1)."),
                io.Int.Input("frames", default=32, min=1, max=MAX_FRAMES,
                             tooltip="Video length in frames; every worker needs at least one frame."),
                io.Int.Input("width", default=512, min=8, max=4096, step=8,
                             tooltip="Width in pixels, a multiple of 8 (VideoCrafter2: 512, Zeroscope: 576)."),
                io.Int.Input("height", default=320, min=8, max=4096, step=8,
                             tooltip="Height in pixels, a multiple of 8 (VideoCrafter2: 320, Zeroscope: 320)."),
                io.Int.Input("steps", default=30, min=1, max=1000, tooltip="Denoising steps."),
                io.Float.Input("cfg", default=12.0, min=0.0, max=100.0, step=0.5,
                               tooltip="Classifier-free guidance scale; 1 turns the negative prompt pass off."),
                io.Combo.Input("sampler", options=list(SAMPLERS), default="sde_dpmpp",
                               tooltip="Scheduler: ddim (deterministic), dpmpp_2m, sde_dpmpp (the reference's)."),
                io.Int.Input("seed", default=0, min=0, max=0xFFFFFFFFFFFFFFFF, control_after_generate=True,
                             tooltip="Noise seed; the same seed gives the same video for any number of workers."),
                io.Float.Input("fps", default=8.0, min=0.1, max=120.0, step=0.1,
                               tooltip="Frame rate the model is conditioned on and the video is saved at."),
                io.Int.Input("blend", default=0, min=0, max=1000,
                             tooltip="Frames over which neighbouring prompt-schedule segments cross-fade (0: cut)."),
                io.Boolean.Input(
                    "return_images",
                    default=True,
                    tooltip="Off for long videos: IMAGE then carries only the first frame, and the whole video goes "
                    "out as uint8 frames to Save Video (Video-Infinity), avoiding a float32 copy (4x the size).",
                ),
                Attention.Input("attention", optional=True,
                                tooltip="From Dual-Scope Attention; unconnected uses the reference defaults."),
                Pool.Input("pool", optional=True,
                           tooltip="From Worker Pool; unconnected uses every GPU, else 2 CPU workers."),
            ],
            outputs=[
                io.Image.Output(display_name="images", tooltip="The frames as ComfyUI IMAGE (float32)."),
                Frames.Output(display_name="video_frames",
                              tooltip="The frames as uint8 plus fps, for Save Video (Video-Infinity)."),
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
    def validate_inputs(
        cls, prompt: str, negative_prompt: str, frames: int, width: int, height: int, steps: int, cfg: float,
        sampler: str, seed: int, fps: float, blend: int,
    ) -> bool | str:
        # The attention and pool come through links (not known yet): check what the widgets alone decide.
        if any(v is None for v in (prompt, negative_prompt, frames, width, height, steps, cfg, sampler, seed, fps,
                                   blend)):
            return True  # an input fed by a link has no value yet; execute() validates the whole job
        job = job_dict(None, prompt, negative_prompt, frames, width, height, steps, cfg, sampler, seed, fps, blend,
                       {"global_frames": 0})
        try:
            check_job(job)
        except ValueError as error:
            return str(error)
        return True

    @classmethod
    def execute(
        cls, model: ModelChoice, prompt: str, negative_prompt: str, frames: int, width: int, height: int, steps: int,
        cfg: float, sampler: str, seed: int, fps: float, blend: int, return_images: bool,
        attention: dict[str, Any] | None = None, pool: PoolChoice | None = None,
    ) -> io.NodeOutput:
        pool = pool or DEFAULT_POOL
        job = job_dict(model, prompt, negative_prompt, frames, width, height, steps, cfg, sampler, seed, fps, blend,
                       attention)
        engine_pool = pool_access.get_pool(pool)
        workers = engine_pool.world_size
        check_job(job, workers)  # refuse an impossible layout before any worker starts
        handle = engine_pool.submit(job)
        try:
            video = wait_for(handle, JobProgress(steps, cls.hidden.unique_id, workers), pool.timeout_s)
        finally:
            pool_access.release_if_cold(pool)
        latent = {"samples": to_latent(handle.latents(0))}  # the engine always gathers the final latents
        result = VideoFrames(frames=video, fps=fps, info={"workers": workers, "model": model.name, "seed": seed})
        images = to_image(video if return_images else video[:1])
        return io.NodeOutput(images, result, fps, latent)


def to_image(frames: np.ndarray):
    """uint8 (T,H,W,3) -> ComfyUI IMAGE float32 in [0,1], converted in place of a second float copy."""
    import torch

    out = torch.from_numpy(np.ascontiguousarray(frames)).to(torch.float32)
    return out.div_(255.0)


def to_latent(latents: np.ndarray):
    """(C, T, h, w) float32 -> ComfyUI video LATENT samples (1, C, T, h, w)."""
    import torch

    return torch.from_numpy(np.ascontiguousarray(latents)).unsqueeze(0)
