"""The graph's MODEL, made ready to travel to the workers (runs in the ComfyUI process).

Workers cannot receive a ModelPatcher: it holds closures and objects of ComfyUI's module tree. What travels
is the model's weights with their patches (LoRAs and the like) merged the way ComfyUI merges them when it
loads the model, written once as safetensors (never pickle) and kept while the same model with the same
patches is used again. Anything else a MODEL may carry is either carried over by value (the model-sampling
shift of ModelSamplingSD3) or refused with its name.

Scaled-fp8 checkpoints (ComfyUI's `*_fp8_scaled` files) travel as they are held: fp8 weights, each layer's
scale, and the file's `scaled_fp8` marker, by which the workers' loader builds the same scaled layers. A
patched weight is merged through its layer's own conversion both ways, as ComfyUI patches it on load.

Layers in ComfyUI's mixed-precision layout (weights held as its QuantizedTensor: files with quantization
metadata, and from ComfyUI 0.4 on every scaled-fp8 file, which its loader converts to that layout) travel as
ComfyUI writes them, or, on ComfyUI 0.3.75, dequantized (quantized.py).

A model that UNETLoader cast to fp8 (its weight_dtype fp8_e4m3fn, fp8_e4m3fn_fast or fp8_e5m2) travels in
fp8 too, with that weight_dtype, which the workers' loader is given as UNETLoader gives it to ComfyUI: no
second rounding, and half the bytes of bf16.
"""

from __future__ import annotations

import hashlib
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ...engine.dtypes import DTYPE_NAMES
from ...engine.errors import InvalidSettingsError
from ...engine.job import ModelSpec
from ...engine.weight_files import safetensors_bytes, write_safetensors
from .architectures import architecture_of, config_name
from .quantized import is_quantized, layer_entries, travel_plan

KEEP_EXPORTS = 2  # exported models kept on disk: both experts of a Wan 2.2 A14B graph stay warm
# transformer_options entries ComfyUI fills in itself; anything else there was put by a node.
OWN_TRANSFORMER_OPTIONS: tuple[str, ...] = ()


@dataclass(frozen=True)
class ModelSampling:
    """The flow model's sampling parameters: ModelSamplingSD3's (or ModelSamplingLTXV's) shift, or the model's
    own default, and which of ComfyUI's flow samplings it is: "discrete_flow" (ModelSamplingDiscreteFlow, Wan) or
    "flux" (ModelSamplingFlux, LTX-Video)."""

    shift: float
    multiplier: float = 1.0  # discrete_flow only
    kind: str = "discrete_flow"


@dataclass(frozen=True)
class ExportedModel:
    weights: Path  # safetensors: the diffusion model's weights with their patches merged
    dtype: str  # the dtype ComfyUI computes the model in
    sampling: ModelSampling
    weight_dtype: str = "default"  # how the weights are held, by UNETLoader's names (choices.WEIGHT_DTYPES)

    def spec(self) -> ModelSpec:
        """The model as a job names it to the workers."""
        return ModelSpec(base=str(self.weights), dtype=self.dtype, family="wan", weight_dtype=self.weight_dtype)


# Weights UNETLoader casts to fp8 (without scales), by the weight_dtype it was given.
FP8_WEIGHT_DTYPES = {torch.float8_e4m3fn: "fp8_e4m3fn", torch.float8_e5m2: "fp8_e5m2"}


def check_family(patcher: Any) -> str:
    """The model's config name; raises InvalidSettingsError naming the supported models otherwise."""
    architecture_of(patcher.model)
    config = config_name(patcher.model)
    if getattr(patcher.model.diffusion_model, "ref_conv", None) is not None:
        raise InvalidSettingsError(
            f"the MODEL is a {config} with a reference-image input (Wan Fun 1.1), which adds a frame of tokens ahead "
            "of the video that the clip-parallel attention does not place yet; use core KSampler for it"
        )
    return config


def untravelled(patcher: Any) -> list[str]:
    """Everything on the MODEL that cannot reach the workers, by name (empty when all of it can)."""
    names = []
    options = patcher.model_options
    for key, value in options.items():
        if key == "transformer_options":
            names += [f"transformer_options[{name!r}]" for name in value if name not in OWN_TRANSFORMER_OPTIONS]
        elif value:
            names.append(f"model_options[{key!r}]")
    names += [f"wrapper {kind!r}" for kind, wrappers in patcher.wrappers.items() if wrappers]
    names += [f"callback {kind!r}" for kind, callbacks in patcher.callbacks.items() if callbacks]
    names += [f"object patch {name!r}" for name in patcher.object_patches if name != "model_sampling"]
    if "model_sampling" in patcher.object_patches and _sampling_of(patcher) is None:
        names.append(f"object patch 'model_sampling' ({type(patcher.object_patches['model_sampling']).__name__})")
    if getattr(patcher, "hook_mode", None) is not None and getattr(patcher, "hook_patches", None):
        names.append("hook patches (scheduled LoRA keyframes)")
    return names


def check_travels(patcher: Any) -> None:
    left_behind = untravelled(patcher)
    if left_behind:
        raise InvalidSettingsError(
            "the MODEL carries patches that cannot reach the workers: "
            + ", ".join(left_behind)
            + ". Remove the nodes that add them, or use core KSampler; weight patches (LoRAs) and ModelSamplingSD3 "
            "do travel"
        )


def export_model(patcher: Any, cache_dir: Path) -> ExportedModel:
    """Writes (or reuses) the patched weights of `patcher` under cache_dir; checks the family and the patches."""
    check_family(patcher)
    check_travels(patcher)
    sampling = _sampling_of(patcher)
    assert sampling is not None
    dtype, weight_dtype = dtypes_of(patcher.model)
    identity = f"{id(patcher.model)}-{patcher.patches_uuid}-{dtype}-{weight_dtype}"
    path = cache_dir / f"wan-{hashlib.sha256(identity.encode()).hexdigest()[:16]}.safetensors"
    if not path.is_file():
        cache_dir.mkdir(parents=True, exist_ok=True)
        _prune(cache_dir, keep=path)  # first, so the space of an export no longer kept counts as free
        _write_weights(patcher, path)
    else:
        path.touch()  # used again: the newest, kept by _prune
    return ExportedModel(path, dtype, sampling, weight_dtype)


def dtypes_of(model: Any) -> tuple[str, str]:
    """(the dtype the model computes in, how its weights are held by UNETLoader's names) of a loaded model."""
    as_written, dequantized = travel_plan(model.diffusion_model)
    if dequantized is not None:  # mixed-precision layers: the workers' loader builds them from the file itself
        compute = DTYPE_NAMES.get(model.get_dtype() if as_written else dequantized)
        if compute is not None:
            return compute, "default"
    held = model.get_dtype()
    # Cast to fp8 on load (scaled-fp8 layers report their compute dtype instead); ComfyUI then computes in its
    # manual-cast dtype.
    cast_to_fp8 = held in FP8_WEIGHT_DTYPES and getattr(model.model_config, "scaled_fp8", None) is None
    compute = DTYPE_NAMES.get(model.manual_cast_dtype if cast_to_fp8 else held)
    if compute is None:
        raise InvalidSettingsError(
            f"the MODEL's weights are {held}, which clip-parallel sampling cannot compute in; load the model with "
            "UNETLoader's weight_dtype 'default' or one of its fp8 choices"
        )
    if not cast_to_fp8:
        return compute, "default"
    weight_dtype = FP8_WEIGHT_DTYPES[held]
    if weight_dtype == "fp8_e4m3fn" and model.model_config.optimizations.get("fp8", False):
        weight_dtype = "fp8_e4m3fn_fast"
    return compute, weight_dtype


ROOM_MARGIN = 1 << 30  # bytes left free beside an export: the file's header, and the disk's other users


def check_room(size: int, folder: Path) -> None:
    """Refuses an export of `size` bytes that `folder`'s disk cannot hold (a 14B Wan in bf16 is 28 GB)."""
    free = shutil.disk_usage(folder).free
    if size + ROOM_MARGIN > free:
        raise InvalidSettingsError(
            f"the MODEL's weights for the workers need {size / 1e9:.1f} GB (and {ROOM_MARGIN / 1e9:.1f} GB to spare) "
            f"in {folder}, whose disk has {free / 1e9:.1f} GB free. Free space there, or start ComfyUI with "
            "--temp-directory on a larger disk"
        )


@torch.no_grad()
def _write_weights(patcher: Any, path: Path) -> None:
    """Writes the diffusion model's weights, their patches merged, as a diffusion-model file at `path`: one
    weight at a time, so a model whose every layer a LoRA patches is not held twice in memory."""
    import comfy.float
    import comfy.lora
    import comfy.model_management
    import comfy.model_patcher
    import comfy.utils

    prefix = "diffusion_model."  # dropped: the file has the layout UNETLoader reads
    sources = _weight_sources(patcher, prefix)
    _, dequantized = travel_plan(patcher.model.diffusion_model)
    layout, owners, as_written = {}, {}, {}
    for name, ((weight, _), *_) in sources.items():
        check_plain_weight(name, weight)
        layer_name = name.removesuffix(".weight")
        if is_quantized(weight):
            layer = comfy.utils.get_attr(patcher.model, prefix + layer_name)
            entries = layer_entries(layer, weight, layer_name + ".")
            if entries is not None:  # as ComfyUI writes the layer: its numbers, scales and format record
                as_written[layer_name] = (layer, entries)
                for entry, tensor in entries.items():
                    layout[entry], owners[entry] = (tensor.dtype, tuple(tensor.shape)), layer_name
                continue
        # A merged weight is stored back in its own dtype; a dequantized one in the dtype its layer computes in.
        layout[name] = (dequantized if is_quantized(weight) else weight.dtype, tuple(weight.shape))
    marker = _scaled_fp8_marker(patcher.model.model_config)
    if marker is not None:
        layout["scaled_fp8"] = (marker.dtype, tuple(marker.shape))
    check_room(safetensors_bytes(layout), path.parent)

    def merged(name: str) -> torch.Tensor:
        """The weight `name` with its patches merged, held as its layer holds it (quantized back, scaled)."""
        (weight, convert), *patches = sources[name]
        key = prefix + name
        total = comfy.lora.calculate_weight(patches, convert(weight.to(torch.float32, copy=True), inplace=True), key)
        seed = comfy.model_patcher.string_to_seed(key)
        # A layer that holds its weight converted (scaled fp8, quantized) converts it back itself.
        _, store, _ = comfy.model_patcher.get_key_weight(patcher.model, key)
        if store is not None:
            return store(total, seed=seed, return_weight=True)
        return comfy.float.stochastic_rounding(total, weight.dtype, seed=seed)

    last_layer: dict[str, dict[str, torch.Tensor]] = {}  # a patched layer's entries, written one after another

    def produce(name: str) -> torch.Tensor:
        if name == "scaled_fp8":
            return marker
        comfy.model_management.throw_exception_if_processing_interrupted()  # Cancel during a long export
        if name in owners:
            layer_name = owners[name]
            layer, entries = as_written[layer_name]
            weight_name = layer_name + ".weight"
            if len(sources[weight_name]) == 1:  # no patches
                return entries[name]
            if layer_name not in last_layer:
                last_layer.clear()
                last_layer[layer_name] = layer_entries(layer, merged(weight_name), layer_name + ".")
            return last_layer[layer_name][name]
        (weight, convert), *patches = sources[name]
        held = merged(name) if patches else weight
        return convert(held) if is_quantized(held) else held

    partial = path.with_suffix(".partial")
    try:
        write_safetensors(partial, layout, produce)
    except BaseException:
        partial.unlink(missing_ok=True)  # a failed write (a full disk, a Cancel) leaves nothing behind
        raise
    partial.replace(path)  # a half-written file is never taken for a finished one


def _weight_sources(patcher: Any, prefix: str) -> dict[str, list]:
    """Per weight of the diffusion model (its name without `prefix`): [(weight as held, its layer's
    conversion), *its patches], as ModelPatcher.get_key_patches gives them, for the weights a plain file holds.
    A quantized layer's scales and format record, which newer ComfyUI lists in the state dict beside its weight
    (they are no attributes of the layer), are left out: the layer writes them itself (quantized.layer_entries),
    or its weight travels dequantized."""
    import comfy.model_patcher
    import comfy.utils

    sources = {}
    for key in patcher.model_state_dict(filter_prefix=prefix):
        layer_name, _, attribute = key.rpartition(".")
        layer = comfy.utils.get_attr(patcher.model, layer_name)
        if not isinstance(getattr(layer, attribute, None), torch.Tensor):
            continue  # a quantized layer's scale or format record, not held as a tensor attribute
        if is_quantized(getattr(layer, "weight", None)) and attribute not in ("weight", "bias"):
            continue  # its input scale: among the layer's own entries, and of no use to a dequantized layer
        weight, _, convert = comfy.model_patcher.get_key_weight(patcher.model, key)
        backup = patcher.backup.get(key)
        if backup is not None:  # the model is patched in place now: the weight as loaded
            weight = backup.weight
        sources[key[len(prefix) :]] = [(weight, convert or _unchanged), *patcher.patches.get(key, [])]
    return sources


def _unchanged(weight: torch.Tensor, **_: Any) -> torch.Tensor:
    return weight


def _scaled_fp8_marker(config: Any) -> torch.Tensor | None:
    """The `scaled_fp8` key of ComfyUI's scaled-fp8 files, by which its loader builds scaled layers: empty, or
    of 2 values to keep the layers from multiplying in fp8. None for other models."""
    if getattr(config, "scaled_fp8", None) is None:
        return None
    return torch.zeros(0 if config.optimizations.get("fp8", False) else 2, dtype=config.scaled_fp8)


def check_plain_weight(name: str, weight: torch.Tensor) -> None:
    """Refuses a weight held in a tensor type of its own that is not ComfyUI's QuantizedTensor (GGUF's quantized
    blocks): its bytes mean nothing to the workers' loader, which would build a wrong model from them."""
    if type(weight) not in (torch.Tensor, torch.nn.Parameter) and not is_quantized(weight):
        raise InvalidSettingsError(
            f"the MODEL's weight {name!r} is held as {type(weight).__name__} (quantized weights, as GGUF loaders "
            "keep them), which the workers cannot load yet; use fp32, fp16, bf16, fp8 by UNETLoader's weight_dtype, "
            "scaled-fp8 or mixed-precision checkpoints, or core KSampler"
        )


def _prune(cache_dir: Path, keep: Path) -> None:
    """Keeps the KEEP_EXPORTS most recently used exports (Wan 2.2 A14B alternates two experts), deletes the rest."""
    exports = sorted(cache_dir.glob("wan-*.safetensors"), key=lambda file: file.stat().st_mtime, reverse=True)
    for old in [file for file in exports if file != keep][KEEP_EXPORTS - 1 :]:
        old.unlink(missing_ok=True)


def _sampling_of(patcher: Any) -> ModelSampling | None:
    import comfy.model_sampling

    sampling = patcher.get_model_object("model_sampling")
    if not isinstance(sampling, comfy.model_sampling.CONST):
        return None
    if isinstance(sampling, comfy.model_sampling.ModelSamplingDiscreteFlow):
        return ModelSampling(float(sampling.shift), float(sampling.multiplier))
    if isinstance(sampling, comfy.model_sampling.ModelSamplingFlux):
        return ModelSampling(float(sampling.shift), kind="flux")
    return None
