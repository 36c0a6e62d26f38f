"""Tiny random Wan 2.1 models of ComfyUI's own WanModel class, for tests and benchmarks (nothing downloaded).

Weights are drawn from a seed, large enough that attention changes the output (a weight scale of 0.05 would
leave self-attention almost without effect), and saved as safetensors where ComfyUI's UNETLoader finds them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

# Where the workflow tests put them, relative to a ComfyUI models folder.
TINY_WAN_FILES = {
    "t2v": "diffusion_models/video-infinity-tiny-wan-t2v.safetensors",
    "i2v": "diffusion_models/video-infinity-tiny-wan-i2v.safetensors",
    "vae": "vae/video-infinity-tiny-wan-vae.safetensors",
    "lora": "loras/video-infinity-tiny-wan-lora.safetensors",
    "ti2v": "diffusion_models/video-infinity-tiny-wan22-ti2v.safetensors",  # Wan 2.2 TI2V 5B's layout
    "fun_control": "diffusion_models/video-infinity-tiny-wan-fun-control.safetensors",  # Wan 2.1 Fun Control
    "camera": "diffusion_models/video-infinity-tiny-wan-camera.safetensors",  # a family the sampler refuses
    "vace": "diffusion_models/video-infinity-tiny-wan-vace.safetensors",  # Wan 2.1 VACE, one VACE block
    "t2v_fp8": "diffusion_models/video-infinity-tiny-wan-t2v-fp8-scaled.safetensors",  # as ComfyUI's *_fp8_scaled
    "t2v_mixed": "diffusion_models/video-infinity-tiny-wan-t2v-fp8-mixed.safetensors",  # quantization metadata
    "ltxv": "diffusion_models/video-infinity-tiny-ltxv.safetensors",  # LTX-Video (support/tiny_ltxv.py)
}
TINY_WAN = {"dim": 128, "ffn_dim": 256, "num_layers": 2, "num_heads": 1, "in_dim": 16, "out_dim": 16}
TEXT_DIM = 4096  # ComfyUI's detection keeps Wan's text width at its default
WEIGHT_SCALE = 0.3


def tiny_wan_state_dict(
    seed: int = 0, image_to_video: bool = False, model_class: str = "WanModel", **overrides: int
) -> dict[str, torch.Tensor]:
    """A random state dict that ComfyUI's model detection recognises as Wan 2.1 (T2V, or I2V; another class
    of comfy.ldm.wan.model, such as CameraWanModel, for the variants)."""
    import comfy.ldm.wan.model
    import comfy.ops

    config = dict(TINY_WAN, **overrides)
    if image_to_video:
        config.setdefault("in_dim", 36)
        config["in_dim"] = overrides.get("in_dim", 36)  # 16 noise + 4 mask + 16 image channels
    with torch.device("meta"):
        model = getattr(comfy.ldm.wan.model, model_class)(
            model_type=("camera" if model_class == "CameraWanModel" else "i2v") if image_to_video else "t2v",
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


def save_tiny_wan(
    path: Path, seed: int = 0, image_to_video: bool = False, model_class: str = "WanModel", **overrides: int
) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tiny_wan_state_dict(seed, image_to_video, model_class, **overrides), str(path))
    return path


def fp8_with_scale(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """`weight` as fp8 (e4m3) numbers spanning the format's range, and the 0-dim fp32 scale that restores it."""
    scale = weight.abs().max() / torch.finfo(torch.float8_e4m3fn).max
    return (weight / scale).to(torch.float8_e4m3fn), scale.reshape(()).float()


def scaled_fp8_with_lora(comfy: Any, folder: Path) -> tuple[Any, Any]:
    """The tiny scaled-fp8 Wan as UNETLoader loads it (weight_dtype default), and the same MODEL with the tiny
    LoRA applied as LoraLoaderModelOnly applies it; their files are written under `folder`."""
    return loaded_with_lora(comfy, save_tiny_wan_scaled_fp8(folder / "fp8.safetensors"), {}, folder)


def loaded_with_lora(comfy: Any, weights: Path, model_options: dict[str, Any], folder: Path) -> tuple[Any, Any]:
    """The Wan in `weights` loaded with `model_options` (as UNETLoader passes its weight_dtype), and the same
    MODEL with the tiny LoRA applied as LoraLoaderModelOnly applies it (its file written under `folder`)."""
    plain = comfy.sd.load_diffusion_model(str(weights), model_options=model_options)
    lora = comfy.utils.load_torch_file(str(save_tiny_wan_lora(folder / "lora.safetensors")), safe_load=True)
    with_lora, _ = comfy.sd.load_lora_for_models(plain, None, lora, 1.0, 0)
    return plain, with_lora


def loaded_as_a_worker(patcher: Any, cache: Path, device: torch.device | str = "cpu") -> Any:
    """`patcher` exported for the workers and loaded back by the Wan family's loader, as a worker loads it."""
    from distributed.engine.family import family
    from distributed.models.wan.export import export_model

    return family("wan").load(export_model(patcher, cache).spec(), torch.device(device)).patcher


def scaled_fp8_state_dict(state: dict[str, torch.Tensor], fp8_matmul: bool = True) -> dict[str, torch.Tensor]:
    """`state` in the layout of ComfyUI's `*_fp8_scaled` files: each block's linear weights in fp8 (e4m3)
    with a scale of their own beside them, the other weights as they are, and the `scaled_fp8` marker (empty,
    or of 2 values where the file asks ComfyUI not to multiply in fp8)."""
    scaled = {}
    for name, tensor in state.items():
        if name.startswith("blocks.") and name.endswith(".weight") and tensor.ndim == 2:
            scaled[name], scaled[name.removesuffix("weight") + "scale_weight"] = fp8_with_scale(tensor)
        else:
            scaled[name] = tensor
    scaled["scaled_fp8"] = torch.zeros(0 if fp8_matmul else 2, dtype=torch.float8_e4m3fn)
    return scaled


def save_tiny_wan_scaled_fp8(path: Path, seed: int = 0, fp8_matmul: bool = True) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(scaled_fp8_state_dict(tiny_wan_state_dict(seed), fp8_matmul), str(path))
    return path


def save_tiny_wan_mixed_fp8(path: Path, seed: int = 0) -> Path:
    """The t2v weights in ComfyUI's mixed-precision layout: the blocks' linear layers quantized (fp8 weight and its
    `weight_scale`), the rest as they are, and the file's `_quantization_metadata` naming each quantized layer
    and its format."""
    state = tiny_wan_state_dict(seed)
    layers = {}
    for name in [n for n, tensor in state.items() if n.startswith("blocks.") and n.endswith(".weight")]:
        if state[name].ndim == 2:
            layer = name.removesuffix(".weight")
            state[name], state[f"{layer}.weight_scale"] = fp8_with_scale(state[name])
            layers[layer] = {"format": "float8_e4m3fn"}
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(
        state, str(path), metadata={"_quantization_metadata": json.dumps({"format_version": "1.0", "layers": layers})}
    )
    return path


def save_tiny_wan_vae(path: Path, seed: int = 0, dim: int = 8) -> Path:
    """A random Wan 2.1 VAE that ComfyUI's VAELoader accepts (it reads the width from the weights)."""
    import comfy.ldm.wan.vae

    with torch.device("meta"):  # ComfyUI's layers skip initialisation: the values are drawn below
        vae = comfy.ldm.wan.vae.WanVAE(  # the layout ComfyUI builds for a Wan 2.1 VAE, at a small width
            dim=dim, z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=2, temperal_downsample=[False, True, True]
        )
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for name, tensor in vae.state_dict().items():
        if name.endswith("gamma"):
            state[name] = torch.ones(tensor.shape)
        elif tensor.ndim < 2:
            state[name] = torch.zeros(tensor.shape)
        else:  # fan-in scaled, so activations keep their size through the layers
            state[name] = torch.randn(tensor.shape, generator=generator) / tensor[0].numel() ** 0.5
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({name: tensor.contiguous() for name, tensor in state.items()}, str(path))
    return path


def save_tiny_wan_lora(path: Path, seed: int = 0, rank: int = 4) -> Path:
    """A random LoRA on the self-attention projections of the tiny Wan, in the lora_up / lora_down layout."""
    generator = torch.Generator().manual_seed(seed)
    dim = TINY_WAN["dim"]
    weights = {}
    for block in range(TINY_WAN["num_layers"]):
        for projection in ("q", "k", "v", "o"):
            key = f"diffusion_model.blocks.{block}.self_attn.{projection}"
            weights[f"{key}.lora_down.weight"] = torch.randn(rank, dim, generator=generator) * 0.3
            weights[f"{key}.lora_up.weight"] = torch.randn(dim, rank, generator=generator) * 0.3
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(weights, str(path))
    return path


TEXT_TOKENS = 8


def load_tiny_wan(comfy: Any, weights: str) -> Any:
    """The saved weights as ComfyUI's ModelPatcher, in fp32 (the precision the comparisons are made in)."""
    from safetensors.torch import load_file

    return comfy.sd.load_diffusion_model_state_dict(load_file(weights), model_options={"dtype": torch.float32})


def random_conditioning(seed: int, model: Any = None) -> list:
    """CONDITIONING of Wan's (and LTX-Video's) text width, drawn from a seed (their text encoders are far too
    big for tests). For an LTX-Video `model` (a ModelPatcher) it carries the text's attention mask, as
    LTX-Video's T5 encoder gives one; its last two tokens are padding."""
    text = torch.randn(1, TEXT_TOKENS, TEXT_DIM, generator=torch.Generator().manual_seed(seed))
    extras = {}
    if model is not None and type(model.model.model_config).__name__ == "LTXV":
        extras["attention_mask"] = torch.ones(1, TEXT_TOKENS, dtype=torch.int64)  # as the tokenizer gives it
        extras["attention_mask"][:, -2:] = 0
    return [[text, extras]]


def core_sample(
    comfy: Any, model: Any, latent: torch.Tensor, spec: Any, noise_mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Core KSampler on `model` (ComfySampling `spec`), with random_conditioning(1) and (2) as the prompts."""
    noise = comfy.sample.prepare_noise(latent, spec.seed)
    return comfy.sample.sample(
        model, noise, spec.steps, spec.cfg, spec.sampler_name, spec.scheduler, random_conditioning(1, model),
        random_conditioning(2, model), latent, denoise=spec.denoise, noise_mask=noise_mask, seed=spec.seed,
        disable_pbar=True,
    )  # fmt: skip
