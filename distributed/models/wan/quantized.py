"""Weights of ComfyUI's mixed-precision layers (held as its QuantizedTensor), made ready to travel.

From ComfyUI 0.4 on such a layer writes itself out as ComfyUI's own files hold it: the quantized numbers, their
scales and a format record (`comfy_quant`), which ComfyUI's loader reads back into the same layer. Those
layers travel that way: in fp8 (or the file's own format), built by the workers exactly as the graph holds
them. ComfyUI 0.3.75's layers have no such record; theirs travel dequantized, in the dtype they compute in.
"""

from __future__ import annotations

import copy
from typing import Any

import torch

from ...engine.weight_files import SAFETENSORS_DTYPES

FORMAT_RECORD = "comfy_quant"  # the key suffix by which ComfyUI's loader knows a quantized layer


def is_quantized(weight: Any) -> bool:
    """Whether `weight` is held as ComfyUI's QuantizedTensor (its mixed-precision layers)."""
    import comfy.quant_ops

    quantized = getattr(comfy.quant_ops, "QuantizedTensor", None)
    return quantized is not None and isinstance(weight, quantized)


def layer_entries(layer: torch.nn.Module, weight: torch.Tensor, prefix: str) -> dict[str, torch.Tensor] | None:
    """What `layer` writes to a file for `weight` (its own, or the same quantized back after a merge) under
    `prefix`, its bias left out; None where the layer writes no format record (older ComfyUI) or a tensor of a
    dtype safetensors has no name for."""
    twin = copy.copy(layer)  # the layer's own serialization, of another weight, the layer itself untouched
    twin._parameters = dict(layer._parameters)
    twin._parameters["weight"] = torch.nn.Parameter(weight, requires_grad=False)
    entries = {name: _stored(tensor) for name, tensor in twin.state_dict(prefix=prefix).items()}
    entries.pop(prefix + "bias", None)
    if prefix + FORMAT_RECORD not in entries or any(t.dtype not in SAFETENSORS_DTYPES for t in entries.values()):
        return None
    return entries


def _stored(tensor: torch.Tensor) -> torch.Tensor:
    """A state-dict entry as a file holds it: a QuantizedTensor (some ComfyUI versions list the weight itself,
    its scales beside it) as its quantized numbers."""
    if not is_quantized(tensor):
        return tensor
    if hasattr(tensor, "state_dict"):  # comfy-kitchen's tensors name their parts; "" is the numbers
        return tensor.state_dict("")[""]
    return tensor._qdata


def travel_plan(diffusion_model: torch.nn.Module) -> tuple[bool, torch.dtype | None]:
    """(whether the quantized layers travel as they write themselves, the dtype they dequantize to) for a
    model; (False, None) for a model without quantized layers. One model's layers share one ComfyUI version
    and one compute dtype, so the first layer answers for all."""
    layer = next((m for m in diffusion_model.modules() if is_quantized(getattr(m, "weight", None))), None)
    if layer is None:
        return False, None
    as_written = layer_entries(layer, layer.weight, "probe.") is not None
    return as_written, layer.convert_weight(layer.weight).dtype
