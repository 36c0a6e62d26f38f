"""Tiny random Wan 2.1 models of ComfyUI's own WanModel class, for tests and benchmarks (nothing downloaded).

Weights are drawn from a seed, large enough that attention changes the output (a weight scale of 0.05 would
leave self-attention almost without effect), and saved as safetensors where ComfyUI's UNETLoader finds them.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import save_file

TINY_WAN = {"dim": 128, "ffn_dim": 256, "num_layers": 2, "num_heads": 1, "in_dim": 16, "out_dim": 16}
TEXT_DIM = 4096  # ComfyUI's detection keeps Wan's text width at its default
WEIGHT_SCALE = 0.3


def tiny_wan_state_dict(seed: int = 0, image_to_video: bool = False, **overrides: int) -> dict[str, torch.Tensor]:
    """A random state dict that ComfyUI's model detection recognises as Wan 2.1 (T2V, or I2V)."""
    import comfy.ldm.wan.model
    import comfy.ops

    config = dict(TINY_WAN, **overrides)
    if image_to_video:
        config.setdefault("in_dim", 36)
        config["in_dim"] = overrides.get("in_dim", 36)  # 16 noise + 4 mask + 16 image channels
    with torch.device("meta"):
        model = comfy.ldm.wan.model.WanModel(
            model_type="i2v" if image_to_video else "t2v",
            text_dim=TEXT_DIM,
            operations=comfy.ops.disable_weight_init,
            **config,
        )
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for name, tensor in model.state_dict().items():
        values = torch.randn(tensor.shape, generator=generator) * WEIGHT_SCALE
        if name.endswith(("norm_q.weight", "norm_k.weight", "norm3.weight")) or ".norm" in name and "weight" in name:
            values = 1.0 + values * 0.1  # norms near identity, as trained ones are
        state[name] = values.contiguous()
    return state


def save_tiny_wan(path: Path, seed: int = 0, image_to_video: bool = False) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tiny_wan_state_dict(seed, image_to_video), str(path))
    return path
