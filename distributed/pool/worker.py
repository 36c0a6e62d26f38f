"""The worker process: joins the process group, then runs jobs with one engine until told to stop.

Rank 0 takes commands from the coordinator's queue and broadcasts each to the other ranks, so every rank
enters the same job at the same time. Events (ready, progress, result, errors) go back on a queue.
"""

from __future__ import annotations

import importlib.util
import os
import queue
import socket
import sys
import threading
import time
import traceback
from datetime import timedelta
from typing import Any

import psutil
import torch
import torch.distributed as dist

from ..engine.contract import JobEngine
from ..engine.errors import JobCancelled, PreparationFailed, VideoInfinityError, failed_in_step
from ..engine.job import job_from_dict
from .collectives import broadcast_json, self_test
from .events import (
    HEARTBEAT_S,
    Cancelled,
    Failed,
    Heartbeat,
    Preview,
    Progress,
    Ready,
    Result,
    Stats,
    Stopped,
    WorkerEvent,
    to_wire,
)
from .shm import OutputBuffer
from .worker_args import GroupSettings, WorkerArgs

PARENT_POLL_S = 0.25


def main(args: dict[str, Any]) -> None:
    worker = Worker(WorkerArgs.from_dict(args))
    worker.run()


class Worker:
    def __init__(self, args: WorkerArgs):
        self.args = args
        self.group = args.group
        self.rank = args.rank
        self.world_size = args.group.world_size
        self.device = torch.device("cpu")
        self.engine: JobEngine | None = None
        self.job_id: int | None = None

    def run(self) -> None:
        _watch_parent(self.args.parent_pid)
        self._start_heartbeat()
        torch.set_num_threads(self.group.threads)
        try:
            self._start()
        except BaseException as error:  # noqa: BLE001 - every start failure must reach the coordinator
            self._report(error, "start")
            self._linger()
            return
        self._send(
            Ready(
                self.rank,
                pid=os.getpid(),
                device=str(self.device),
                host=socket.gethostname(),
                backend=self.group.backend,
            )
        )
        self._send_stats()
        self._loop()

    def _start(self) -> None:
        _set_network_environment(self.group)
        device = torch.device(self.args.device)
        if device.type == "cuda":
            torch.cuda.set_device(device)
        self.device = device
        if self.world_size > 1:
            dist.init_process_group(
                self.group.backend,
                store=_make_store(self.group),
                rank=self.rank,
                world_size=self.world_size,
                timeout=timedelta(seconds=self.group.collective_timeout_s),
                device_id=device if device.type == "cuda" else None,
            )
            self_test(self.rank, self.world_size, device)
        self.engine = _build_engine(self.group.engine_factory, self.rank, self.world_size, device)

    def _loop(self) -> None:
        while True:
            command = broadcast_json(self._next_command(), self.rank, self.world_size, self.device)
            op = command["op"]
            if op == "stop":
                break
            if op == "job":
                if not self._run_job(command):
                    self._linger()
                    return
        self._stop()

    def _start_heartbeat(self) -> None:
        def beat() -> None:
            while True:
                time.sleep(HEARTBEAT_S)
                try:
                    self._send(Heartbeat(self.rank))
                except (OSError, ValueError):  # the queue is closed: the worker is stopping
                    return

        threading.Thread(target=beat, name="heartbeat", daemon=True).start()

    def _next_command(self) -> dict[str, Any] | None:
        if self.rank != 0:
            return None
        try:
            # An idle pool still talks now and then, so the other ranks' wait never hits the collective timeout.
            return self.args.jobs.get(timeout=self.group.idle_ping_s)
        except queue.Empty:
            return {"op": "ping"}

    def _run_job(self, command: dict[str, Any]) -> bool:
        """Runs one job on this rank. False after an error: the group may be out of step, so stop using it."""
        assert self.engine is not None
        self.job_id = job_id = command["id"]
        root = self.rank == 0
        output = OutputBuffer()
        try:
            job = job_from_dict(command["job"])  # the process boundary: plain data becomes the typed job
            result = self.engine.run(
                job,
                on_progress=self._progress if root else None,
                should_cancel=None if self.args.cancel is None else (lambda: self.args.cancel.value == job_id),
                allocate_output=output.allocate if root else None,
                on_preview=self._preview if root and command.get("preview") != "none" else None,
                preview_pixels=command.get("preview") == "pixels",
            )
            if root:
                name, shape = None, ()
                if result.frames is not None:
                    name, shape = output.hand_over(result.frames)
                    result.frames = None
                output.release()
                latents = None if result.latents is None else result.latents.numpy()
                stats = result.stats
                self._send(
                    Result(
                        self.rank,
                        job=job_id,
                        shm=name,
                        shape=tuple(shape),
                        loads=self._loads(),
                        latents=latents,
                        frames_per_rank=tuple(stats.frames_per_rank),
                        compute_seconds=tuple(stats.compute_seconds),
                        frame_capacity=tuple(stats.frame_capacity),
                    )
                )
        except JobCancelled as cancelled:
            output.discard()
            if root:
                self._send(Cancelled(self.rank, job=job_id, step=cancelled.step, phase=cancelled.phase))
        except PreparationFailed:
            output.discard()  # another rank could not prepare the job and says why; this one waits for the next
        except BaseException as error:  # noqa: BLE001 - the job's real error goes to the caller
            output.discard()
            in_step = failed_in_step(error)  # every rank stopped at the same point: the group stays usable
            self._report(error, "job", recoverable=in_step)
            if not in_step:
                return False
        finally:
            self.job_id = None
        self._send_stats()
        return True

    def _progress(self, step: int, total: int, phase: str) -> None:
        self._send(Progress(self.rank, job=self.job_id, step=int(step), total=int(total), phase=str(phase)))

    def _preview(self, step: int, total: int, frame: torch.Tensor) -> None:
        self._send(Preview(self.rank, job=self.job_id, step=int(step), total=int(total), frame=frame.numpy()))

    def _stop(self) -> None:
        if self.engine is not None:
            self.engine.release()
        if dist.is_initialized():
            dist.destroy_process_group()
        self._send(Stopped(self.rank))
        self.args.events.close()
        self.args.events.join_thread()
        # Everything is flushed; skipping interpreter finalisation saves seconds with torch and diffusers loaded.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)

    def _send(self, event: WorkerEvent) -> None:
        self.args.events.put(to_wire(event))

    def _send_stats(self) -> None:
        on_cuda = self.device.type == "cuda"
        self._send(
            Stats(
                self.rank,
                rss=psutil.Process().memory_info().rss,
                loads=self._loads(),
                cuda_allocated=torch.cuda.memory_allocated(self.device) if on_cuda else None,
                cuda_reserved=torch.cuda.memory_reserved(self.device) if on_cuda else None,
            )
        )

    def _loads(self) -> int | None:
        return getattr(self.engine, "loads", None)

    def _report(self, error: BaseException, phase: str, recoverable: bool = False) -> None:
        self._send(
            Failed(
                self.rank,
                job=self.job_id,
                phase=phase,
                kind=type(error).__name__,
                message=str(error) or repr(error),
                traceback="".join(traceback.format_exception(error)),
                user_error=isinstance(error, VideoInfinityError),
                pid=os.getpid(),
                device=str(self.device),
                recoverable=recoverable,
            )
        )

    def _linger(self) -> None:
        """After reporting an error, stay until the coordinator ends the pool: exiting now would make the other
        ranks fail with 'connection closed' and bury the real cause."""
        while True:
            time.sleep(3600)


def _make_store(group: GroupSettings) -> dist.Store:
    store = group.store
    timeout = timedelta(seconds=group.start_timeout_s)
    if store.kind == "file":
        file_store = dist.FileStore(store.path, group.world_size)
        file_store.set_timeout(timeout)
        return file_store
    return dist.TCPStore(store.host, store.port, group.world_size, is_master=False, timeout=timeout)


def _set_network_environment(group: GroupSettings) -> None:
    interface = group.network_interface
    if interface:
        os.environ.setdefault("GLOO_SOCKET_IFNAME", interface)
        os.environ.setdefault("NCCL_SOCKET_IFNAME", interface)
    # A rank that times out in an NCCL collective must fail (and be seen to fail), not hang.
    os.environ.setdefault("TORCH_NCCL_ASYNC_ERROR_HANDLING", "1")


def _build_engine(factory: str | None, rank: int, world_size: int, device: torch.device) -> Any:
    if not factory:
        from ..engine.comm import Communicator
        from ..engine.runner import Engine

        return Engine(Communicator(rank, world_size, device))
    path, _, name = factory.rpartition(":")
    spec = importlib.util.spec_from_file_location("video_infinity_engine_factory", path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load the engine factory file {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return getattr(module, name)(rank, world_size, device)


def _watch_parent(parent_pid: int) -> None:
    """Exit when the process that started us is gone, so a killed coordinator leaves no workers behind."""

    def watch() -> None:
        while True:
            if os.getppid() != parent_pid:
                os._exit(3)
            time.sleep(PARENT_POLL_S)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()
