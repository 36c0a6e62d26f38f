"""The one place the pack imports ComfyUI's node API: a pinned, versioned module of the embedded host (0.0.2)."""

from comfy_api.v0_0_2 import ComfyExtension, io, ui

CATEGORY = "video/Video-Infinity"

# Custom socket types. Their values are plain data (see values.py): nothing ComfyUI-owned ever reaches a worker.
VideoModel = io.Custom("VIDEO_INFINITY_MODEL")
Attention = io.Custom("VIDEO_INFINITY_ATTENTION")
Pool = io.Custom("VIDEO_INFINITY_POOL")
Frames = io.Custom("VIDEO_INFINITY_FRAMES")

__all__ = ["CATEGORY", "Attention", "ComfyExtension", "Frames", "Pool", "VideoModel", "io", "ui"]
