"""Tiny random LTX-Video models of ComfyUI's own LTXVModel class, for tests (nothing downloaded).

ComfyUI's model detection reads an LTX-Video file's head width as the attention width over 32 heads, so the
tiny model keeps 32 heads of width 2; its text width stays at T5-XXL's 4096, as detection assumes.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import save_file

HEADS = 32  # fixed by ComfyUI's detection of LTX-Video files
TINY_LTXV = {"attention_head_dim": 2, "num_layers": 2, "in_channels": 128}
WEIGHT_SCALE = 0.3  # as the tiny Wan: large enough that attention changes the output


def tiny_ltxv_state_dict(seed: int = 0) -> dict[str, torch.Tensor]:
    """A random state dict that ComfyUI's model detection recognises as LTX-Video."""
    import comfy.ldm.lightricks.model
    import comfy.ops

    width = HEADS * TINY_LTXV["attention_head_dim"]
    with torch.device("meta"):
        model = comfy.ldm.lightricks.model.LTXVModel(
            num_attention_heads=HEADS,
            cross_attention_dim=width,  # the projected caption is as wide as the model
            operations=comfy.ops.disable_weight_init,
            **TINY_LTXV,
        )
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for name, tensor in model.state_dict().items():
        values = torch.randn(tensor.shape, generator=generator) * WEIGHT_SCALE
        if "norm" in name and name.endswith("weight"):
            values = 1.0 + values * 0.1  # norms near identity, as trained ones are
        state[name] = values.contiguous()
    return state


def save_tiny_ltxv(path: Path, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tiny_ltxv_state_dict(seed), str(path))
    return path
