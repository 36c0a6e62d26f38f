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


class PreparationFailed(VideoInfinityError):
    """Raised on every rank when some rank could not prepare the job (its settings or its model).

    The ranks learn it together, before the job's first exchange, so they stay in step and the warm
    pool keeps serving; `cause` is this rank's own error, None on a rank that prepared fine.
    """

    def __init__(self, ranks: list[int], cause: BaseException | None):
        super().__init__(f"rank(s) {ranks} could not prepare the job" + (f": {cause}" if cause else ""))
        self.ranks = ranks
        self.cause = cause
