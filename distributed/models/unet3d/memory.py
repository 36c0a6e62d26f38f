"""The memory a UNet3D job needs on one rank beyond the loaded model, estimated before it runs.

Everything a step holds scales with the rank's latent pixel-frames (frames x latent height x width),
weighted by the channels of every UNet level (a level at half the size holds a quarter of the pixels).
Three parts:
- whole-clip tensors (the UNet's skip connections and live activations, the latents, the decoded frames):
  proportional to the clip;
- transient tensors (chunked feed-forwards and per-frame layers, the blocked attention's key windows):
  proportional to the clip until the chunks reach their size, then flat;
- the text conditioning, one embedding per frame (exact, not estimated);
- the VAE decoder's activations for one chunk of frames at full resolution (it decodes in chunks);
- a fixed part (text encoding, the scheduler, buffers).
The coefficients were measured on the demo model with `python -m benchmarks.memory_admission`, which
prints the estimate against the measured peak at several sizes.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ...engine import banded
from .chunked import chunk_elements

DECODE_CHUNK = 8  # frames per VAE call: bounds the decoder's activation memory

WHOLE_CLIP_TENSORS = 9.5  # tensors of one unit (below) held per latent pixel-frame for the whole step
TRANSIENT_TENSORS = 26.5  # the same for transient tensors, until they reach their cap
TRANSIENT_CAP_CHUNKS = 3.2  # the cap, in attention chunks plus per-frame chunks
DECODE_TENSORS = 5.9  # decoder tensors of one unit (per pixel, every level) live per decoded frame
FIXED_BYTES = 37 * 2**20
CFG_BATCH = 2  # unconditional and conditional passes run as one batch


def level_channels(block_out_channels: Sequence[int]) -> float:
    """Channels of every level of a network that halves the size per level, in full-size pixels."""
    return sum(c / 4**level for level, c in enumerate(block_out_channels))


def unit_bytes(block_out_channels: Sequence[int], dtype: torch.dtype) -> int:
    """Bytes of one value per channel of every UNet level, per latent pixel-frame, for the CFG batch."""
    return int(CFG_BATCH * level_channels(block_out_channels) * _element(dtype))


def _element(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


def job_peak_bytes(
    unet_channels: Sequence[int],
    vae_channels: Sequence[int],
    dtype: torch.dtype,
    device: torch.device,
    frames: int,
    latent_size: tuple[int, int],
    pixel_size: tuple[int, int],
    text_shape: tuple[int, int],
) -> int:
    """Estimated peak of a job on a rank holding `frames` latent frames (halo and global frames included).

    latent_size and pixel_size: (height, width) of a latent frame and of a video frame; text_shape:
    (tokens, width) of one text embedding.
    """
    pixel_frames = frames * latent_size[0] * latent_size[1]
    unit = unit_bytes(unet_channels, dtype)
    whole = WHOLE_CLIP_TENSORS * unit * pixel_frames
    cap = TRANSIENT_CAP_CHUNKS * (banded.chunk_elements(device) + chunk_elements(device)) * _element(dtype)
    transient = min(TRANSIENT_TENSORS * unit * pixel_frames, cap)
    decoded = min(frames, DECODE_CHUNK) * pixel_size[0] * pixel_size[1]
    decode = DECODE_TENSORS * decoded * level_channels(vae_channels) * _element(dtype)
    text = CFG_BATCH * frames * text_shape[0] * text_shape[1] * _element(dtype)
    return int(FIXED_BYTES + whole + transient + decode + text)
