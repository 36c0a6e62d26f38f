"""A generation job: one typed, validated value from the node or command line to every rank.

It crosses process boundaries as a dataclass (to rank 0) or as JSON (to the other ranks, which may be on
other machines); `to_dict` and `from_dict` are that boundary and nothing else.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

from . import choices
from .errors import InvalidSettingsError
from .layout import check_shares
from .prompts import PromptSegment, parse_schedule
from .settings import DualScopeSettings


@dataclass(frozen=True)
class ModelSpec:
    base: str  # a diffusers pipeline folder (unet/ vae/ text_encoder/ tokenizer/ scheduler/)
    unet: str | None = None  # optional UNet override: a diffusers folder or a single .safetensors file
    dtype: str = "fp32"  # the dtype the model computes in
    family: str = "unet3d"  # which model family loads and runs it (engine/family.py)
    weight_dtype: str = "default"  # how the weights are held (choices.WEIGHT_DTYPES); ComfyUI's models only

    def __post_init__(self) -> None:
        if self.dtype not in choices.DTYPES:
            raise InvalidSettingsError(f"dtype is {self.dtype!r}; use one of {list(choices.DTYPES)}")
        if self.weight_dtype not in choices.WEIGHT_DTYPES:
            raise InvalidSettingsError(
                f"weight_dtype is {self.weight_dtype!r}; use one of {list(choices.WEIGHT_DTYPES)}"
            )


@dataclass(frozen=True)
class JobSpec:
    model: ModelSpec
    prompts: tuple[PromptSegment, ...]
    frames: int
    height: int = choices.DEFAULT_HEIGHT
    width: int = choices.DEFAULT_WIDTH
    steps: int = choices.DEFAULT_STEPS
    cfg: float = choices.DEFAULT_CFG
    sampler: str = choices.DEFAULT_SAMPLER
    seed: int = 0
    fps: float = choices.DEFAULT_FPS
    negative_prompt: str = ""
    blend: int = 0  # frames over which neighbouring prompt segments cross-fade
    attention: DualScopeSettings = field(default_factory=DualScopeSettings)
    frame_shares: tuple[float, ...] = ()  # relative frames per worker (layout.FrameLayout); () = even

    def __post_init__(self) -> None:
        object.__setattr__(self, "frame_shares", tuple(self.frame_shares))  # a JSON list on arrival
        self.validate()

    @classmethod
    def build(cls, model: ModelSpec, prompt: Any, frames: Any, **options: Any) -> JobSpec:
        """A job from a prompt or prompt schedule (text, or a list of segments); raises InvalidSettingsError."""
        frames = _positive_int(frames, "frames")
        attention = options.pop("attention", None)
        if not isinstance(attention, DualScopeSettings):
            attention = DualScopeSettings.from_dict(attention)
        known = {f.name for f in fields(cls)} - {"model", "prompts", "frames", "attention"}
        unknown = sorted(set(options) - known)
        if unknown:
            raise InvalidSettingsError(f"unknown job fields {unknown}; known: {sorted(known)}")
        if prompt is None:
            raise InvalidSettingsError("the job has no prompt; give prompt='...' or a prompt schedule")
        return cls(model=model, prompts=parse_schedule(prompt, frames), frames=frames, attention=attention, **options)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["prompts"] = [asdict(p) for p in self.prompts]
        data["kind"] = "video"
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> JobSpec:
        data = {key: value for key, value in data.items() if key != "kind"}
        if "model" not in data:
            raise InvalidSettingsError("the job names no model; give model={'base': <pipeline folder>}")
        model = data.pop("model")
        model = model if isinstance(model, ModelSpec) else ModelSpec(**model)
        prompt, schedule = data.pop("prompt", None), data.pop("prompts", None)
        return cls.build(model, schedule if schedule is not None else prompt, data.pop("frames", None), **data)

    def validate(self, world_size: int | None = None) -> None:
        """Raises InvalidSettingsError naming the problem and the fix; with world_size, checks the split too."""
        check_job_settings(
            frames=self.frames, height=self.height, width=self.width, steps=self.steps, cfg=self.cfg,
            sampler=self.sampler, fps=self.fps, blend=self.blend,
        )  # fmt: skip
        if world_size is not None:
            check_split(self.frames, world_size, self.frame_shares)


def check_split(frames: int, workers: int, shares: tuple[float, ...] = ()) -> None:
    """Every worker needs at least one frame, and the shares (if any) name one per worker."""
    if frames < workers:
        raise InvalidSettingsError(
            f"the video has {frames} frames but the pool has {workers} workers; every worker needs at "
            f"least one frame: ask for at least {workers} frames or use fewer workers"
        )
    if shares:
        check_shares(shares, workers)


def check_job_settings(**settings: Any) -> None:
    """The rules for a job's plain settings, usable before the model and attention are known (node validation).

    Takes any of the JobSpec fields by name; a `prompt` (text or schedule) is checked against `frames`.
    """
    for name in ("frames", "height", "width", "steps"):
        if name in settings:
            _positive_int(settings[name], name)
    limits = {
        "frames": choices.MAX_FRAMES,
        "height": choices.MAX_SIDE,
        "width": choices.MAX_SIDE,
        "steps": choices.MAX_STEPS,
        "cfg": choices.MAX_CFG,
        "fps": choices.MAX_FPS,
        "blend": choices.MAX_BLEND,
    }
    for name, limit in limits.items():
        if name in settings and settings[name] > limit:
            raise InvalidSettingsError(f"{name} is {settings[name]}; it must be at most {limit}")
    for name in ("height", "width"):
        value = settings.get(name, choices.SIZE_STEP)
        if value % choices.SIZE_STEP:
            lower, upper = value - value % 8, value - value % 8 + 8
            raise InvalidSettingsError(
                f"{name} is {value}; it must be a multiple of 8 (the VAE downsamples by 8): try {lower or 8} or {upper}"
            )
    if settings.get("sampler", choices.DEFAULT_SAMPLER) not in choices.SAMPLERS:
        raise InvalidSettingsError(f"sampler is {settings['sampler']!r}; use one of {list(choices.SAMPLERS)}")
    if settings.get("cfg", 0) < 0:
        raise InvalidSettingsError(f"cfg is {settings['cfg']}; it must be 0 or more")
    if settings.get("fps", 1) <= 0:
        raise InvalidSettingsError(f"fps is {settings['fps']}; it must be greater than 0")
    if settings.get("blend", 0) < 0:
        raise InvalidSettingsError(f"blend is {settings['blend']}; it must be 0 or more frames")
    if "prompt" in settings and "frames" in settings:
        parse_schedule(settings["prompt"], settings["frames"])


def _positive_int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidSettingsError(f"{name} must be a whole number, got {value!r}")
    if value < 1:
        raise InvalidSettingsError(f"{name} is {value}; it must be at least 1")
    return value


def job_from_dict(data: dict[str, Any]) -> Any:
    """A JobSpec or a LatentJob (by its "kind"), at a process boundary."""
    if data.get("kind") == "latent":
        from .latent_job import LatentJob

        return LatentJob.from_dict(data)
    return JobSpec.from_dict(data)
