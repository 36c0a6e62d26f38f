"""The coordinator: starts the workers, hands them jobs, streams their events, and cleans up after faults.

A pool keeps its workers (and their loaded models) between jobs. Any fault (a worker error, a dead worker,
a lost node agent) tears the whole process group down; the next submit starts a fresh one.
"""

from __future__ import annotations

import os
import queue
import re
import threading
import time
from dataclasses import asdict, replace
from typing import Any

import psutil

from ..engine.contract import PREVIEW_KINDS
from ..engine.errors import InvalidSettingsError, JobCancelled, VideoInfinityError
from ..engine.host_memory import default_floor_bytes, oom_kill_count
from ..engine.job import JobSpec
from ..engine.latent_job import LatentJob
from .balance import ShareBalancer, cost_kind, imbalance_note
from .config import PoolConfig
from .errors import PoolError, WorkerError
from .events import (
    AgentLost,
    Cancelled,
    Died,
    Failed,
    Preview,
    Progress,
    Ready,
    Result,
    Stats,
    WorkerEvent,
    from_wire,
)
from .guard import Guard, GuardSettings
from .handle import JobHandle, PreviewEvent, ProgressEvent
from .join import JoinListener
from .launch import describe_exit, kill_all, spawn_context, start_worker
from .netutil import bind_listener, is_loopback, loopback_interface
from .session import RankInfo, Session
from .shm import take_frames, unlink_quietly
from .worker_args import GroupSettings, StoreAddress, WorkerArgs

FAULT_GRACE_S = 0.3  # after the first sign of a fault, wait this long for the root cause to arrive
STOP_GRACE_S = 5.0


class WorkerPool:
    def __init__(self, config: PoolConfig | None = None):
        self.config = config or PoolConfig()
        self.devices, self.backend = self.config.validate()  # raises before any process starts
        self.world_size = len(self.devices) + self.config.remote_workers
        self.starts = 0
        self.start_seconds: float | None = None
        self._session: Session | None = None
        self._job: JobHandle | None = None
        self._next_id = 0
        self._model: dict[str, Any] | None = None  # the last job's model, for status()
        self._loads: int | None = None
        self._jobs_done = 0
        # The workers' measured speeds, for frame_shares "auto"; shared.py hands a new pool on the same
        # devices the one it replaces, so what was learnt outlives a restart or a pool that is not kept warm.
        self.balancer = ShareBalancer(self.world_size)
        self._last_split: dict[str, list[Any]] | None = None  # the last job's frames and compute time per rank
        self._last_error: str | None = None
        self._closed = False
        self._lock = threading.RLock()  # short state changes only
        self._submit_lock = threading.Lock()  # one submit / shutdown at a time
        self._start_lock = threading.Lock()  # one start at a time
        self._listener = (
            JoinListener(self.config.host, self.config.join_port, self.config.token or "")
            if self.config.multi_machine
            else None
        )

    # ---- public API ----

    @property
    def join_address(self) -> str | None:
        """HOST:PORT that node agents join, for pools with remote workers."""
        return self._listener.address if self._listener else None

    @property
    def running(self) -> bool:
        session = self._session
        return session is not None and session.ready.is_set() and not session.finished.is_set()

    def start(self) -> None:
        """Starts the workers and waits until every rank passed the collective self-test (no-op when warm)."""
        with self._start_lock:
            if self._closed:
                raise PoolError("the pool was shut down; create a new one")
            if not self.running:
                self._start_session()

    def submit(self, job: JobSpec | LatentJob, preview: str = "latent") -> JobHandle:
        """Checks the job against the pool, starts the pool if needed, and hands the job to rank 0.

        preview: what rank 0 sends after each step for handle.take_preview() (engine.contract.PREVIEW_KINDS)."""
        if not isinstance(job, (JobSpec, LatentJob)):
            raise InvalidSettingsError(f"submit takes a JobSpec or a LatentJob, not {type(job).__name__}")
        if preview not in PREVIEW_KINDS:
            raise InvalidSettingsError(f"preview is {preview!r}; use one of {list(PREVIEW_KINDS)}")
        job.validate(self.world_size)
        with self._submit_lock:
            current = self._job
            if current is not None and not current.done():
                raise PoolError(f"job {current.id} is still running; wait for it or cancel it first")
            self.start()
            session = self._session
            if session is None:
                raise PoolError(f"the pool stopped while starting: {self._last_error}")
            with self._lock:
                self._next_id += 1
                handle = JobHandle(self._next_id, job, self._request_cancel)
                self._job = handle
            # Plain data across the process boundary: rank 0 rebuilds the JobSpec and broadcasts it as JSON.
            session.jobs.put({"op": "job", "id": handle.id, "job": job.to_dict(), "preview": preview})
            if session.finished.is_set():  # it failed in the meantime: the monitor may have missed this job
                handle.complete(error=session.failure or PoolError("the pool stopped"))
        return handle

    def balanced_shares(self, job: JobSpec | LatentJob | None = None) -> tuple[float, ...]:
        """Frame shares that let every worker compute for the same time, from the jobs run so far (for `job`:
        fitted on earlier jobs of its kind where there are two); () (an even split) before the first job or
        on matched devices."""
        with self._lock:
            if job is None:
                return self.balancer.shares()
            return self.balancer.shares(cost_kind(job.to_dict()), job.frames)

    def imbalance_note(self) -> str | None:
        """balance.imbalance_note on the last finished job, or None."""
        split = self.last_split
        return None if split is None else imbalance_note(split["frames"], split["compute_seconds"])

    @property
    def last_split(self) -> dict[str, list[Any]] | None:
        """The last finished job's frames, compute seconds and frame capacity per rank (rank order)."""
        with self._lock:
            return self._last_split

    def run(self, job: JobSpec, timeout: float | None = None) -> Any:
        """submit() and result() in one call."""
        return self.submit(job).result(timeout)

    def shutdown(self, timeout_s: float = 10.0) -> None:
        """Stops every worker (cancelling a running job) and closes the join listener. Idempotent."""
        with self._submit_lock:
            self._closed = True
            self._stop_session(timeout_s)
            if self._listener is not None:
                self._listener.close()

    def stop(self) -> None:
        """Stops the workers, cancelling a running job or a start under way; the next submit starts fresh ones."""
        with self._submit_lock:
            self._stop_session(STOP_GRACE_S)

    def restart(self) -> None:
        """Stops the workers and starts fresh ones (e.g. to free every model)."""
        with self._submit_lock:
            self._stop_session(STOP_GRACE_S)
        self.start()

    def status(self) -> dict[str, Any]:
        """A JSON-able snapshot: state, workers (pid, device, alive, memory), the loaded model, the last error."""
        with self._lock:
            session, job = self._session, self._job
            workers = [self._worker_status(info, session) for info in (session.ranks.values() if session else [])]
            for worker in workers:
                worker.update(self._balance_status(worker["rank"]))
            running_job = None
            if job is not None and not job.done():
                latest = job.latest
                running_job = {
                    "id": job.id,
                    "phase": latest.phase if latest else "queued",
                    "step": latest.step if latest else 0,
                    "total": latest.total if latest else 0,
                }
            return {
                "state": self._state(session, job),
                "world_size": self.world_size,
                "backend": self.backend,
                "devices": list(self.devices),
                "remote_workers": self.config.remote_workers,
                "keep_warm": self.config.keep_warm,
                "join_address": self.join_address,
                "refused_joins": self._listener.refused if self._listener else 0,
                "workers": sorted(workers, key=lambda w: w["rank"]),
                "model": self._model,
                "loads": self._loads,
                "job": running_job,
                "jobs_done": self._jobs_done,
                "balanced_shares": self.balancer.shares(),
                "starts": self.starts,
                "start_seconds": self.start_seconds,
                "last_error": self._last_error,
            }

    def worker_pids(self) -> list[int]:
        session = self._session
        return [p.pid for p in session.processes.values()] if session else []

    def __enter__(self) -> WorkerPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()

    # ---- start and stop ----

    def _start_session(self) -> None:
        began = time.monotonic()
        deadline = began + self.config.start_timeout_s
        session = Session(spawn_context(), self.world_size)
        session.guard = Guard(self._guard_settings())
        session.oom_kills_at_start = oom_kill_count()
        with self._lock:
            self._session = session
            self.starts += 1
            self._model, self._loads = None, None  # fresh workers hold no model
        try:
            group = self._group_settings(self._make_store(session))
            for rank, device in enumerate(self.devices):
                session.ranks[rank] = RankInfo(rank, device, host="local")
                root = rank == 0
                args = WorkerArgs(
                    group,
                    rank,
                    device,
                    parent_pid=os.getpid(),
                    events=session.events,
                    jobs=session.jobs if root else None,
                    cancel=session.cancel,
                )
                session.processes[rank] = start_worker(session.ctx, args)
                session.ranks[rank].pid = session.processes[rank].pid
            session.monitor = threading.Thread(target=self._monitor, args=(session,), name="pool-monitor", daemon=True)
            session.monitor.start()
            if self._listener is not None:
                self._assign_agents(session, group, deadline)
            while not session.ready.is_set() and not session.finished.is_set():
                if time.monotonic() > deadline:
                    waiting = sorted(r for r, info in session.ranks.items() if not info.ready)
                    raise PoolError(
                        f"the worker pool did not start within {self.config.start_timeout_s:.0f} s; "
                        f"ranks {waiting} never became ready (see their output above)"
                    )
                time.sleep(0.01)
        except BaseException as error:
            self._teardown(session, error if isinstance(error, Exception) else None)
            raise
        if session.failure is not None:
            raise session.failure
        self.start_seconds = time.monotonic() - began

    def _make_store(self, session: Session) -> StoreAddress:
        if not self.config.multi_machine:
            return session.file_store()
        import torch.distributed as dist  # the coordinator hosts the rendezvous store; no rank owns the port

        # The store listens on the pool's own address only (TCPStore alone would listen on every interface):
        # the socket is bound here and handed over.
        listener = bind_listener(self.config.host, self.config.port)
        port = listener.getsockname()[1]
        session.store = dist.TCPStore(
            self.config.host,
            port,
            self.world_size,
            is_master=True,
            wait_for_workers=False,
            timeout=_seconds(self.config.start_timeout_s),
            master_listen_fd=listener.detach(),
        )
        # Local workers reach a store listening on every interface through loopback; agents use the address
        # they joined through (see agent.py).
        wildcard = self.config.host in ("", "0.0.0.0", "::")
        return StoreAddress("tcp", host="127.0.0.1" if wildcard else self.config.host, port=session.store.port)

    def _group_settings(self, store: StoreAddress) -> GroupSettings:
        config = self.config
        interface = config.network_interface
        if interface is None and (not config.multi_machine or is_loopback(config.host)):
            interface = loopback_interface()  # every rank is on this machine: keep all traffic on loopback
        return GroupSettings(
            world_size=self.world_size,
            backend=self.backend,
            store=store,
            start_timeout_s=config.start_timeout_s,
            collective_timeout_s=config.collective_timeout_s,
            idle_ping_s=min(30.0, config.collective_timeout_s / 4),
            threads=config.threads_per_worker,
            network_interface=interface,
            engine_factory=config.engine_factory,
        )

    def _guard_settings(self) -> GuardSettings:
        config = self.config
        floor = config.memory_floor_bytes if config.memory_floor_bytes is not None else default_floor_bytes()
        return GuardSettings(config.hang_timeout_s, config.cancel_grace_s, floor)

    def _assign_agents(self, session: Session, group: GroupSettings, deadline: float) -> None:
        assert self._listener is not None
        agents = self._listener.take(self.config.remote_workers, deadline, abort=session.finished.is_set)
        next_rank = len(self.devices)
        for agent in agents:
            count = min(len(agent.devices), self.world_size - next_rank)
            ranks = list(range(next_rank, next_rank + count))
            for rank, device in zip(ranks, agent.devices, strict=False):
                session.ranks[rank] = RankInfo(rank, device, host=agent.host, local=False)
            if not is_loopback(self.config.host):
                group = replace(group, network_interface=None)  # interface names differ between machines
            agent.assign(ranks, session.inbox.put, group)
            session.agents.append(agent)
            next_rank += count

    def _stop_session(self, timeout_s: float) -> None:
        session = self._session
        if session is None:
            return
        job = self._job
        if job is not None and not job.done():
            job.cancel()
            job.wait(timeout_s / 2)
        session.stopping = True
        if session.ready.is_set() and not session.finished.is_set():
            session.jobs.put({"op": "stop"})
            deadline = time.monotonic() + timeout_s / 2
            for process in session.processes.values():
                process.join(max(0.0, deadline - time.monotonic()))
        self._teardown(session, None)
        if job is not None and not job.done():
            job.complete(error=PoolError("the pool was shut down while the job ran"))

    def _teardown(self, session: Session, error: BaseException | None) -> None:
        """Ends every process of the session (no orphans), frees its store, and forgets it."""
        with self._lock:
            if session.finished.is_set():
                return
            session.stopping = True
            if error is not None and session.failure is None:
                session.failure = error
            session.finished.set()
            if self._session is session:
                self._session = None
        kill_all(list(session.processes.values()))
        for agent in session.agents:
            if self._listener is not None:
                self._listener.give_back(agent)
        if session.monitor is not None and session.monitor is not threading.current_thread():
            session.monitor.join(5)
        session.close_resources()

    # ---- events ----

    def _monitor(self, session: Session) -> None:
        try:
            self._watch(session)
        except Exception as error:  # a bug here must not leave a job waiting forever
            self._fail(session, PoolError(f"the pool's monitor failed: {error!r}"))

    def _watch(self, session: Session) -> None:
        while not session.finished.is_set():
            for event in self._drain(session):
                self._handle(session, event)
            if not session.stopping:
                for rank, process in session.processes.items():
                    if process.exitcode is not None and rank not in session.deaths:
                        session.deaths[rank] = process.exitcode
                        session.fault_at = session.fault_at or time.monotonic()
            fault = None if session.stopping or session.fault_at else session.guard.check(session, self._job)
            if fault is not None:
                self._fail(session, fault.error, fault.reason)
                return
            if session.fault_at is not None and time.monotonic() - session.fault_at >= FAULT_GRACE_S:
                if not session.stopping:
                    self._fail(session, self._root_cause(session))
                return

    def _drain(self, session: Session) -> list[WorkerEvent]:
        """Events of local workers and of node agents, decoded; malformed ones are dropped."""
        wire = []
        try:
            wire.append(session.events.get(timeout=0.05))
            while True:
                wire.append(session.events.get_nowait())
        except queue.Empty:
            pass
        except (EOFError, OSError, ValueError):  # the queue was closed by a teardown
            pass
        while True:
            try:
                wire.append(session.inbox.get_nowait())
            except queue.Empty:
                break
        return [event for event in map(from_wire, wire) if event is not None]

    def _handle(self, session: Session, event: WorkerEvent) -> None:
        info = session.ranks.get(event.rank)
        if info is not None:
            info.last_seen = time.monotonic()
        job = self._job
        current = job is not None and getattr(event, "job", None) == job.id and not job.done()
        if isinstance(event, Ready) and info is not None:
            info.ready, info.pid, info.device = True, event.pid, event.device
            info.host = event.host if not info.local else "local"
            if all(r.ready for r in session.ranks.values()) and len(session.ranks) == session.world_size:
                session.ready.set()
        elif isinstance(event, Stats) and info is not None:
            info.stats = event
        elif isinstance(event, Progress) and current:
            assert job is not None
            job.record_progress(ProgressEvent(event.step, event.total, event.phase, event.time))
        elif isinstance(event, Preview) and current:
            assert job is not None
            job.record_preview(PreviewEvent(event.step, event.total, event.frame))
        elif isinstance(event, Result):
            if not current:
                if event.shm:
                    unlink_quietly(event.shm)
                return
            assert job is not None
            frames = take_frames(event.shm, event.shape) if event.shm else None
            with self._lock:
                self._model = asdict(job.job.model)
                self._loads = event.loads
                self._jobs_done += 1
                kind = cost_kind(job.job.to_dict())
                self.balancer.record(event.frames_per_rank, event.compute_seconds, kind, event.frame_capacity)
                self._last_split = {
                    "frames": list(event.frames_per_rank),
                    "compute_seconds": list(event.compute_seconds),
                    "frame_capacity": list(event.frame_capacity),
                }
            job.complete(frames=frames, latents=event.latents)
        elif isinstance(event, Cancelled) and current:
            assert job is not None
            job.complete(error=JobCancelled(event.step, event.phase))
        elif isinstance(event, Failed) and event.recoverable:
            if current:  # the ranks are in step: this job failed, the pool stays warm for the next
                assert job is not None
                error = self._worker_error(event)
                with self._lock:
                    self._last_error = str(error)
                job.complete(error=error)
        elif isinstance(event, Failed):
            session.errors.append(event)
            session.fault_at = session.fault_at or time.monotonic()
        elif isinstance(event, Died):
            session.deaths[event.rank] = event.exitcode
            session.fault_at = session.fault_at or time.monotonic()
        elif isinstance(event, AgentLost):
            for lost in event.ranks:
                session.deaths.setdefault(lost, None)
                session.lost_hosts[lost] = event.host
            session.fault_at = session.fault_at or time.monotonic()

    def _root_cause(self, session: Session) -> WorkerError:
        """A rank that died without a word is the cause; the others only saw their peer vanish. When every
        report is a peer's symptom (a collective timed out or lost its connection), the silent rank is."""
        reported = {e.rank for e in session.errors}
        oom = _oom_killed_since(session.oom_kills_at_start)
        for rank in sorted(session.deaths):
            if rank in reported:
                continue
            info = session.ranks.get(rank)
            device, pid = (info.device, info.pid) if info else ("", None)
            if rank in session.lost_hosts:
                message = f"the node agent on {session.lost_hosts[rank]} disconnected"
            else:
                message = f"the worker process died unexpectedly: {describe_exit(session.deaths[rank], oom)}"
            return WorkerError(rank, message, "WorkerDied", device=device, pid=pid)
        silent = sorted(set(session.ranks) - reported)
        if silent and all(_is_peer_symptom(e) for e in session.errors):
            info = session.ranks[silent[0]]
            first = session.errors[0]
            return WorkerError(
                info.rank,
                f"did not take part in an exchange that rank(s) {sorted(reported)} waited in until it failed, so it "
                f"is stuck or far behind (rank {first.rank} reported: {first.kind}: {_first_line(first.message)})",
                "WorkerStuck",
                device=info.device,
                pid=info.pid,
            )
        return self._worker_error(session.errors[0])

    @staticmethod
    def _worker_error(event: Failed) -> WorkerError:
        return WorkerError(event.rank, event.message, event.kind, event.traceback, device=event.device, pid=event.pid)

    def _fail(self, session: Session, error: VideoInfinityError, reason: str | None = None) -> None:
        with self._lock:
            self._last_error = reason or str(error)
            job = self._job
        self._teardown(session, error)
        if job is not None and not job.done():
            job.complete(error=error)

    # ---- helpers ----

    def _request_cancel(self, job_id: int) -> None:
        session = self._session
        if session is not None:
            session.cancel.value = job_id

    def _state(self, session: Session | None, job: JobHandle | None) -> str:
        if self._closed:
            return "closed"
        if session is None or session.finished.is_set():
            return "stopped"
        if not session.ready.is_set():
            return "starting"
        return "busy" if job is not None and not job.done() else "ready"

    def _balance_status(self, rank: int) -> dict[str, Any]:
        """The rank's part of the last job (frames, compute seconds, the frames its memory would have held)
        and its measured relative speed."""
        split, speeds = self._last_split, self.balancer.speeds
        known = split is not None and rank < len(split["frames"]) and rank < len(split["compute_seconds"])
        fits = split["frame_capacity"] if split is not None else []
        return {
            "frames": split["frames"][rank] if known else None,
            "compute_s": round(split["compute_seconds"][rank], 2) if known else None,
            "speed": round(speeds[rank], 2) if speeds is not None and rank < len(speeds) else None,
            "fits": fits[rank] if rank < len(fits) and fits[rank] > 0 else None,
        }

    @staticmethod
    def _worker_status(info: RankInfo, session: Session | None) -> dict[str, Any]:
        alive = info.ready and info.rank not in (session.deaths if session else {})
        stats = info.stats
        rss = stats.rss if stats else None
        if info.local and info.pid:
            try:
                rss = psutil.Process(info.pid).memory_info().rss
                alive = alive and psutil.pid_exists(info.pid)
            except psutil.Error:
                alive = False
        return {
            "rank": info.rank,
            "device": info.device,
            "host": info.host,
            "pid": info.pid,
            "local": info.local,
            "alive": bool(alive),
            "rss_bytes": rss,
            "cuda_allocated_bytes": stats.cuda_allocated if stats else None,
            "cuda_reserved_bytes": stats.cuda_reserved if stats else None,
        }


PEER_SYMPTOMS = ("timed out", "timeout", "connection closed", "connection reset", "broken pipe")


def _first_line(message: str) -> str:
    """The message's first line without a leading "[source/file.cc:81] " location tag (gloo writes one)."""
    line = (message.splitlines() or [""])[0]
    return re.sub(r"^\[[^\]]*\]\s*", "", line)


def _is_peer_symptom(event: Failed) -> bool:
    """Whether a rank's error only says that a peer did not answer (a collective timed out or lost its link)."""
    text = f"{event.kind} {event.message}".lower()
    return any(symptom in text for symptom in PEER_SYMPTOMS)


def _oom_killed_since(count_at_start: int | None) -> bool | None:
    now = oom_kill_count()
    return None if now is None or count_at_start is None else now > count_at_start


def _seconds(value: float) -> Any:
    from datetime import timedelta

    return timedelta(seconds=value)
