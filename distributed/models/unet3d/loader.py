"""Loads a UNet3D-family text-to-video pipeline from local files only, with errors that name the file."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from diffusers import AutoencoderKL
from safetensors import SafetensorError
from safetensors.torch import load_file
from transformers import AutoTokenizer, CLIPTextModel

from ...engine.dtypes import torch_dtype
from ...engine.errors import ModelLoadError
from ...engine.job import ModelSpec
from ...engine.weight_files import check_safetensors_file, check_weights_folder
from .model import SUPPORTED_UNET_CLASSES, UNet3DVideoCrafterConditionModel

PIPELINE_PARTS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")


@dataclass
class LoadedPipeline:
    unet: UNet3DVideoCrafterConditionModel
    vae: AutoencoderKL
    text_encoder: CLIPTextModel
    tokenizer: Any
    scheduler_config: dict[str, Any]
    dtype: torch.dtype
    device: torch.device

    @property
    def vae_scale(self) -> int:
        """Pixels per latent row and column: each VAE block after the first halves the size."""
        return 2 ** (len(self.vae.config.block_out_channels) - 1)


def load_pipeline(spec: ModelSpec, device: torch.device | str = "cpu") -> LoadedPipeline:
    _quiet_library_logs()
    device = torch.device(device)
    dtype = torch_dtype(spec.dtype)
    if spec.weight_dtype != "default":
        raise ModelLoadError(
            f"weight_dtype {spec.weight_dtype!r} is for ComfyUI's own models; a diffusers pipeline is held in its dtype"
        )
    base = _check_pipeline_folder(Path(spec.base))
    scheduler_config = _read_json(base / "scheduler" / "scheduler_config.json")
    if spec.unet:
        unet = load_unet_override(Path(spec.unet), base / "unet")
    else:
        unet = _load_unet_folder(base / "unet")
    text_encoder = _load_weights("text encoder", base / "text_encoder", CLIPTextModel.from_pretrained)
    tokenizer = _load_part("tokenizer", base / "tokenizer", AutoTokenizer.from_pretrained)
    vae = _load_weights("VAE", base / "vae", AutoencoderKL.from_pretrained)
    _check_sizes(unet, text_encoder, vae, spec)
    for module in (unet, vae, text_encoder):
        module.to(device=device, dtype=dtype).eval().requires_grad_(False)
    return LoadedPipeline(unet, vae, text_encoder, tokenizer, scheduler_config, dtype, device)


def _check_pipeline_folder(base: Path) -> Path:
    if not base.is_dir():
        raise ModelLoadError(
            f"model folder {base} does not exist; give a diffusers text-to-video pipeline folder "
            f"(with {', '.join(p + '/' for p in PIPELINE_PARTS)})"
        )
    missing = [part for part in PIPELINE_PARTS if not (base / part).is_dir()]
    if missing:
        raise ModelLoadError(
            f"{base} is not a diffusers text-to-video pipeline folder: it lacks {', '.join(m + '/' for m in missing)} "
            f"(expected {', '.join(p + '/' for p in PIPELINE_PARTS)}, as in the Zeroscope / ModelScope layout)"
        )
    return base


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ModelLoadError(f"{path} is missing; the pipeline folder needs it")
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise ModelLoadError(f"{path} is not valid JSON ({error})") from error


def _unet_config(folder: Path) -> dict[str, Any]:
    config = _read_json(folder / "config.json")
    name = config.get("_class_name")
    if name not in SUPPORTED_UNET_CLASSES:
        raise ModelLoadError(
            f"{folder / 'config.json'} describes a {name!r}; this engine drives {list(SUPPORTED_UNET_CLASSES)} "
            "(ModelScope / Zeroscope / VideoCrafter2 diffusers layouts)"
        )
    return config


def _load_unet_folder(folder: Path) -> UNet3DVideoCrafterConditionModel:
    _unet_config(folder)
    return _load_weights("UNet", folder, UNet3DVideoCrafterConditionModel.from_pretrained)


def load_unet_override(path: Path, base_unet: Path) -> UNet3DVideoCrafterConditionModel:
    """A UNet given as a diffusers folder, or a single .safetensors file whose config is a same-stem
    .json beside it or else the base pipeline's UNet config. fps conditioning is switched on when the
    file carries fps embedding weights (VideoCrafter2)."""
    if path.is_dir():
        return _load_unet_folder(path)
    if not path.is_file():
        raise ModelLoadError(f"UNet file {path} does not exist; give a .safetensors file or a diffusers UNet folder")
    if path.suffix != ".safetensors":
        raise ModelLoadError(
            f"UNet file {path} is not a .safetensors file; other formats are refused because they can run code "
            "when loaded. Convert it to safetensors"
        )
    sidecar = path.with_suffix(".json")
    config = _read_json(sidecar) if sidecar.is_file() else _unet_config(base_unet)
    state = _read_safetensors(path)
    config = {k: v for k, v in config.items() if not k.startswith("_")}
    config["fps_cond"] = any(key.startswith("fps_embedding.") for key in state)
    try:
        unet = UNet3DVideoCrafterConditionModel(**config)
    except TypeError as error:
        raise ModelLoadError(f"the UNet config for {path} has fields this UNet does not take ({error})") from error
    result = unet.load_state_dict(state, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise ModelLoadError(
            f"{path} does not fit the UNet config (from {sidecar if sidecar.is_file() else base_unet / 'config.json'}): "
            f"{len(result.missing_keys)} weights missing (e.g. {result.missing_keys[:3]}), "
            f"{len(result.unexpected_keys)} unexpected (e.g. {result.unexpected_keys[:3]}). "
            "Put the matching config beside it as a same-name .json"
        )
    return unet


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    check_safetensors_file(path)
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as error:
        raise ModelLoadError(
            f"{path} is not a readable safetensors file ({error}); the file may be truncated or corrupt"
        ) from error


def _load_weights(label: str, folder: Path, loader: Any) -> Any:
    """A part with weights: safetensors only (pickles are refused on every route), checked whole first."""
    try:
        check_weights_folder(folder, label)
    except ModelLoadError as error:
        raise ModelLoadError(f"could not load the {label} from {folder}: {error}") from None
    return _load_part(label, folder, loader, use_safetensors=True)


def _load_part(label: str, folder: Path, loader: Any, **options: Any) -> Any:
    try:
        return loader(str(folder), local_files_only=True, **options)
    except Exception as error:  # loaders raise many types; the user needs the file and the cause
        raise ModelLoadError(f"could not load the {label} from {folder}: {type(error).__name__}: {error}") from error


def _check_sizes(unet: Any, text_encoder: Any, vae: Any, spec: ModelSpec) -> None:
    text_width = text_encoder.config.hidden_size
    if unet.config.cross_attention_dim != text_width:
        raise ModelLoadError(
            f"the UNet expects text embeddings of width {unet.config.cross_attention_dim} but the text encoder in "
            f"{spec.base}/text_encoder makes {text_width}: the UNet and the text encoder come from different models"
        )
    if unet.config.in_channels != vae.config.latent_channels:
        raise ModelLoadError(
            f"the UNet takes {unet.config.in_channels} latent channels but the VAE in {spec.base}/vae makes "
            f"{vae.config.latent_channels}: the UNet and the VAE come from different models"
        )


def _quiet_library_logs() -> None:
    """Load-time chatter (accelerate hints, progress bars) would bury our own messages in worker logs."""
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    diffusers_logging.set_verbosity_error()
    transformers_logging.set_verbosity_error()
    transformers_logging.disable_progress_bar()
