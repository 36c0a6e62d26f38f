"""Starting and stopping worker processes; shared by the coordinator and the node agent."""

from __future__ import annotations

import runpy
import signal
import sys
import threading
import types
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch.multiprocessing as torch_mp

from .worker_args import WorkerArgs

BOOTSTRAP = str(Path(__file__).with_name("bootstrap.py"))
_START_LOCK = threading.Lock()


def spawn_context() -> Any:
    return torch_mp.get_context("spawn")


def start_worker(ctx: Any, args: WorkerArgs) -> Any:
    """Starts one worker. Its arguments travel as plain data (and multiprocessing queues) only."""
    process = ctx.Process(
        target=runpy.run_path,
        args=(BOOTSTRAP,),
        kwargs={"init_globals": {"WORKER_ARGS": args.to_dict()}, "run_name": "video_infinity_bootstrap"},
        name=f"video-infinity-rank{args.rank}",
        daemon=True,
    )
    with _hidden_main_module():
        process.start()
    return process


@contextmanager
def _hidden_main_module() -> Iterator[None]:
    """Spawn normally re-executes the parent's __main__ in the child. Under ComfyUI that is main.py, which
    parses arguments and runs every pack's start-up scripts; a worker needs none of it. With a stand-in
    __main__ (no file, no spec) for the moment of the launch, the child skips that step."""
    with _START_LOCK:
        main = sys.modules.get("__main__")
        sys.modules["__main__"] = types.ModuleType("__main__")
        try:
            yield
        finally:
            if main is not None:
                sys.modules["__main__"] = main


def kill_all(processes: list[Any], grace_s: float = 0.0) -> None:
    """Ends every process (SIGTERM first when a grace time is given) and reaps it, so none is left over."""
    if grace_s > 0:
        for process in processes:
            if process.is_alive():
                process.terminate()
        for process in processes:
            process.join(grace_s)
    for process in processes:
        if process.is_alive():
            process.kill()
    for process in processes:
        process.join(5)


def describe_exit(exitcode: int | None, oom_killed: bool | None = None) -> str:
    """How a process ended. oom_killed: whether the kernel's out-of-memory killer acted meanwhile (None: unknown)."""
    if exitcode is None:
        return "still running"
    if exitcode < 0:
        try:
            name = signal.Signals(-exitcode).name
        except ValueError:
            name = f"signal {-exitcode}"
        hint = ""
        if -exitcode == signal.SIGKILL:
            hint = {
                True: ": the system's out-of-memory killer ended it; the job needs more memory than the machine has",
                False: ", sent by another process, not the out-of-memory killer",
                None: ", sent by another process or by the system's out-of-memory killer when memory runs out",
            }[oom_killed]
        return f"killed by {name}{hint}"
    return f"exit code {exitcode}"
