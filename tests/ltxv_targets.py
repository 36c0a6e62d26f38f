"""Functions run in real rank processes for the LTX-Video tests: ComfyUI is imported there, never in pytest."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from distributed.engine.comm import Communicator
from distributed.engine.latent_job import ComfySampling, LatentJob
from distributed.engine.runner import Engine
from distributed.engine.settings import DualScopeSettings
from distributed.models.wan.comfy_runtime import import_comfy
from support.tiny_wan import random_conditioning

from .wan_targets import start_image_latent

FRAME_RATE = 24.0  # not LTX-Video's default of 25: a frame rate that failed to travel would show


def graph_job_through_the_engine(
    comm: Communicator,
    weights: str,
    folder: str,
    latent_shape: tuple[int, ...],
    sampling: dict[str, Any],
    settings: dict,
    keep_first: bool = False,
    frame_shares: tuple[float, ...] = (),
) -> dict[str, Any] | None:
    """The graph's side as ComfyUI runs it: the LTX-Video file loaded as UNETLoader loads it, ModelSamplingLTXV's
    shift, LTXVConditioning's frame rate, text with its attention mask, and (keep_first) an image-to-video
    latent; `frame_shares` splits the frames unevenly. Rank 0 exports the MODEL and writes the job's inputs as
    the Clip-Parallel KSampler does; then every rank runs the LatentJob through the engine, as a pool's worker
    does. Rank 0 returns the engine's latents, core KSampler's on the same graph, and what the export carried."""
    torch.set_num_threads(1)
    comfy = import_comfy(on_cpu=True)
    root = Path(folder)
    inputs_file = root / f"job-{comm.world_size}.safetensors"
    found: dict[str, Any] = {}
    if comm.is_root:
        from comfy_extras.nodes_lt import LTXVConditioning, ModelSamplingLTXV

        from distributed.models.wan.export import export_model
        from distributed.models.wan.inputs import JobInputs, write_inputs

        latent, mask = start_image_latent(latent_shape, keep_first)
        plain = comfy.sd.load_diffusion_model(weights, model_options={})
        graph = ModelSamplingLTXV.execute(plain, 2.05, 0.95, {"samples": latent}).result[0]
        positive, negative = LTXVConditioning.execute(
            random_conditioning(1, plain), random_conditioning(2, plain), FRAME_RATE
        ).result
        exported = export_model(graph, root / "exports")
        write_inputs(inputs_file, JobInputs(latent, positive, negative, exported.sampling, mask))
        spec = ComfySampling(**sampling)
        found = {
            "sampling": exported.sampling,
            "core": comfy.sample.sample(
                graph,
                comfy.sample.prepare_noise(latent, spec.seed),
                spec.steps,
                spec.cfg,
                spec.sampler_name,
                spec.scheduler,
                positive,
                negative,
                latent,
                noise_mask=mask,
                seed=spec.seed,
                disable_pbar=True,
            ),  # fmt: skip
        }
    comm.agree(True)  # the files are written
    (model_file,) = (root / "exports").glob("*.safetensors")
    from distributed.engine.job import ModelSpec

    model = ModelSpec(base=str(model_file), dtype="fp32", family="wan")
    settings = DualScopeSettings(**settings)
    job = LatentJob(model, str(inputs_file), latent_shape[2], ComfySampling(**sampling), settings, frame_shares)
    latents = Engine(comm).run(job).latents
    return dict(found, latents=latents) if comm.is_root else None


def gpu_check_section_on_cpu(comm: Communicator) -> dict[str, Any]:
    """The GPU check's LTX-Video section, on the CPU with a small model of the same class."""
    import argparse

    from benchmarks.gpu_check import ltxv

    torch.set_num_threads(1)
    small = {"num_layers": 2, "attention_head_dim": 2, "num_attention_heads": 32, "cross_attention_dim": 64}
    return ltxv(argparse.Namespace(device="cpu"), Path("."), config=small)
