"""Plain values that travel between the pack's nodes (picklable, no ComfyUI objects)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass(frozen=True)
class ModelChoice:
    base: str  # diffusers pipeline folder
    unet: str | None  # optional UNet override (folder or .safetensors file)
    dtype: str
    name: str  # what the user picked, for messages

    def job_model(self) -> dict[str, Any]:
        return {"base": self.base, "unet": self.unet, "dtype": self.dtype}


@dataclass(frozen=True)
class PoolChoice:
    devices: str  # "auto", "cpu:N", "cuda:all" or a comma list such as "cuda:0,cuda:1"
    keep_warm: bool = True
    timeout_s: float = 600.0


@dataclass
class VideoFrames:
    """A finished video as uint8 (T, H, W, 3): four times smaller than ComfyUI's float32 IMAGE."""

    frames: np.ndarray
    fps: float
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def count(self) -> int:
        return int(self.frames.shape[0])
