"""The seam between the engine and a model family, and the registry of families.

A family knows one kind of model: how to load it from files, how to install the dual-scope layers into
it, how to denoise one rank's clip (with the engine's sampling loop or a sampler of its own) and how to
turn its latents into frames. The engine does the rest: layout, settings, gathering, the worker side.
Adding a family is one module with a class that satisfies `ModelFamily`, plus one line in `FAMILIES`.
"""

from __future__ import annotations

import importlib
from collections.abc import Hashable
from dataclasses import dataclass
from functools import cache
from typing import Any, Protocol

import torch

from .comm import Communicator
from .context import TemporalContext
from .contract import RunControl
from .errors import InvalidSettingsError
from .job import ModelSpec

# Family name -> "module:class", relative to the package root. Imported on first use, so a family's
# libraries (diffusers, ComfyUI) load only in processes that run that family.
FAMILIES: dict[str, str] = {
    "unet3d": "models.unet3d.family:UNet3DFamily",
    "wan": "models.wan.family:WanFamily",
}


@dataclass(frozen=True)
class LatentLayout:
    """How a family's latents relate to pixels: (batch, channels, frames, height, width)."""

    channels: int
    spatial_factor: int  # pixels per latent row and column
    temporal_factor: int = 1  # pixel frames per latent frame (1: one latent frame per video frame)


@dataclass(frozen=True)
class MemoryNeed:
    """A job's estimated peak on one rank, beyond the loaded model, and what that rank holds (for the
    message that refuses it), e.g. "64 frames per worker at 512x320"."""

    bytes: int
    holding: str


class ModelFamily(Protocol):
    name: str

    def model_key(self, model: ModelSpec) -> Hashable:
        """Changes whenever the weights `model` names change, so a warm worker knows when to reload."""
        ...

    def localise(self, job: Any, comm: Communicator) -> Any:
        """The job with every file it names readable on this rank (engine.file_transfer); collective."""
        ...

    def load(self, model: ModelSpec, device: torch.device) -> Any:
        """The model ready to run on `device`. Raises ModelLoadError naming the file and the fix."""
        ...

    def patch(self, loaded: Any, ctx: TemporalContext) -> None:
        """Installs the dual-scope layers once; they read the job, the layout and the step from `ctx`."""
        ...

    def latent_layout(self, loaded: Any) -> LatentLayout: ...

    def peak_bytes(self, loaded: Any, job: Any, own: int, held: int) -> MemoryNeed | None:
        """Estimated peak memory of `job` on a rank whose clip has `own` frames and that holds `held` (with its
        halo and global frames); None when the family has no estimate."""
        ...

    def denoise(self, loaded: Any, job: Any, ctx: TemporalContext, control: RunControl) -> torch.Tensor:
        """This rank's final latents, (1, C, own frames, h, w). Checks control for cancel every step."""
        ...

    def decode(
        self, loaded: Any, latents: torch.Tensor, ctx: TemporalContext, control: RunControl
    ) -> torch.Tensor | None:
        """This rank's frames as uint8 (own frames, H, W, 3); None when the caller decodes (latent jobs).
        Checks control for cancel at points every rank passes equally often."""
        ...


@cache
def family(name: str) -> ModelFamily:
    if name not in FAMILIES:
        raise InvalidSettingsError(f"model family {name!r} is not supported; supported: {sorted(FAMILIES)}")
    module_name, _, class_name = FAMILIES[name].partition(":")
    root = __package__.rpartition(".")[0]  # the package may run under another name inside workers
    module = importlib.import_module(f"{root}.{module_name}")
    return getattr(module, class_name)()
