"""One started process group: its processes, queues, store, and what the ranks have reported."""

from __future__ import annotations

import os
import queue
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from .events import Failed, Stats
from .join import AgentLink
from .worker_args import StoreAddress


@dataclass
class RankInfo:
    rank: int
    device: str
    host: str = ""
    pid: int | None = None
    local: bool = True
    ready: bool = False
    stats: Stats | None = None  # the rank's latest memory report
    last_seen: float = field(default_factory=time.monotonic)  # when its last event (a heartbeat, say) arrived


STORE_DIR_PREFIX = "video-infinity-pool-"


def remove_stale_store_dirs() -> list[str]:
    """Store folders of coordinators that are gone (killed with -9, say): removed. Returns what was removed."""
    removed = []
    for folder in Path(tempfile.gettempdir()).glob(f"{STORE_DIR_PREFIX}*"):
        owner = folder.name.removeprefix(STORE_DIR_PREFIX).split("-", 1)[0]
        if owner.isdigit() and int(owner) != os.getpid() and not psutil.pid_exists(int(owner)):
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(str(folder))
    return removed


class Session:
    def __init__(self, ctx: Any, world_size: int):
        self.ctx = ctx
        self.world_size = world_size
        self.events = ctx.Queue()  # every local worker -> coordinator
        self.jobs = ctx.Queue()  # coordinator -> rank 0
        self.cancel = ctx.Value("q", -1)  # the id of the job the local workers should stop
        self.inbox: queue.SimpleQueue[dict[str, Any]] = queue.SimpleQueue()  # events relayed by node agents
        self.processes: dict[int, Any] = {}
        self.agents: list[AgentLink] = []
        self.ranks: dict[int, RankInfo] = {}
        self.store: Any = None  # a TCPStore kept alive here for multi-machine pools
        self.store_dir: str | None = None
        self.stopping = False
        self.finished = threading.Event()
        self.ready = threading.Event()
        self.failure: BaseException | None = None
        self.errors: list[Failed] = []
        self.deaths: dict[int, int | None] = {}
        self.lost_hosts: dict[int, str] = {}
        self.fault_at: float | None = None
        self.monitor: threading.Thread | None = None
        self.guard: Any = None  # guard.Guard: hangs, overdue cancels, memory
        self.oom_kills_at_start: int | None = None  # the OOM killer's count when the session began

    def file_store(self) -> StoreAddress:
        """A store in a private folder: a one-machine pool needs no listening port for rendezvous."""
        remove_stale_store_dirs()
        self.store_dir = tempfile.mkdtemp(prefix=f"{STORE_DIR_PREFIX}{os.getpid()}-")
        return StoreAddress("file", path=f"{self.store_dir}/store")

    def close_resources(self) -> None:
        self.store = None
        if self.store_dir:
            shutil.rmtree(self.store_dir, ignore_errors=True)
            self.store_dir = None
        for q in (self.events, self.jobs):
            q.close()
            q.cancel_join_thread()
