"""What differs between the DiT video models of ComfyUI that this family runs clip-parallel.

Wan 2.1 / 2.2 and LTX-Video share everything the dual-scope attention needs: tokens in (frame, row, column)
order, a self-attention through ComfyUI's optimized_attention with RoPE applied before it, blocks reachable
through `patches_replace["dit"][("double_block", i)]`, and ComfyUI's samplers. They differ in where the blocks
are, how many tokens a latent frame makes, how a clip's frame positions are moved to the video's timeline,
the text encoder's width, the latent's compression and the scale of the model's timestep. Each model is
recognised by ComfyUI's config class name.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from ...engine.errors import InvalidSettingsError
from ...engine.family import LatentLayout
from ...engine.settings import DualScopeSettings


class DitArchitecture:
    """One kind of DiT video model. Subclasses fill in the class attributes and the four methods."""

    kind: str
    # The encoder whose width the conditioning must have, for the error that names a mismatch.
    text_encoder: str
    # Unconnected attention settings; P and G count latent frames.
    default_attention: DualScopeSettings
    # model_sampling.timestep(sigma) times this is the timestep on the scale the model embeds (the phase bias
    # compares it with its threshold).
    timestep_scale: float = 1.0
    # Conditioning entries the model cannot run without (core KSampler fails inside the model without them).
    required_conditioning: tuple[str, ...] = ()

    def blocks(self, diffusion_model: torch.nn.Module) -> torch.nn.ModuleList:
        raise NotImplementedError

    def tokens_per_frame(self, diffusion_model: torch.nn.Module, latent: torch.Tensor) -> int:
        raise NotImplementedError

    def text_width(self, diffusion_model: torch.nn.Module) -> int:
        raise NotImplementedError

    def latent_layout(self, diffusion_model: torch.nn.Module, channels: int) -> LatentLayout:
        raise NotImplementedError

    def place_clip(self, model: Any, clip_start: Callable[[], int | None]) -> Callable[[dict[str, Any]], dict]:
        """Makes the patched `model` compute frame positions on the video's timeline, at the offset
        `clip_start()` returns (None: no job, the plain positions). Returns the step that prepares a model
        call's keyword arguments for it (the identity where the model itself carries the offset)."""
        raise NotImplementedError


class WanArchitecture(DitArchitecture):
    kind = "wan"
    text_encoder = "Wan needs its umT5-XXL text encoder, loaded with CLIPLoader type 'wan'"
    # Wan's native clip is 81 frames = 21 latent frames, so P = 10 gives each frame the window it was trained on;
    # with G = 16 a frame attends to at most 2P + 1 + G = 37 latent frames, under twice the native clip. The
    # phase bias is off: its reference setting was tuned on VideoCrafter2's timestep schedule, not on a flow
    # model's.
    default_attention = DualScopeSettings(local_window=10, global_frames=16, phase_bias=False)

    def blocks(self, diffusion_model: torch.nn.Module) -> torch.nn.ModuleList:
        return diffusion_model.blocks

    def tokens_per_frame(self, diffusion_model: torch.nn.Module, latent: torch.Tensor) -> int:
        _, patch_h, patch_w = diffusion_model.patch_size
        return -(-latent.shape[-2] // patch_h) * -(-latent.shape[-1] // patch_w)  # padded to whole patches

    def text_width(self, diffusion_model: torch.nn.Module) -> int:
        return diffusion_model.text_embedding[0].in_features

    def latent_layout(self, diffusion_model: torch.nn.Module, channels: int) -> LatentLayout:
        # Wan 2.1's VAE makes 16 channels per 8x8 pixels; Wan 2.2's (TI2V 5B) 48 per 16x16.
        return LatentLayout(channels=channels, spatial_factor=16 if channels == 48 else 8, temporal_factor=4)

    def place_clip(self, model: Any, clip_start: Callable[[], int | None]) -> Callable[[dict[str, Any]], dict]:
        def shifted(conds: dict[str, Any]) -> dict[str, Any]:
            start = clip_start()
            if start is None:
                return conds
            options = dict(conds.get("transformer_options", {}))
            options["rope_options"] = dict(options.get("rope_options", {}), shift_t=float(start))
            return dict(conds, transformer_options=options)

        return shifted


class _ClipPatchifier:
    """LTX-Video's patchifier, with the latent frame coordinates of a clip moved to its place in the video."""

    def __init__(self, patchifier: Any, clip_start: Callable[[], int | None]) -> None:
        self.patchifier = patchifier
        self.clip_start = clip_start

    def __getattr__(self, name: str) -> Any:  # unpatchify, patch_size and the rest: the model's own
        if name == "patchifier":  # not set yet (a copy being built)
            raise AttributeError(name)
        return getattr(self.patchifier, name)

    def patchify(self, latents: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        tokens, coords = self.patchifier.patchify(latents)
        start = self.clip_start()
        if start:  # coordinates count latent frames
            coords = coords.clone()
            coords[:, 0] += start
        return tokens, coords


class LtxvArchitecture(DitArchitecture):
    kind = "ltxv"
    text_encoder = "LTX-Video needs its T5-XXL text encoder, loaded with CLIPLoader type 'ltxv'"
    # LTX-Video makes 121 frames (16 latent frames) natively: P = 8 gives each frame a window of 17 latent
    # frames, about its native clip; G = 16 as for Wan. Phase bias off, as for Wan.
    default_attention = DualScopeSettings(local_window=8, global_frames=16, phase_bias=False)
    timestep_scale = 1000.0  # its sampling's timestep is sigma in [0, 1]; the model embeds 1000 times that
    required_conditioning = ("attention_mask",)  # the T5 text's mask, a positional argument of the model

    def blocks(self, diffusion_model: torch.nn.Module) -> torch.nn.ModuleList:
        return diffusion_model.transformer_blocks

    def tokens_per_frame(self, diffusion_model: torch.nn.Module, latent: torch.Tensor) -> int:
        _, patch_h, patch_w = diffusion_model.patchifier.patch_size
        return (latent.shape[-2] // patch_h) * (latent.shape[-1] // patch_w)

    def text_width(self, diffusion_model: torch.nn.Module) -> int:
        return diffusion_model.caption_projection.linear_1.in_features

    def latent_layout(self, diffusion_model: torch.nn.Module, channels: int) -> LatentLayout:
        temporal, spatial, _ = diffusion_model.vae_scale_factors
        return LatentLayout(channels=channels, spatial_factor=spatial, temporal_factor=temporal)

    def place_clip(self, model: Any, clip_start: Callable[[], int | None]) -> Callable[[dict[str, Any]], dict]:
        # The model derives RoPE's positions from its patchifier's coordinates (no rope option to shift them).
        patchifier = model.get_model_object("diffusion_model").patchifier
        model.add_object_patch("diffusion_model.patchifier", _ClipPatchifier(patchifier, clip_start))
        return lambda conds: conds


@dataclass(frozen=True)
class SupportedModel:
    description: str
    architecture: DitArchitecture


WAN = WanArchitecture()
LTXV = LtxvArchitecture()
# ComfyUI's model config class name -> what it is and how it runs.
SUPPORTED_MODELS = {
    "WAN21_T2V": SupportedModel("Wan 2.1 / 2.2 A14B text-to-video", WAN),
    "WAN21_I2V": SupportedModel("Wan 2.1 / 2.2 A14B image-to-video", WAN),
    "WAN22_T2V": SupportedModel("Wan 2.2 TI2V 5B text- and image-to-video", WAN),
    "WAN21_FunControl2V": SupportedModel("Wan 2.1 / 2.2 Fun Control (control video, start image)", WAN),
    "WAN21_Vace": SupportedModel("Wan 2.1 VACE (control video, masks, reference image)", WAN),
    "LTXV": SupportedModel("LTX-Video 0.9 text- and image-to-video", LTXV),
}


def config_name(model: Any) -> str:
    """ComfyUI's config class name of a BaseModel."""
    return type(model.model_config).__name__


def architecture_of(model: Any) -> DitArchitecture:
    """The architecture of a ComfyUI BaseModel; raises InvalidSettingsError naming the supported models."""
    config = config_name(model)
    if config not in SUPPORTED_MODELS:
        supported = ", ".join(f"{name} ({entry.description})" for name, entry in SUPPORTED_MODELS.items())
        raise InvalidSettingsError(
            f"the MODEL is a {config} ({type(model).__name__}), which this sampler cannot run clip-parallel; "
            f"supported: {supported}. Use core KSampler for other models"
        )
    return SUPPORTED_MODELS[config].architecture
