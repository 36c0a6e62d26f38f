"""Text conditioning of the UNet3D family: CLIP embeddings, one per frame, from the prompt schedule."""

from __future__ import annotations

import torch

from ...engine.job import JobSpec
from ...engine.prompts import frame_weights
from .loader import LoadedPipeline


def encode_text(pipe: LoadedPipeline, prompts: list[str]) -> torch.Tensor:
    tokenizer = pipe.tokenizer
    tokens = tokenizer(
        prompts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True, return_tensors="pt"
    )
    return pipe.text_encoder(tokens.input_ids.to(pipe.device))[0]


def frame_text(pipe: LoadedPipeline, job: JobSpec, frames: range) -> torch.Tensor:
    """(2, F, L, D): unconditional then conditional embedding of each of the given global frames."""
    prompts = [segment.prompt for segment in job.prompts]
    embeddings = encode_text(pipe, [job.negative_prompt, *prompts]).float()
    weights = frame_weights(job.prompts, frames, job.blend).to(embeddings)
    cond = torch.einsum("fs,sld->fld", weights, embeddings[1:])
    uncond = embeddings[:1].expand(len(frames), -1, -1)
    return torch.stack([uncond, cond]).to(pipe.dtype)
