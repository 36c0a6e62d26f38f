"""Tiny random pipelines of the real UNet3D family, for tests and benchmarks (nothing is downloaded).

The layout is a diffusers text-to-video pipeline folder, exactly what users point the loader at.
"""

from __future__ import annotations

import json
import string
from pathlib import Path
from typing import Any

import torch
from diffusers import AutoencoderKL, DDIMScheduler
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from distributed.models.unet3d.model import UNet3DVideoCrafterConditionModel

TOKENIZER_MAX_LENGTH = 16


def write_word_tokenizer(folder: Path, words: list[str] | None = None, max_length: int = TOKENIZER_MAX_LENGTH) -> int:
    """Writes a CLIP BPE tokenizer whose vocabulary is single letters plus the given whole words.

    Returns the vocabulary size.
    """
    folder.mkdir(parents=True, exist_ok=True)
    tokens: list[str] = ["<|startoftext|>", "<|endoftext|>"]
    tokens += [c for c in string.ascii_lowercase] + [c + "</w>" for c in string.ascii_lowercase]
    merges: list[str] = []
    for word in sorted(set(words or [])):
        if not word.isalpha() or not word.islower() or len(word) < 2:
            continue
        pieces = list(word[:-1]) + [word[-1] + "</w>"]
        while len(pieces) > 1:  # merge left to right so the whole word becomes one token
            merged = pieces[0] + pieces[1]
            merges.append(f"{pieces[0]} {pieces[1]}")
            if merged not in tokens:
                tokens.append(merged)
            pieces = [merged] + pieces[2:]
    vocab = {token: index for index, token in enumerate(dict.fromkeys(tokens))}
    (folder / "vocab.json").write_text(json.dumps(vocab))
    lines = ["#version: 0.2", *dict.fromkeys(merges)]  # no blank lines: the BPE reader rejects them
    (folder / "merges.txt").write_text("\n".join(lines) + "\n")
    tokenizer = CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=max_length)
    tokenizer.save_pretrained(folder)
    return len(vocab)


def tiny_unet_config(**overrides: Any) -> dict[str, Any]:
    config: dict[str, Any] = dict(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        down_block_types=("CrossAttnDownBlock3D", "DownBlock3D"),
        up_block_types=("UpBlock3D", "CrossAttnUpBlock3D"),
        block_out_channels=(32, 64),
        layers_per_block=1,
        cross_attention_dim=32,
        attention_head_dim=8,
        norm_num_groups=8,
        fps_cond=True,
    )
    config.update(overrides)
    return config


def tiny_vae(**overrides: Any) -> AutoencoderKL:
    """A per-frame AutoencoderKL, 64x64 RGB <-> 4x8x8 latents (three downsamples); overrides win."""
    config: dict[str, Any] = dict(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(8, 8, 16, 16),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=4,
        sample_size=64,
    )
    config.update(overrides)
    return AutoencoderKL(**config)


def tiny_text_encoder(vocab_size: int, hidden_size: int = 32) -> CLIPTextModel:
    config = CLIPTextConfig(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=hidden_size * 2,
        num_hidden_layers=1,
        num_attention_heads=2,
        max_position_embeddings=TOKENIZER_MAX_LENGTH,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=1,
    )
    return CLIPTextModel(config)


def default_scheduler() -> DDIMScheduler:
    return DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
    )


def save_pipeline(
    folder: Path,
    unet: torch.nn.Module,
    vae: AutoencoderKL,
    text_encoder: CLIPTextModel,
    scheduler: DDIMScheduler,
    words: list[str] | None = None,
) -> Path:
    """Saves the parts as a diffusers text-to-video pipeline folder with safetensors weights."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    unet.save_pretrained(folder / "unet", safe_serialization=True)
    vae.save_pretrained(folder / "vae", safe_serialization=True)
    text_encoder.save_pretrained(folder / "text_encoder", safe_serialization=True)
    scheduler.save_pretrained(folder / "scheduler")
    if not (folder / "tokenizer" / "vocab.json").exists():
        write_word_tokenizer(folder / "tokenizer", words)
    index = {
        "_class_name": "TextToVideoSDPipeline",
        "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "unet": ["diffusers", "UNet3DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
        "scheduler": ["diffusers", type(scheduler).__name__],
    }
    (folder / "model_index.json").write_text(json.dumps(index, indent=2))
    return folder


def build_tiny_pipeline(
    folder: Path, seed: int = 0, words: list[str] | None = None, wake_zero_init: bool = True, **unet_overrides: Any
) -> Path:
    """A random tiny pipeline folder (about 1.5 M parameters): fast on a CPU, same classes as the real family.

    diffusers zero-initialises the last stage of every temporal convolution (and some output
    projections), which would make those layers no-ops; wake_zero_init gives them small random weights
    so tests exercise every temporal path.
    """
    torch.manual_seed(seed)
    folder = Path(folder)
    vocab_size = write_word_tokenizer(folder / "tokenizer", words)
    unet = UNet3DVideoCrafterConditionModel(**tiny_unet_config(**unet_overrides))
    if wake_zero_init:
        with torch.no_grad():
            for parameter in unet.parameters():
                if not parameter.any():
                    parameter.normal_(0.0, 0.05)
    text_encoder = tiny_text_encoder(vocab_size, hidden_size=unet.config.cross_attention_dim)
    return save_pipeline(folder, unet, tiny_vae(), text_encoder, default_scheduler(), words)
