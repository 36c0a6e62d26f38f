"""A job's tensors (latent and conditioning) as one safetensors file, written by the coordinator.

ComfyUI's CONDITIONING is a list of [tensor, extras]. The tensors of the extras travel as tensors, plain
numbers and strings as JSON metadata, a CLIP vision output as its tensors; any other value is refused with
its name, never pickled and never silently dropped.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from ...engine.errors import InvalidSettingsError
from .export import ModelSampling

PLAIN = (bool, int, float, str, type(None))
CLIP_VISION_FIELDS = ("last_hidden_state", "image_embeds", "penultimate_hidden_states", "mm_projected")
CONDITIONINGS = ("positive", "negative")
# Conditioning that adds latent frames to the model's input (Wan's time_dim_concat) or places frames of its own
# on the timeline (LTX-Video's keyframe guides).
TIME_EXTENDING = ("time_dim_concat", "keyframe_idxs")


@dataclass
class JobInputs:
    latent: torch.Tensor  # (1, C, T, h, w), the graph's LATENT samples
    positive: list
    negative: list
    sampling: ModelSampling
    noise_mask: torch.Tensor | None = None  # the LATENT's noise_mask (1 = sample, 0 = keep), whole video
    batch_index: list[int] | None = None  # the LATENT's batch_index: which of the seed's noises each video gets


def check_conditioning(
    name: str, conditioning: Any, text_width: int, text_encoder: str, required: tuple[str, ...] = ()
) -> None:
    """Refuses conditioning that is not a list of [tensor, extras], was made for another model's text width, or
    lacks an entry the model cannot run without (`required`: LTX-Video's text attention mask). text_encoder:
    which encoder the model needs, said in the errors."""
    if not isinstance(conditioning, list) or not conditioning:
        raise InvalidSettingsError(f"{name} is empty or not CONDITIONING; connect a text encode node")
    for entry in conditioning:
        _check_entry(name, entry)
        width = entry[0].shape[-1]
        if width != text_width:
            raise InvalidSettingsError(
                f"the {name} conditioning has width {width} but the model takes {text_width}: it was encoded for "
                f"another model ({text_encoder})"
            )
        missing = [key for key in required if key not in entry[1]]
        if missing:
            raise InvalidSettingsError(
                f"the {name} conditioning carries no {missing[0]!r}, which the model cannot run without and its "
                f"own text encoder gives: it was made another way ({text_encoder})"
            )


def write_inputs(path: Path, inputs: JobInputs) -> None:
    from safetensors.torch import save_file

    tensors: dict[str, torch.Tensor] = {"latent": inputs.latent.detach().to("cpu", torch.float32).contiguous()}
    if inputs.noise_mask is not None:
        tensors["noise_mask"] = inputs.noise_mask.detach().to("cpu", torch.float32).contiguous()
    layout: dict[str, Any] = {"sampling": asdict(inputs.sampling), "batch_index": inputs.batch_index}
    for name in CONDITIONINGS:
        layout[name] = [_pack(f"{name}/{index}", entry, tensors) for index, entry in enumerate(getattr(inputs, name))]
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path), metadata={"layout": json.dumps(layout)})


def latent_shape(path: str | Path) -> tuple[int, ...]:
    """(1, C, T, h, w) of the job's latent, from the file's header alone."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as source:
        return tuple(source.get_slice("latent").get_shape())


def read_inputs(path: str | Path, clip_vision_output: type | None = None) -> JobInputs:
    """`clip_vision_output`: ComfyUI's comfy.clip_vision.Output class, to rebuild CLIP vision outputs."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as source:
        layout = json.loads(source.metadata()["layout"])
        tensors = {key: source.get_tensor(key) for key in source.keys()}
    conditionings = {
        name: [
            _unpack(f"{name}/{index}", packed, tensors, clip_vision_output) for index, packed in enumerate(layout[name])
        ]
        for name in CONDITIONINGS
    }
    return JobInputs(
        tensors["latent"],
        conditionings["positive"],
        conditionings["negative"],
        ModelSampling(**layout["sampling"]),
        tensors.get("noise_mask"),
        layout.get("batch_index"),
    )


def is_tensor_list(value: Any) -> bool:
    """A conditioning value that is a list of tensors (VACE's control latents and masks)."""
    return isinstance(value, (list, tuple)) and bool(value) and all(isinstance(item, torch.Tensor) for item in value)


def _plain_list(value: Any) -> bool:
    return isinstance(value, (list, tuple)) and all(isinstance(item, PLAIN) for item in value)


def _check_entry(name: str, entry: Any) -> None:
    if not (isinstance(entry, (list, tuple)) and len(entry) == 2 and isinstance(entry[0], torch.Tensor)):
        raise InvalidSettingsError(f"{name} is not CONDITIONING ([tensor, extras] entries)")


def _pack(prefix: str, entry: Any, tensors: dict[str, torch.Tensor]) -> dict[str, Any]:
    _check_entry(prefix.split("/")[0], entry)
    cross_attn, extras = entry
    tensors[f"{prefix}/cross_attn"] = cross_attn.detach().to("cpu").clone()
    packed: dict[str, Any] = {"plain": {}, "tensors": [], "tensor_lists": {}, "clip_vision": {}}
    for key, value in extras.items():
        if key in TIME_EXTENDING:
            raise InvalidSettingsError(
                f"the {prefix.split('/')[0]} conditioning carries {key!r}, which appends frames to the video inside "
                "the model; the clip-parallel sampler splits the video's own frames only. Use core KSampler for it"
            )
        if isinstance(value, torch.Tensor):
            tensors[f"{prefix}/{key}"] = value.detach().to("cpu").clone()
            packed["tensors"].append(key)
        elif isinstance(value, PLAIN) or _plain_list(value):
            packed["plain"][key] = list(value) if isinstance(value, (list, tuple)) else value
        elif is_tensor_list(value):
            for index, item in enumerate(value):  # VACE's control latents and masks: one per control input
                tensors[f"{prefix}/{key}/{index}"] = item.detach().to("cpu").clone()
            packed["tensor_lists"][key] = len(value)
        elif key == "clip_vision_output":
            fields = [f for f in CLIP_VISION_FIELDS if isinstance(getattr(value, f, None), torch.Tensor)]
            for field in fields:
                tensors[f"{prefix}/clip_vision_output/{field}"] = getattr(value, field).detach().to("cpu").clone()
            packed["clip_vision"] = {key: fields}
        else:
            raise InvalidSettingsError(
                f"the {prefix.split('/')[0]} conditioning carries {key!r} ({type(value).__name__}), which cannot "
                "reach the workers; remove the node that adds it or use core KSampler"
            )
    return packed


def _unpack(
    prefix: str, packed: dict[str, Any], tensors: dict[str, torch.Tensor], clip_vision_output: type | None
) -> list:
    extras: dict[str, Any] = dict(packed["plain"])
    for key in packed["tensors"]:
        extras[key] = tensors[f"{prefix}/{key}"]
    for key, count in packed.get("tensor_lists", {}).items():
        extras[key] = [tensors[f"{prefix}/{key}/{index}"] for index in range(count)]
    for key, fields in packed["clip_vision"].items():
        if clip_vision_output is None:
            raise InvalidSettingsError("a CLIP vision output arrived but ComfyUI's clip_vision module is not at hand")
        output = clip_vision_output()
        for field in fields:
            setattr(output, field, tensors[f"{prefix}/clip_vision_output/{field}"])
        extras[key] = output
    return [tensors[f"{prefix}/cross_attn"], extras]
