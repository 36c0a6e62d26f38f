"""Video-Infinity for ComfyUI: clip-parallel long video generation with dual-scope temporal attention.

ComfyUI entry point. Only the V3 `comfy_entrypoint` is exported (ComfyUI ignores it when a pack also
exports NODE_CLASS_MAPPINGS). Nothing heavy is imported here: the nodes load the engine lazily.
"""

WEB_DIRECTORY = "./web"


async def comfy_entrypoint():
    from .nodes import VideoInfinityExtension

    return VideoInfinityExtension()


__all__ = ["WEB_DIRECTORY", "comfy_entrypoint"]
