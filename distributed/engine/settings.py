"""Dual-scope attention settings (docs/algorithm.md sections 3-5), one object for every patched layer."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any, Literal

from . import choices
from .errors import InvalidSettingsError

# exact: defined on the whole video, identical for any rank count. reference: the public reference code's
# behaviour (per-rank statistics, zero-padded ends, per-rank global frames). independent: no exchange at
# all, every rank runs the plain model on its own clip (the baseline the method improves on).
Mode = Literal["exact", "reference", "independent"]
MODES = ("exact", "reference", "independent")


@dataclass(frozen=True)
class DualScopeSettings:
    """Defaults are the reference code's numbers, in exact mode."""

    local_window: int = 8  # P: half window of the local temporal attention, in latent frames
    global_frames: int = 16  # G: frames sampled over the whole video that every frame attends to
    conv_halo: int = 4  # frames borrowed per side for temporal convolutions (their receptive field)
    phase_bias: bool = True  # near-hard switch: global layout first, local motion after
    phase_threshold: float = 800.0
    global_bias: float = 10.0
    local_bias: float = 10.0
    attn_scale: float = 1.0
    token_num_scale: bool = False
    mode: Mode = "exact"
    # Frames whose statistics a temporal GroupNorm uses in exact mode: 0 = the whole video; W > 0 = the
    # W frames around each frame (shifted inward at the video's ends), close to the training clips.
    norm_window: int = 0

    def __post_init__(self) -> None:
        if self.local_window < 0:
            raise InvalidSettingsError(f"local_window (P) is {self.local_window}; it must be 0 or more frames")
        if self.global_frames < 0:
            raise InvalidSettingsError(f"global_frames (G) is {self.global_frames}; it must be 0 or more frames")
        if self.conv_halo < 0:
            raise InvalidSettingsError(f"conv_halo is {self.conv_halo}; it must be 0 or more frames (4 is exact)")
        if self.norm_window < 0:
            raise InvalidSettingsError(
                f"norm_window is {self.norm_window}; use 0 (whole-video statistics) or a number of frames"
            )
        if self.attn_scale <= 0:
            raise InvalidSettingsError(f"attn_scale is {self.attn_scale}; it must be greater than 0")
        if self.mode not in MODES:
            raise InvalidSettingsError(f"mode is {self.mode!r}; use one of {list(MODES)}")
        for name, limit in UPPER_LIMITS.items():
            value = getattr(self, name)
            if value > limit:
                raise InvalidSettingsError(f"{name} is {value}; it must be at most {limit}")
        for name in ("phase_threshold", "global_bias", "local_bias"):
            if getattr(self, name) < 0:
                raise InvalidSettingsError(f"{name} is {getattr(self, name)}; it must be 0 or more")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> DualScopeSettings:
        data = dict(data or {})
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise InvalidSettingsError(f"unknown attention settings {unknown}; known: {sorted(known)}")
        return cls(**data)

    def global_count(self, frames: int) -> int:
        """The global frames a video of `frames` frames gets: G, or every frame when the video is shorter."""
        return min(self.global_frames, frames)


UPPER_LIMITS = {
    "local_window": choices.MAX_LOCAL_WINDOW,
    "global_frames": choices.MAX_GLOBAL_FRAMES,
    "conv_halo": choices.MAX_CONV_HALO,
    "norm_window": choices.MAX_NORM_WINDOW,
    "phase_threshold": choices.MAX_TIMESTEP,
    "global_bias": choices.MAX_BIAS,
    "local_bias": choices.MAX_BIAS,
    "attn_scale": choices.MAX_ATTN_SCALE,
}
