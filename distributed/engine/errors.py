"""Errors a person can act on. Every message names the problem and the fix."""


class VideoInfinityError(Exception):
    """Base class for errors the engine reports to users."""


class InvalidSettingsError(VideoInfinityError, ValueError):
    """A setting or job field is out of range or inconsistent."""


class ModelLoadError(VideoInfinityError):
    """A model folder or file is missing, unsupported or corrupt."""


class JobCancelled(VideoInfinityError):
    """All ranks agreed to stop the job at the same point: a denoising step, or a phase after the steps."""

    def __init__(self, step: int, phase: str = "denoising"):
        super().__init__(f"cancelled at denoising step {step}" if phase == "denoising" else f"cancelled while {phase}")
        self.step = step
        self.phase = phase


class PreparationFailed(VideoInfinityError):
    """Raised on the ranks that prepared a job fine when another rank could not (its settings or its model).

    The ranks learn it together, before the job's first exchange, so they stay in step and the warm pool
    keeps serving. The failing rank raises its own error, marked with `mark_in_step`.
    """

    def __init__(self, ranks: list[int]):
        super().__init__(f"rank(s) {ranks} could not prepare the job")
        self.ranks = ranks


def mark_in_step(error: BaseException, ranks: list[int]) -> BaseException:
    """Marks a preparation error that every rank learnt at the same point (the group is still in step)."""
    error.failed_ranks_in_step = ranks  # type: ignore[attr-defined]
    return error


def failed_in_step(error: BaseException) -> bool:
    """Whether `error` was marked by mark_in_step."""
    return hasattr(error, "failed_ranks_in_step")


class InsufficientMemoryError(VideoInfinityError):
    """A job's estimated peak memory on a rank is more than its device has free."""
