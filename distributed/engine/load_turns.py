"""Loading one model on several ranks of one machine: all at once when their loads fit in its RAM together,
otherwise one rank after another.

A loader holds the file's tensors and the model's own copy of them at the same time, so a load peaks at
about twice the weights in host memory, even for a rank whose model then moves to a GPU. Eight workers
that load a 28 GB model together would want about 450 GB at once; in turns, the machine holds one load's
peak beside what the earlier ranks keep.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TypeVar

from .comm import Communicator

T = TypeVar("T")

LOAD_PEAK_FACTOR = 2  # host bytes a load holds at its peak, per byte of weights on disk


def weight_bytes(locations: Iterable[str | None]) -> int:
    """Bytes of the files at `locations` (a file, or every file under a folder); missing ones count 0."""
    total = 0
    for location in locations:
        if not location:
            continue
        path = Path(location)
        files = (p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        for file in files:
            try:
                total += file.stat().st_size
            except OSError:
                pass
    return total


def loads_fit_together(loading_on_host: int, peak_bytes: int, available: int) -> bool:
    """Whether `loading_on_host` ranks that each peak at `peak_bytes` fit in `available` bytes at once."""
    return loading_on_host * peak_bytes <= available


def load_in_turns(comm: Communicator, host_index: int, take_turns: bool, load: Callable[[], T]) -> T:
    """Runs `load` on every rank: at once, or (take_turns, the same on every rank) the ranks of a machine
    one after another, by their index on it, while other machines do the same. Collective: every rank calls
    it at the same point. An error from `load` is raised after the last turn, so a failing rank still takes
    part in every turn's barrier."""
    if not take_turns:
        return load()
    turns = max(comm.all_gather_ints(host_index)) + 1
    result: T | None = None
    error: BaseException | None = None
    for turn in range(turns):
        if turn == host_index:
            try:
                result = load()
            except Exception as raised:  # noqa: BLE001 - re-raised below, after the turns
                error = raised
        comm.all_gather_ints(turn)  # a barrier: the next turn starts when this one has ended everywhere
    if error is not None:
        raise error
    return result  # type: ignore[return-value] - set whenever no error was raised
