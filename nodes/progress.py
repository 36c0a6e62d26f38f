"""Waits for a pool job in the node's own thread: ComfyUI progress bar, phase text, Cancel, worker errors."""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import numpy as np

from .previews import LivePreview
from .values import PoolChoice

STOP_WAIT_S = 60.0  # a cancelled job stops at the next step; past this the pool's own timeouts act
POLL_S = 0.1
_PHASES = {
    "starting": "starting the workers",
    "loading": "loading the model",
    "denoising": "denoising",
    "decoding": "decoding",
    "gathering": "gathering",
}


class WorkerFailed(RuntimeError):
    """A worker's own error text, shown as the node's error."""


# ComfyUI reports an error's type as module + name; without this it would carry the pack's install path.
WorkerFailed.__module__ = "video_infinity"


class JobProgress:
    """Maps pool events onto one bar: steps 1..n of denoising, then one more tick for decode and gather."""

    def __init__(self, steps: int, node_id: str | None, workers: int, preview: LivePreview | None = None):
        import comfy.utils

        self.steps = steps
        self.node_id = node_id
        self.workers = workers
        self.preview = preview
        self.bar = comfy.utils.ProgressBar(steps + 1, node_id=node_id)
        self.last_text = ""
        self.last_value = -1

    def on_event(self, event: Any) -> None:
        phase = getattr(event, "phase", "denoising")
        step = int(getattr(event, "step", 0) or 0)
        total = int(getattr(event, "total", 0) or 0)
        if phase == "denoising":
            self._text(f"denoising step {step}/{total or self.steps} on {self.workers} worker(s)")
            self._bar(min(step, self.steps))
        elif phase in ("decoding", "gathering"):
            self._text(_PHASES[phase] + (f" {step}/{total}" if total else ""))
            self._bar(self.steps)
        else:
            self.show_phase(phase)

    def on_preview(self, event: Any) -> None:
        """Shows the newest step's estimate on the node, as core KSampler shows its own."""
        if event is None or self.preview is None:
            return
        try:
            image = self.preview.image(event.frame)
        except Exception as error:  # noqa: BLE001 - a preview is a nicety: the video goes on without it
            logging.warning("Video-Infinity: live preview turned off for this run (%s)", error)
            self.preview = None
            return
        value = max(self.last_value, min(int(event.step), self.steps))
        self.last_value = value
        self.bar.update_absolute(value, self.steps + 1, image)

    def show_phase(self, phase: str) -> None:
        self._text(_PHASES.get(phase, str(phase)))

    def finish(self, text: str) -> None:
        self._bar(self.steps + 1)
        self._text(text)

    def _bar(self, value: int) -> None:
        if value > self.last_value:  # every rank reports its steps: send each value once, never backwards
            self.last_value = value
            self.bar.update_absolute(value, self.steps + 1)

    def _text(self, text: str) -> None:
        if text == self.last_text or self.node_id is None:
            return
        self.last_text = text
        try:
            from server import PromptServer

            PromptServer.instance.send_progress_text(text, self.node_id)
        except Exception:  # noqa: BLE001 - the text is a nicety; the bar carries the progress
            pass


def run_on_pool(pool: Any, job: Any, progress: JobProgress, choice: PoolChoice) -> tuple[Any, np.ndarray | None]:
    """Submits the job and waits for it: (handle, uint8 frames or None for a latent job)."""
    handle = submit(pool, job, progress)
    frames = wait_for(handle, progress, choice.job_timeout_s)
    note_imbalance(pool, choice)
    return handle, frames


def note_imbalance(pool: Any, choice: PoolChoice) -> None:
    """After a job on a split the user fixed: a console line when its workers' compute times were far apart."""
    note = None if choice.measured_shares else pool.imbalance_note()
    if note:
        logging.info("Video-Infinity: %s. frame_shares 'auto' on the Worker Pool splits by measured speed.", note)


def submit(pool: Any, job: Any, progress: JobProgress) -> Any:
    """Starts the pool if needed (a Cancel meanwhile stops the start) and hands it the job."""
    import comfy.model_management as mm

    if not pool.running:
        progress.show_phase("starting")
        failures: list[BaseException] = []

        def start() -> None:
            try:
                pool.start()
            except BaseException as error:  # noqa: BLE001 - re-raised in the node's thread below
                failures.append(error)

        starter = threading.Thread(target=start, name="video-infinity-start", daemon=True)
        starter.start()
        while starter.is_alive():
            if mm.processing_interrupted():
                pool.stop()
                starter.join(STOP_WAIT_S)
                mm.throw_exception_if_processing_interrupted()
            starter.join(POLL_S)
        if failures:
            raise failures[0]
    return pool.submit(job, preview=progress.preview.kind if progress.preview is not None else "none")


def wait_for(handle: Any, progress: JobProgress, job_timeout_s: float = 0.0) -> np.ndarray:
    """Polls events, forwards Cancel, and returns the uint8 frames; raises ComfyUI's interrupt on Cancel.

    job_timeout_s > 0: past it the job is cancelled and the node fails saying so (the pool stays warm).
    """
    import comfy.model_management as mm

    from ..distributed.engine.errors import JobCancelled
    from ..distributed.pool import PoolError, WorkerError

    try:
        _follow(handle, progress, job_timeout_s)
    except BaseException:
        # The one place that stops the job: a Cancel seen at the flag check, the timeout, and ComfyUI's interrupt
        # raised by its progress hook inside a bar update all end here before the node lets go of the pool.
        if not handle.done():
            _stop(handle)
        raise
    try:
        frames = handle.result()
    except JobCancelled:
        mm.interrupt_current_processing(True)  # cancelled from elsewhere (e.g. the panel): end like Cancel
        mm.throw_exception_if_processing_interrupted()
        raise
    except (WorkerError, PoolError) as error:
        # The worker's own text (rank, device, error kind and message) becomes the node's error.
        raise WorkerFailed(f"Video-Infinity {error}") from error
    progress.finish(f"{frames.shape[0]} frames done" if frames is not None else "latent done")
    return frames


def _follow(handle: Any, progress: JobProgress, job_timeout_s: float) -> None:
    """Shows the job's events until it ends; raises ComfyUI's interrupt on Cancel, WorkerFailed past the timeout."""
    import comfy.model_management as mm

    deadline = time.monotonic() + job_timeout_s if job_timeout_s > 0 else None
    while not handle.done():
        # Both raise; wait_for stops the job on the way out.
        mm.throw_exception_if_processing_interrupted()
        if deadline is not None and time.monotonic() > deadline:
            raise WorkerFailed(
                f"Video-Infinity: the video took longer than job_timeout_s ({job_timeout_s:.0f} s) and was cancelled; "
                "raise job_timeout_s on the Worker Pool node (0 waits without limit)"
            )
        _show(handle, progress)
        time.sleep(POLL_S)
    _show(handle, progress)  # a job faster than the polling still shows its last step


def _show(handle: Any, progress: JobProgress) -> None:
    for event in handle.poll_events():
        progress.on_event(event)
    progress.on_preview(handle.take_preview())


def _stop(handle: Any) -> None:
    """Cancels the job and waits for the workers to agree on it; how they ended does not matter here."""
    handle.cancel()
    try:
        handle.result(timeout=STOP_WAIT_S)
    except Exception:  # noqa: BLE001 - JobCancelled, a worker error or a timeout: the job is over either way
        pass
