"""A generation job: plain data that crosses process boundaries as a dict, validated up front."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from .errors import InvalidSettingsError
from .prompts import PromptSegment, parse_schedule
from .settings import DualScopeSettings

SAMPLERS = ("ddim", "dpmpp_2m", "sde_dpmpp")
DTYPES = ("fp32", "fp16", "bf16")


@dataclass(frozen=True)
class ModelSpec:
    base: str  # a diffusers pipeline folder (unet/ vae/ text_encoder/ tokenizer/ scheduler/)
    unet: str | None = None  # optional UNet override: a diffusers folder or a single .safetensors file
    dtype: str = "fp32"

    def key(self) -> tuple[str, str | None, str]:
        return (self.base, self.unet, self.dtype)


@dataclass(frozen=True)
class JobSpec:
    model: ModelSpec
    prompts: tuple[PromptSegment, ...]
    frames: int
    height: int = 64
    width: int = 64
    steps: int = 30
    cfg: float = 12.0
    sampler: str = "sde_dpmpp"
    seed: int = 0
    fps: float = 24.0
    negative_prompt: str = ""
    blend: int = 0  # frames over which neighbouring prompt segments cross-fade
    attention: DualScopeSettings = field(default_factory=DualScopeSettings)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["prompts"] = [asdict(p) for p in self.prompts]
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> JobSpec:
        data = dict(data)
        if "model" not in data:
            raise InvalidSettingsError("the job names no model; give model={'base': <pipeline folder>}")
        model = data.pop("model")
        model = model if isinstance(model, ModelSpec) else ModelSpec(**model)
        frames = _positive_int(data.get("frames"), "frames")
        prompt = data.pop("prompt", None)
        schedule = data.pop("prompts", None)
        if schedule is None:
            if prompt is None:
                raise InvalidSettingsError("the job has no prompt; give prompt='...' or a prompt schedule")
            schedule = prompt
        prompts = parse_schedule(schedule, frames)
        attention = data.pop("attention", None)
        attention = attention if isinstance(attention, DualScopeSettings) else DualScopeSettings.from_dict(attention)
        known = {f for f in cls.__dataclass_fields__} - {"model", "prompts", "attention"}
        unknown = sorted(set(data) - known)
        if unknown:
            raise InvalidSettingsError(f"unknown job fields {unknown}; known: {sorted(known)}")
        spec = cls(model=model, prompts=prompts, attention=attention, **data)
        spec.validate()
        return spec

    def validate(self, world_size: int | None = None) -> None:
        if self.model.dtype not in DTYPES:
            raise InvalidSettingsError(f"dtype is {self.model.dtype!r}; use one of {list(DTYPES)}")
        for name in ("frames", "height", "width", "steps"):
            _positive_int(getattr(self, name), name)
        for name in ("height", "width"):
            value = getattr(self, name)
            if value % 8:
                lower, upper = value - value % 8, value - value % 8 + 8
                raise InvalidSettingsError(
                    f"{name} is {value}; it must be a multiple of 8 (the VAE downsamples by 8): try {lower or 8} or {upper}"
                )
        if self.sampler not in SAMPLERS:
            raise InvalidSettingsError(f"sampler is {self.sampler!r}; use one of {list(SAMPLERS)}")
        if self.cfg < 0:
            raise InvalidSettingsError(f"cfg is {self.cfg}; it must be 0 or more")
        if self.fps <= 0:
            raise InvalidSettingsError(f"fps is {self.fps}; it must be greater than 0")
        if self.blend < 0:
            raise InvalidSettingsError(f"blend is {self.blend}; it must be 0 or more frames")
        self.attention.validate_for_video(self.frames)
        if world_size is not None and self.frames < world_size:
            raise InvalidSettingsError(
                f"the video has {self.frames} frames but the pool has {world_size} workers; every worker needs at "
                f"least one frame: ask for at least {world_size} frames or use fewer workers"
            )


def _positive_int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidSettingsError(f"{name} must be a whole number, got {value!r}")
    if value < 1:
        raise InvalidSettingsError(f"{name} is {value}; it must be at least 1")
    return value
