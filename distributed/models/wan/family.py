"""ComfyUI's Wan models behind the engine's seam: the graph's weights, ComfyUI's samplers, no decode.

The worker loads the weights file the coordinator wrote (export.py), installs dual-scope attention on a
clone of the ModelPatcher (patch.py) and runs ComfyUI's sampler on its clip (sampling.py). The latents go
back to the graph, whose own VAE Decode turns them into frames.
"""

from __future__ import annotations

import os
from collections.abc import Hashable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from ...engine.comm import Communicator
from ...engine.context import TemporalContext
from ...engine.contract import RunControl
from ...engine.dtypes import torch_dtype
from ...engine.errors import InvalidSettingsError, ModelLoadError
from ...engine.family import LatentLayout, MemoryNeed
from ...engine.file_transfer import local_path
from ...engine.job import ModelSpec
from ...engine.latent_job import LatentJob
from ...engine.settings import DualScopeSettings
from ...engine.weight_files import check_safetensors_file
from .comfy_runtime import import_comfy
from .export import FP8_WEIGHT_DTYPES, KEEP_EXPORTS
from .inputs import latent_shape, read_inputs
from .patch import install_dual_scope
from .sampling import check_sampling, sample_clip

# Wan's native clip is 81 frames = 21 latent frames, so P = 10 gives each frame the window it was trained on;
# with G = 16 a frame attends to at most 2P + 1 + G = 37 latent frames, under twice the native clip. The phase
# bias is off: its reference setting was tuned on VideoCrafter2's timestep schedule, not on a flow model's.
DEFAULT_ATTENTION = DualScopeSettings(local_window=10, global_frames=16, phase_bias=False)
KEEP_RECEIVED_INPUTS = 2  # a job's latent and conditioning, received on another machine: only the latest matter


@dataclass
class LoadedWan:
    comfy: Any  # the worker's ComfyUI package
    patcher: Any  # the plain ModelPatcher of the graph's weights
    patched: Any  # a clone with dual-scope attention (set by patch)


def load_options(model: ModelSpec) -> dict[str, Any]:
    """ComfyUI's model_options for the exported weights: their compute dtype, or (weights held in fp8) the
    options UNETLoader makes from its weight_dtype, so the workers hold and compute them as the graph did."""
    if model.weight_dtype == "default":
        return {"dtype": torch_dtype(model.dtype)}
    held = {name: dtype for dtype, name in FP8_WEIGHT_DTYPES.items()}
    options: dict[str, Any] = {"dtype": held[model.weight_dtype.removesuffix("_fast")]}
    if model.weight_dtype.endswith("_fast"):
        options["fp8_optimizations"] = True
    return options


class WanFamily:
    name = "wan"

    def localise(self, job: LatentJob, comm: Communicator) -> LatentJob:
        """The weights and the job's inputs, received from rank 0 where this machine cannot read them."""
        weights = local_path(comm, job.model.base, "models", keep=KEEP_EXPORTS)
        inputs = local_path(comm, job.inputs, "jobs", keep=KEEP_RECEIVED_INPUTS)
        return replace(job, model=replace(job.model, base=weights), inputs=inputs)

    def model_key(self, model: ModelSpec) -> Hashable:
        try:
            stat = os.stat(model.base)
        except OSError:
            return (model.base, model.dtype, model.weight_dtype, -1)
        return (model.base, model.dtype, model.weight_dtype, stat.st_size, stat.st_mtime_ns)

    def load(self, model: ModelSpec, device: torch.device) -> LoadedWan:
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        comfy = import_comfy(on_cpu=device.type == "cpu")
        check_safetensors_file(Path(model.base))  # names a truncated or foreign file before the loader's own error
        try:
            weights = load_file(model.base)
        except (SafetensorError, OSError) as error:
            raise ModelLoadError(f"{model.base} is not a readable safetensors file ({error})") from error
        patcher = comfy.sd.load_diffusion_model_state_dict(weights, model_options=load_options(model))
        if patcher is None:
            raise ModelLoadError(f"ComfyUI does not recognise the model in {model.base}")
        return LoadedWan(comfy, patcher, None)

    def patch(self, loaded: LoadedWan, ctx: TemporalContext) -> None:
        loaded.patched = install_dual_scope(loaded.patcher, ctx)

    def peak_bytes(self, loaded: LoadedWan, job: LatentJob, own: int, held: int) -> MemoryNeed:
        """ComfyUI's own estimate for the model (the one its sampler loads and offloads weights by), on the
        frames this rank holds. Its minimum: one latent per model call, as ComfyUI runs the positive and
        negative passes one after the other when both do not fit. The weights need not fit beside it:
        ComfyUI offloads what does not."""
        batch, channels, _, height, width = latent_shape(job.inputs)
        needed = loaded.patcher.model.memory_required([batch, channels, held, height, width])
        layout = self.latent_layout(loaded)
        size = f"{width * layout.spatial_factor}x{height * layout.spatial_factor}"
        return MemoryNeed(
            int(needed), f"{own} latent frames (about {layout.temporal_factor * own} video frames) per worker at {size}"
        )

    def latent_layout(self, loaded: LoadedWan) -> LatentLayout:
        latent_format = loaded.patcher.model.latent_format
        # Wan 2.1's VAE makes 16 channels per 8x8 pixels; Wan 2.2's (TI2V 5B) 48 per 16x16.
        spatial = 16 if latent_format.latent_channels == 48 else 8
        return LatentLayout(channels=latent_format.latent_channels, spatial_factor=spatial, temporal_factor=4)

    def denoise(self, loaded: LoadedWan, job: LatentJob, ctx: TemporalContext, control: RunControl) -> torch.Tensor:
        if job.attention.mode == "reference":
            raise InvalidSettingsError(
                "mode 'reference' reproduces the UNet3D reference code and has no meaning for Wan; use 'exact' "
                "(or 'independent' for the baseline without exchange)"
            )
        comfy = loaded.comfy
        samplers = tuple(comfy.samplers.KSampler.SAMPLERS)
        check_sampling(job.sampling, samplers, tuple(comfy.samplers.KSampler.SCHEDULERS))
        inputs = read_inputs(job.inputs, comfy.clip_vision.Output)
        model = loaded.patched.clone()
        model.add_object_patch("model_sampling", _model_sampling(comfy, model, inputs.sampling))
        return sample_clip(
            comfy, model, ctx, inputs.latent, inputs.positive, inputs.negative, job.sampling, control,
            noise_mask=inputs.noise_mask, batch_index=inputs.batch_index,
        )  # fmt: skip

    def decode(self, loaded: LoadedWan, latents: torch.Tensor, ctx: TemporalContext, control: RunControl) -> None:
        return None  # the graph decodes with its own VAE


def _model_sampling(comfy: Any, model: Any, sampling: Any) -> Any:
    """The flow sampling the graph's MODEL had (ModelSamplingSD3's shift, or the model's default)."""

    class FlowSampling(comfy.model_sampling.ModelSamplingDiscreteFlow, comfy.model_sampling.CONST):
        pass

    result = FlowSampling(model.model.model_config)
    result.set_parameters(shift=sampling.shift, multiplier=sampling.multiplier)
    return result
