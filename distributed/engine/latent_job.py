"""A latent job: denoise a LATENT the graph made, with the graph's conditioning, on the graph's model.

Families that run ComfyUI's own models take this job. Its tensors (the latent and the conditioning) travel
in a safetensors file the coordinator writes; the job itself is plain data like JobSpec.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar

from . import choices
from .errors import InvalidSettingsError
from .job import ModelSpec
from .layout import check_shares
from .settings import DualScopeSettings


@dataclass(frozen=True)
class ComfySampling:
    """What core KSampler and KSamplerAdvanced take besides the model, the conditioning and the latent."""

    sampler_name: str
    scheduler: str
    steps: int
    cfg: float
    seed: int
    denoise: float = 1.0
    add_noise: bool = True
    start_at_step: int = 0
    end_at_step: int = 10000
    return_with_leftover_noise: bool = False

    def __post_init__(self) -> None:
        limit = choices.COMFY_MAX_STEPS
        if isinstance(self.steps, bool) or not isinstance(self.steps, int) or not 1 <= self.steps <= limit:
            raise InvalidSettingsError(f"steps is {self.steps!r}; use a whole number from 1 to {limit}")
        if self.cfg < 0:
            raise InvalidSettingsError(f"cfg is {self.cfg}; it must be 0 or more")
        if not 0.0 <= self.denoise <= 1.0:
            raise InvalidSettingsError(f"denoise is {self.denoise}; it must be from 0 to 1")
        if self.start_at_step < 0 or self.end_at_step < 0:
            raise InvalidSettingsError("start_at_step and end_at_step must be 0 or more")


@dataclass(frozen=True)
class LatentJob:
    model: ModelSpec
    inputs: str  # safetensors file holding the latent and the conditioning
    frames: int  # latent frames of the whole video
    sampling: ComfySampling
    attention: DualScopeSettings = field(default_factory=DualScopeSettings)
    frame_shares: tuple[float, ...] = ()  # relative latent frames per worker (layout.FrameLayout); () = even
    KIND: ClassVar[str] = "latent"

    def __post_init__(self) -> None:
        object.__setattr__(self, "frame_shares", tuple(self.frame_shares))  # a JSON list on arrival
        self.validate()

    def validate(self, world_size: int | None = None) -> None:
        if isinstance(self.frames, bool) or not isinstance(self.frames, int) or self.frames < 1:
            raise InvalidSettingsError(f"the latent has {self.frames!r} frames; it needs at least one")
        if world_size is not None and self.frames < world_size:
            raise InvalidSettingsError(
                f"the latent has {self.frames} latent frames but the pool has {world_size} workers; every worker "
                f"needs at least one latent frame: make the video longer (Wan: {4 * world_size - 3} frames or more, "
                f"LTX-Video: {8 * world_size - 7}) "
                "or use fewer workers"
            )
        if world_size is not None and self.frame_shares:
            check_shares(self.frame_shares, world_size)

    def to_dict(self) -> dict[str, Any]:
        return dict(asdict(self), kind=self.KIND)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LatentJob:
        data = {key: value for key, value in data.items() if key != "kind"}
        try:
            return cls(
                model=ModelSpec(**data.pop("model")),
                sampling=ComfySampling(**data.pop("sampling")),
                attention=DualScopeSettings.from_dict(data.pop("attention", None)),
                **data,
            )
        except (KeyError, TypeError) as error:
            raise InvalidSettingsError(f"the latent job is malformed ({error})") from error
