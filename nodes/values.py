"""Plain values that travel between the pack's nodes (picklable, no ComfyUI objects)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..distributed.engine.choices import AUTO_DEVICES, DEFAULT_COLLECTIVE_TIMEOUT_S


@dataclass(frozen=True)
class ModelChoice:
    base: str  # diffusers pipeline folder
    unet: str | None  # optional UNet override (folder or .safetensors file)
    dtype: str
    name: str  # what the user picked, for messages

    def spec(self):
        """The engine's ModelSpec for this choice."""
        from ..distributed.engine.job import ModelSpec

        return ModelSpec(base=self.base, unet=self.unet, dtype=self.dtype)


@dataclass(frozen=True)
class PoolChoice:
    devices: str  # "auto", "cpu:N", "cuda:all" or a comma list such as "cuda:0,cuda:1"
    keep_warm: bool = True
    timeout_s: float = DEFAULT_COLLECTIVE_TIMEOUT_S  # the longest a worker may wait for the others inside a collective
    job_timeout_s: float = 0.0  # the longest the node waits for the video before cancelling it; 0: no limit


DEFAULT_POOL = PoolChoice(devices=AUTO_DEVICES)  # what a sampler uses with no Worker Pool connected


@dataclass
class VideoFrames:
    """A finished video as uint8 (T, H, W, 3): four times smaller than ComfyUI's float32 IMAGE."""

    frames: np.ndarray
    fps: float
    info: dict[str, Any] = field(default_factory=dict)
