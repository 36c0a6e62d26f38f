"""ComfyUI's own DiT video models (Wan, LTX-Video) behind the engine's seam: the graph's weights, ComfyUI's
samplers, no decode. The family is named after Wan, its first model; architectures.py holds what differs.

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
from ...engine.weight_files import check_safetensors_file
from .architectures import WAN, architecture_of
from .comfy_runtime import import_comfy
from .export import FP8_WEIGHT_DTYPES, KEEP_EXPORTS
from .inputs import latent_shape, read_inputs
from .patch import install_dual_scope
from .sampling import check_sampling, sample_clip

DEFAULT_ATTENTION = WAN.default_attention  # Wan's unconnected attention settings (benchmarks use them)
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
        # In inference mode, as ComfyUI's loader nodes run: newer ComfyUI's quantized layers, loaded outside it,
        # fail when the sampler (inside it) moves them.
        with torch.inference_mode():
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
        model = loaded.patcher.model
        return architecture_of(model).latent_layout(model.diffusion_model, model.latent_format.latent_channels)

    def denoise(self, loaded: LoadedWan, job: LatentJob, ctx: TemporalContext, control: RunControl) -> torch.Tensor:
        if job.attention.mode == "reference":
            raise InvalidSettingsError(
                "mode 'reference' reproduces the UNet3D reference code and has no meaning for DiT models; use 'exact' "
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
    """The flow sampling the graph's MODEL had (ModelSamplingSD3's or ModelSamplingLTXV's shift, or the model's
    default)."""
    samplings = comfy.model_sampling
    if sampling.kind == "flux":
        base, parameters = samplings.ModelSamplingFlux, {"shift": sampling.shift}
    else:
        base, parameters = (
            samplings.ModelSamplingDiscreteFlow,
            {"shift": sampling.shift, "multiplier": sampling.multiplier},
        )

    class FlowSampling(base, samplings.CONST):
        pass

    result = FlowSampling(model.model.model_config)
    result.set_parameters(**parameters)
    return result
