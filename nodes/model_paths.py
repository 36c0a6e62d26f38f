"""Finds video models through ComfyUI's folder_paths: models/video_infinity, models/diffusers, the pack's demo.

`video_infinity` is registered as a model folder of its own, so `extra_model_paths.yaml` entries such as
`video_infinity: /data/video-models` work like for any core folder.
"""

from __future__ import annotations

import os
from pathlib import Path

import folder_paths

FOLDER = "video_infinity"
PACK_ASSETS = Path(__file__).resolve().parents[1] / "assets"
NO_UNET = "none (use the pipeline's unet)"
_MAX_DEPTH = 3  # how deep to look for pipeline folders under a model root


def register() -> None:
    """Adds models/video_infinity without dropping paths that extra_model_paths.yaml already gave it."""
    default = os.path.join(folder_paths.models_dir, FOLDER)
    folder_paths.add_model_folder_path(FOLDER, default, is_default=True)
    os.makedirs(default, exist_ok=True)


def roots() -> list[Path]:
    """Model roots in search order: the user's folders first, the pack's demo model last."""
    found: list[Path] = []
    for name in (FOLDER, "diffusers"):
        try:
            found += [Path(p) for p in folder_paths.get_folder_paths(name)]
        except KeyError:
            continue
    found.append(PACK_ASSETS)
    return list(dict.fromkeys(found))


def _walk(root: Path):
    """Yields (relative name, path, kind) for pipelines, UNet folders and .safetensors files under root."""
    if not root.is_dir():
        return
    stack = [(root, 0)]
    while stack:
        folder, depth = stack.pop()
        try:
            entries = sorted(folder.iterdir())
        except OSError:
            continue
        for entry in entries:
            name = entry.relative_to(root).as_posix()
            if entry.is_dir():
                if (entry / "model_index.json").is_file():
                    yield name, entry, "pipeline"
                elif (entry / "config.json").is_file() and any(entry.glob("diffusion_pytorch_model*.safetensors")):
                    yield name, entry, "unet"
                elif depth + 1 < _MAX_DEPTH:
                    stack.append((entry, depth + 1))
            elif entry.suffix == ".safetensors":
                yield name, entry, "unet"


def _collect(kind: str) -> dict[str, Path]:
    found: dict[str, Path] = {}
    for root in roots():
        for name, path, entry_kind in _walk(root):
            if entry_kind == kind:
                found.setdefault(name, path)  # an earlier root wins on a name clash
    return found


def pipelines() -> dict[str, Path]:
    return _collect("pipeline")


def unet_overrides() -> dict[str, Path]:
    return _collect("unet")


def where_to_put() -> str:
    folders = [str(p) for p in roots() if p != PACK_ASSETS]
    return "put a diffusers text-to-video pipeline folder (with model_index.json) into one of: " + ", ".join(folders)
