"""The pack's V3 nodes. Importing this registers the model folder and the HTTP routes."""

from __future__ import annotations

import logging

from . import model_paths
from .api import ComfyExtension, io
from .attention import DualScopeAttention
from .ksampler import ClipParallelKSampler
from .loader import LoadVideoModel
from .pool import UnloadPool, WorkerPool
from .sampler import ClipParallelSampler
from .save import SaveVideo

NODES: list[type[io.ComfyNode]] = [
    LoadVideoModel,
    DualScopeAttention,
    WorkerPool,
    ClipParallelSampler,
    ClipParallelKSampler,
    SaveVideo,
    UnloadPool,
]


def setup() -> None:
    """Idempotent: the model folder (before any schema lists models) and the web routes."""
    model_paths.register()
    try:
        from . import routes

        routes.register()
    except Exception as error:  # noqa: BLE001 - without a server (e.g. scripts) the nodes still work
        logging.warning("[Video-Infinity] web routes not registered: %s", error)


class VideoInfinityExtension(ComfyExtension):
    async def on_load(self) -> None:
        setup()

    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        setup()  # this ComfyUI version never calls on_load; get_node_list is called once per load
        return NODES
