"""Frames travel from rank 0 to the coordinator as uint8 in shared memory: one copy, no float32 in transit."""

from __future__ import annotations

import math
import os
import shutil
import weakref
from multiprocessing import shared_memory

import numpy as np

from ..engine.errors import VideoInfinityError

SHM_FOLDER = "/dev/shm"


class OutputBuffer:
    """Worker side: a shared-memory block the engine writes the video into, handed over by name."""

    def __init__(self) -> None:
        self._shm: shared_memory.SharedMemory | None = None
        self.shape: tuple[int, ...] = ()

    def allocate(self, shape: tuple[int, ...]) -> np.ndarray:
        self.discard()
        size = max(1, math.prod(shape))
        _check_room(size)
        self._shm = shared_memory.SharedMemory(create=True, size=size)
        self.shape = tuple(int(s) for s in shape)
        return np.ndarray(self.shape, np.uint8, buffer=self._shm.buf)

    def hand_over(self, frames: np.ndarray) -> tuple[str, tuple[int, ...]]:
        """The block's name and shape; copies `frames` in when the engine did not write into the block."""
        if self._shm is None or tuple(frames.shape) != self.shape:
            self.allocate(tuple(frames.shape))
            self._view()[...] = frames
        elif not np.may_share_memory(frames, self._view()):  # bounds only: exact overlap checks can be slow
            self._view()[...] = frames
        assert self._shm is not None
        return self._shm.name, self.shape

    def release(self) -> None:
        """Closes this process's mapping; the coordinator now owns the block (and unlinks it)."""
        if self._shm is not None:
            try:
                self._shm.close()
            except BufferError:
                pass  # a view is still referenced somewhere; the mapping goes when the process does
            self._shm = None

    def discard(self) -> None:
        """Frees a block that will not be handed over (failed or cancelled job)."""
        if self._shm is not None:
            try:
                self._shm.unlink()
            except FileNotFoundError:
                pass
            self.release()

    def _view(self) -> np.ndarray:
        assert self._shm is not None
        return np.ndarray(self.shape, np.uint8, buffer=self._shm.buf)


def take_frames(name: str, shape: tuple[int, ...]) -> np.ndarray:
    """Coordinator side: the frames as a numpy array over the block, without copying.

    The name is unlinked at once (nothing can leak it); the memory stays mapped while the array, or
    any view or tensor made from it, is alive.
    """
    shm = shared_memory.SharedMemory(name=name)
    try:
        shm.unlink()
    except FileNotFoundError:
        pass
    frames = np.ndarray(tuple(shape), np.uint8, buffer=shm.buf)
    weakref.finalize(frames, _close_quietly, shm)
    return frames


def unlink_quietly(name: str) -> None:
    try:
        shm = shared_memory.SharedMemory(name=name)
    except FileNotFoundError:
        return
    try:
        shm.unlink()
    finally:
        shm.close()


def _close_quietly(shm: shared_memory.SharedMemory) -> None:
    try:
        shm.close()
    except BufferError:
        pass


def _check_room(size: int) -> None:
    """Writing past a full /dev/shm kills the writer with SIGBUS; a clear error is better."""
    if not os.path.isdir(SHM_FOLDER):
        return
    free = shutil.disk_usage(SHM_FOLDER).free
    if size > free:
        raise VideoInfinityError(
            f"the video needs {size / 2**20:.0f} MiB of shared memory but {SHM_FOLDER} has {free / 2**20:.0f} MiB "
            f"free; make fewer/smaller frames, or give the machine more shared memory (docker: --shm-size)"
        )
