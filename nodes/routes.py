"""HTTP routes the pack adds to ComfyUI's server: pool status and unload for the web panel, help pages."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

from aiohttp import web

from . import model_paths, pool_access

PACK_ROOT = Path(__file__).resolve().parents[1]
DOCS = PACK_ROOT / "web" / "docs"
_registered = False


def register() -> None:
    global _registered
    if _registered:
        return
    from server import PromptServer

    routes = PromptServer.instance.routes

    @routes.get("/video_infinity/pool")
    async def pool_status(request: web.Request) -> web.Response:
        # status() may talk to the workers: keep the event loop free
        return web.json_response(await asyncio.to_thread(pool_access.status))

    @routes.post("/video_infinity/unload")
    async def unload(request: web.Request) -> web.Response:
        return web.json_response(await asyncio.to_thread(pool_access.unload))

    @routes.get("/video_infinity/models")
    async def models(request: web.Request) -> web.Response:
        return web.json_response(
            {
                "pipelines": {name: str(path) for name, path in model_paths.pipelines().items()},
                "unets": {name: str(path) for name, path in model_paths.unet_overrides().items()},
                "roots": [str(root) for root in model_paths.roots()],
            }
        )

    _register_docs_alias(routes)
    _registered = True


def _register_docs_alias(routes: web.RouteTableDef) -> None:
    """The front end finds help pages at /extensions/<pack>/docs/<Node>.md, taking <pack> as the module path's
    second dotted part. A folder name with dots (e.g. 'Video-Infinity.Clip-Parallel-Pack') is cut at its first
    dot, so the static route ComfyUI serves for the whole name is never asked: answer the cut name too."""
    folder = PACK_ROOT.name
    if "." not in folder:
        return
    prefix = folder.split(".", 1)[0]

    @routes.get(f"/extensions/{prefix}/docs/{{page}}")
    async def help_page(request: web.Request) -> web.StreamResponse:
        page = request.match_info["page"]
        path = (DOCS / page).resolve()
        if path.parent != DOCS.resolve() or path.suffix != ".md" or not path.is_file():
            raise web.HTTPNotFound()
        return web.FileResponse(path)

    logging.info("[Video-Infinity] help pages also served at /extensions/%s/docs/", prefix)
