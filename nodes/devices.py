"""The Worker Pool node's device text, checked against this machine before anything starts."""

from __future__ import annotations

import os


def gpu_count() -> int:
    import torch  # ComfyUI has it loaded already; imported late to keep the pack's import light

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def expand(text: str) -> str:
    """'auto' means every GPU, or 2 CPU workers (1 on a one-core machine); anything else goes to the engine."""
    text = text.strip().lower().replace(" ", "")
    if text in ("", "auto"):
        return "cuda:all" if gpu_count() else f"cpu:{min(2, os.cpu_count() or 1)}"
    return text


def resolve(text: str) -> list[str]:
    """One device string per worker; raises the engine's InvalidSettingsError (a ValueError) with the fix."""
    from ..distributed.pool.config import PoolConfig

    return PoolConfig(devices=expand(text)).local_devices()
