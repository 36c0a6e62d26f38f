"""Everything a worker process is started with, as one dataclass.

`GroupSettings` is the part every rank of a process group shares; it travels as JSON to node agents on
other machines. `WorkerArgs` adds what belongs to one process. Both cross into the new process as plain
dicts (see events.py for why), converted back on arrival.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any


@dataclass(frozen=True)
class StoreAddress:
    """Where the ranks meet to form the process group: a file (one machine) or a TCP store."""

    kind: str  # "file" or "tcp"
    path: str | None = None
    host: str | None = None
    port: int | None = None


@dataclass(frozen=True)
class GroupSettings:
    world_size: int
    backend: str  # "gloo" or "nccl"
    store: StoreAddress
    start_timeout_s: float
    collective_timeout_s: float  # how long one rank waits for the others inside a collective
    idle_ping_s: float  # an idle pool still talks this often, so no rank's wait reaches the timeout
    threads: int  # torch CPU threads per worker
    network_interface: str | None
    engine_factory: str | None  # "file.py:callable" building another engine per rank (tests, benchmarks)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> GroupSettings:
        data = dict(data)
        data["store"] = StoreAddress(**data["store"])
        return cls(**data)

    def reached_from(self, host: str, network_interface: str | None) -> GroupSettings:
        """As seen from another machine: a TCP store is reached through the address the agent joined through."""
        store = replace(self.store, host=host) if self.store.kind == "tcp" else self.store
        return replace(self, store=store, network_interface=network_interface or self.network_interface)


@dataclass(frozen=True)
class WorkerArgs:
    group: GroupSettings
    rank: int
    device: str
    parent_pid: int  # the worker exits when this process is gone
    events: Any  # multiprocessing queue: worker -> whoever started it
    jobs: Any = None  # rank 0 only: multiprocessing queue of commands from the coordinator
    cancel: Any = None  # ranks on the coordinator's machine: multiprocessing value, the id of the job to stop

    def to_dict(self) -> dict[str, Any]:
        return {
            "group": self.group.to_dict(),
            "rank": self.rank,
            "device": self.device,
            "parent_pid": self.parent_pid,
            "events": self.events,
            "jobs": self.jobs,
            "cancel": self.cancel,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> WorkerArgs:
        return cls(**dict(data, group=GroupSettings.from_dict(data["group"])))
