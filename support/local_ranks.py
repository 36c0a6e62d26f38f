"""Runs a function on N local ranks (gloo on CPU), each a real process: for tests, benchmarks, scripts.

The worker pool is the long-lived way to run jobs; this is the short-lived one: start, run, exit.
"""

from __future__ import annotations

import os
import queue
import time
import traceback
from collections.abc import Callable, Sequence
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from distributed.engine.comm import Communicator
from distributed.pool.netutil import free_port


def run_on_local_ranks(
    world_size: int,
    target: Callable[..., Any],
    kwargs: dict[str, Any] | None = None,
    timeout: float = 300.0,
    threads_per_rank: int = 1,
) -> list[Any]:
    """Calls target(comm, **kwargs) on every rank; returns the results in rank order.

    target must be a module-level function (it is imported by name in each process). A rank that
    raises makes this raise RuntimeError with that rank's traceback.
    """
    return run_in_turn([(world_size, kwargs or {})], target, timeout, threads_per_rank)[0]


def run_in_turn(
    runs: Sequence[tuple[int, dict[str, Any]]],
    target: Callable[..., Any],
    timeout: float = 300.0,
    threads_per_rank: int = 1,
) -> list[list[Any]]:
    """Several runs of target(comm, **kwargs) one after the other on one set of processes: run i on the
    first world_size_i of them, over a process group of its own. Returns each run's results in rank order.

    Starting a rank costs seconds (torch and the model libraries are imported anew), far more than a tiny
    model's call, so a check over 1, 2, 3 and 4 ranks pays it once instead of four times. Runs on fewer
    ranks than the others are as real: their group holds only their ranks, and each rank's rank in it is
    the same as in the whole set.
    """
    world_size = max(size for size, _ in runs)
    context = mp.get_context("spawn")
    results: Any = context.Queue()
    port = free_port()
    processes = [
        context.Process(
            target=_rank_main,
            args=(rank, world_size, port, target, list(runs), results, threads_per_rank, timeout),
            daemon=True,
        )
        for rank in range(world_size)
    ]
    for process in processes:
        process.start()
    collected: dict[tuple[int, int], Any] = {}
    expected = sum(size for size, _ in runs)
    deadline = time.monotonic() + timeout * len(runs)
    try:
        while len(collected) < expected:
            try:
                run, rank, ok, payload = results.get(timeout=0.5)
            except queue.Empty:
                dead = [
                    r
                    for r, p in enumerate(processes)
                    if p.exitcode is not None
                    and any(r < size and (run, r) not in collected for run, (size, _) in enumerate(runs))
                ]
                if dead:
                    raise RuntimeError(
                        f"rank {dead[0]} exited with code {processes[dead[0]].exitcode} and no result"
                    ) from None
                if time.monotonic() > deadline:
                    raise TimeoutError(f"local ranks gave no result within {timeout:.0f} s per run") from None
                continue
            if not ok:
                size = runs[run][0]
                raise RuntimeError(f"rank {rank} failed (run {run + 1} of {len(runs)}, {size} ranks):\n{payload}")
            collected[run, rank] = payload
    finally:
        for process in processes:
            process.join(timeout=10)
            if process.is_alive():
                process.kill()
    return [[collected[run, rank] for rank in range(size)] for run, (size, _) in enumerate(runs)]


def _rank_main(
    rank: int,
    world_size: int,
    port: int,
    target: Callable[..., Any],
    runs: list[tuple[int, dict[str, Any]]],
    results: Any,
    threads: int,
    timeout: float,
) -> None:
    torch.set_num_threads(threads)
    os.environ.setdefault("OMP_NUM_THREADS", str(threads))
    run = 0
    try:
        if world_size > 1:
            dist.init_process_group(
                "gloo",
                init_method=f"tcp://127.0.0.1:{port}",
                rank=rank,
                world_size=world_size,
                timeout=timedelta(seconds=timeout),
            )
        # Every rank makes every group, in the same order, before any run: a group is made by all ranks.
        groups = [dist.new_group(list(range(size))) if 1 < size < world_size else None for size, _ in runs]
        for run, ((size, kwargs), group) in enumerate(zip(runs, groups, strict=True)):
            if rank < size:
                comm = Communicator(rank, size, torch.device("cpu"), group)
                results.put((run, rank, True, _plain(target(comm, **kwargs))))
    except BaseException:
        results.put((run, rank, False, traceback.format_exc()))
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def _plain(value: Any) -> Any:
    """Tensors leave as numpy arrays: a torch tensor put on a queue is shared through a handle that
    dies with this process, which exits right after."""
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().numpy()
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_plain(item) for item in value)
    return value


def run_job(comm: Communicator, job: dict[str, Any]) -> dict[str, Any]:
    """A target for run_on_local_ranks: one engine job; frames and latents come back from rank 0."""
    from distributed.engine.job import JobSpec
    from distributed.engine.runner import Engine

    result = Engine(comm).run(JobSpec.from_dict(job))
    stats = result.stats
    return {
        "frames": result.frames,
        "latents": result.latents,
        "bytes_sent_per_step": stats.bytes_sent_per_step,
        "bytes_received_per_step": stats.bytes_received_per_step,
        "calls_per_step": stats.calls_per_step,
        "rounds_per_step": stats.rounds_per_step,
        "frames_per_rank": stats.frames_per_rank,
    }
