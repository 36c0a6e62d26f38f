"""Errors a person can act on. Every message names the problem and the fix."""


class VideoInfinityError(Exception):
    """Base class for errors the engine reports to users."""


class InvalidSettingsError(VideoInfinityError, ValueError):
    """A setting or job field is out of range or inconsistent."""


class ModelLoadError(VideoInfinityError):
    """A model folder or file is missing, unsupported or corrupt."""


class JobCancelled(VideoInfinityError):
    """All ranks agreed to stop the job at the same denoising step."""

    def __init__(self, step: int):
        super().__init__(f"cancelled at denoising step {step}")
        self.step = step
