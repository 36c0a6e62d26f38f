"""Files of the coordinator's machine for ranks on machines that cannot read them (multi-machine pools).

A job on ComfyUI's own models names files that the coordinator wrote on its own disk: the graph's weights
and the job's latent and conditioning. Ranks that see the same file (the same machine, or a shared file
system) read it where it is. The others receive it from rank 0 over the process group, in chunks, and keep
it in a folder of their own machine, under a name that holds the file's size and modification time, so a
warm pool sends a model only once. Every rank calls `local_path` at the same point: it is collective.
"""

from __future__ import annotations

import contextlib
import os
import socket
import tempfile
import zlib
from pathlib import Path

import torch

from .comm import Communicator
from .errors import ModelLoadError

RECEIVED_ENV = "VIDEO_INFINITY_RECEIVED_DIR"  # where a machine keeps received files (default: its temp folder)
CHUNK_BYTES = 64 << 20  # one transfer's size: bounds the buffers on both ends
LACKS, HAS, FAILED = 0, 1, 2  # a rank's state in a transfer round


def received_dir() -> Path:
    return Path(os.environ.get(RECEIVED_ENV) or Path(tempfile.gettempdir()) / "video-infinity-received")


def visible_here(path: str, size: int) -> bool:
    """Whether this machine sees the coordinator's file: a file of its size at its path."""
    return _same_size(path, size)


def local_path(comm: Communicator, path: str, kind: str, keep: int) -> str:
    """Where this rank reads the coordinator's file `path`: the path itself where this machine sees it,
    else a copy received from rank 0 (kept in `received_dir()/kind`, the newest `keep` there)."""
    if comm.world_size == 1:
        return path
    identity = torch.tensor([-1, 0], dtype=torch.int64, device=comm.device)  # -1: rank 0 cannot read it either
    if comm.is_root:
        try:
            stat = os.stat(path)
            identity[0], identity[1] = stat.st_size, stat.st_mtime_ns
        except OSError:
            pass  # every rank learns it from the broadcast and raises the same error
    size, stamp = (int(value) for value in comm.broadcast_(identity).tolist())
    if size < 0:
        raise ModelLoadError(f"{path} is gone from the coordinator's disk; queue the job again")
    source = Path(path)
    copy = received_dir() / kind / f"{source.stem}-{size}-{stamp}{source.suffix}"
    if comm.is_root or visible_here(path, size):
        where = path
    elif _same_size(str(copy), size):
        where = str(copy)
        with contextlib.suppress(OSError):  # an error here would leave this rank out of the next exchange
            os.utime(copy)  # used again: the newest, kept longest
    else:
        where = ""
    # Rounds: each sends the file once to each machine that lacks it (to its first lacking rank); the other
    # ranks of that machine then find the copy. Machines are told apart by host name; should two share one,
    # the next round sends to the rank that still lacks the file.
    machine = zlib.crc32(socket.gethostname().encode())
    failure: Exception | None = None
    while True:
        status = HAS if where else FAILED if failure else LACKS
        states = comm.all_gather(torch.tensor([status, machine], dtype=torch.int64, device=comm.device))
        receivers: dict[int, int] = {}
        for rank, state in enumerate(states):
            if int(state[0]) == LACKS:
                receivers.setdefault(int(state[1]), rank)
        if not receivers:
            break
        for rank in sorted(receivers.values()):
            if comm.is_root:
                _send(comm, path, size, rank)
            elif rank == comm.rank:
                try:
                    _receive(comm, copy, size)
                    _prune(copy.parent, keep, copy)
                except (ModelLoadError, OSError) as error:
                    failure = error  # raised after the rounds, so the other ranks are not left waiting
        # A barrier (an all-gather waits for every rank; a broadcast only for rank 0): every copy of this
        # round is in place before the other ranks of its machine look for it.
        comm.all_gather(torch.zeros(1, device=comm.device))
        if not where and failure is None and _same_size(str(copy), size):
            where = str(copy)  # received here, or by another rank of this machine
    if failure is not None:
        raise failure
    return where


def _same_size(path: str, size: int) -> bool:
    try:
        return os.path.getsize(path) == size
    except OSError:
        return False


def _send(comm: Communicator, path: str, size: int, rank: int) -> None:
    with open(path, "rb") as source:
        for offset in range(0, size, CHUNK_BYTES):
            chunk = bytearray(source.read(min(CHUNK_BYTES, size - offset)))
            comm.send_to(torch.frombuffer(chunk, dtype=torch.uint8).to(comm.device), rank)


def _receive(comm: Communicator, copy: Path, size: int) -> None:
    """Writes the file as it arrives; a partial file never carries the final name. A write that fails
    (a full disk) still takes every chunk, so rank 0 is not left waiting, and is reported after."""
    partial = copy.with_name(copy.name + f".part{os.getpid()}")
    failure: OSError | None = None
    target = None
    try:
        copy.parent.mkdir(parents=True, exist_ok=True)
        target = open(partial, "wb")  # noqa: SIM115 - closed below, after the last chunk
    except OSError as error:
        failure = error
    for offset in range(0, size, CHUNK_BYTES):
        buffer = torch.empty(min(CHUNK_BYTES, size - offset), dtype=torch.uint8, device=comm.device)
        comm.recv_from(buffer, 0)
        if target is not None and failure is None:
            try:
                target.write(buffer.cpu().numpy().tobytes())
            except OSError as error:
                failure = error
    if target is not None:
        target.close()
    if failure is not None:
        partial.unlink(missing_ok=True)
        raise ModelLoadError(
            f"could not keep the {size / 2**30:.2f} GiB file that rank 0 sent in {copy.parent} ({failure}); free "
            f"space there or point ${RECEIVED_ENV} to a folder with room"
        )
    os.replace(partial, copy)


def _prune(folder: Path, keep: int, current: Path) -> None:
    """Removes all but the `keep` most recently used received files of this folder (never `current`, nor a
    file another worker is still receiving)."""
    files = sorted(
        (p for p in folder.iterdir() if p.is_file() and p != current and ".part" not in p.suffix),
        key=lambda p: p.stat().st_mtime,
    )
    for old in files[: max(0, len(files) - (keep - 1))]:
        old.unlink(missing_ok=True)
