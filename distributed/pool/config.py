"""Pool settings and device resolution, validated in the coordinator before any process starts."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field

from ..engine.choices import AUTO_DEVICES, DEFAULT_COLLECTIVE_TIMEOUT_S, expand_devices, gpu_count
from ..engine.errors import InvalidSettingsError
from .netutil import check_port_free

BACKENDS = ("auto", "nccl", "gloo")


@dataclass(frozen=True)
class PoolConfig:
    """How many workers, on which devices, and how the process group is formed.

    devices: "auto" (every GPU, else two CPU workers), "cpu:N" (N CPU workers), "cuda:all" (every visible
    GPU), "cuda:0,2", or a list such as ["cuda:0", "cuda:1"] or ["cpu", "cpu"]. `workers` takes the first N.
    """

    devices: str | Sequence[str] = AUTO_DEVICES
    workers: int | None = None
    backend: str = "auto"
    host: str = "127.0.0.1"  # the address the coordinator listens on; loopback unless the user opens it
    port: int = 0  # process-group store port when ranks join from other machines; 0 picks a free one
    join_port: int = 0  # where node agents connect; 0 picks a free one
    remote_workers: int = 0  # ranks the pool waits for from node agents
    token: str | None = None  # shared secret node agents must present
    start_timeout_s: float = 120.0
    collective_timeout_s: float = (
        DEFAULT_COLLECTIVE_TIMEOUT_S  # the longest one rank waits for the others in a collective
    )
    threads_per_worker: int = 1  # torch CPU threads per worker
    network_interface: str | None = None  # gloo/NCCL socket interface for multi-machine pools
    engine_factory: str | None = None  # "file.py:callable" building another engine per rank (tests, benchmarks)
    # What happens after a job, not what the pool is: a change needs no restart (ignored by ==).
    keep_warm: bool = field(default=True, compare=False)
    # The coordinator's watch over running workers (ignored by ==, as above):
    hang_timeout_s: float = field(default=10.0, compare=False)  # a worker silent this long is hung
    cancel_grace_s: float = field(default=5.0, compare=False)  # then a cancelled job's workers are stopped by force
    memory_floor_bytes: int | None = field(default=None, compare=False)  # None: memory.default_floor_bytes()

    def __post_init__(self) -> None:
        if not isinstance(self.devices, str):
            object.__setattr__(self, "devices", tuple(str(d) for d in self.devices))

    @property
    def multi_machine(self) -> bool:
        return self.remote_workers > 0

    def local_devices(self, cuda_count: int | None = None) -> list[str]:
        """The devices of this machine's workers, in rank order. Raises InvalidSettingsError."""
        devices = parse_devices(self.devices, gpu_count() if cuda_count is None else cuda_count)
        if self.workers is not None:
            if self.workers < 1:
                raise InvalidSettingsError(f"workers is {self.workers}; it must be at least 1")
            if self.workers > len(devices):
                raise InvalidSettingsError(
                    f"{self.workers} workers asked for but only {len(devices)} device(s) given ({', '.join(devices)}); "
                    f"ask for at most {len(devices)} workers or list more devices"
                )
            devices = devices[: self.workers]
        return devices

    def resolved_backend(self, devices: Sequence[str]) -> str:
        on_cuda = devices[0].startswith("cuda")
        if self.backend not in BACKENDS:
            raise InvalidSettingsError(f"backend is {self.backend!r}; use one of {list(BACKENDS)}")
        if self.backend == "nccl" and not on_cuda:
            raise InvalidSettingsError("the nccl backend needs CUDA devices; use gloo (or auto) for CPU workers")
        if self.backend == "gloo" and on_cuda:
            raise InvalidSettingsError("CUDA workers use the nccl backend; use backend 'auto' or 'nccl'")
        return "nccl" if on_cuda else "gloo"

    def validate(self) -> tuple[list[str], str]:
        """Everything that can be checked before a process starts. Returns (devices, backend)."""
        devices = self.local_devices()
        backend = self.resolved_backend(devices)
        for name in ("start_timeout_s", "collective_timeout_s", "hang_timeout_s", "cancel_grace_s"):
            if getattr(self, name) <= 0:
                raise InvalidSettingsError(f"{name} is {getattr(self, name)}; it must be greater than 0 seconds")
        if self.threads_per_worker < 1:
            raise InvalidSettingsError(f"threads_per_worker is {self.threads_per_worker}; it must be at least 1")
        if self.remote_workers < 0:
            raise InvalidSettingsError(f"remote_workers is {self.remote_workers}; it must be 0 or more")
        if self.multi_machine and not self.token:
            raise InvalidSettingsError("a pool that accepts node agents needs a token; set token='<shared secret>'")
        for port, what in ((self.port, "process-group"), (self.join_port, "join")):
            if not 0 <= port < 65536:
                raise InvalidSettingsError(f"the {what} port is {port}; use 1-65535, or 0 to pick a free one")
            if port:
                check_port_free(self.host, port, what)
        return devices, backend


def parse_devices(spec: str | Sequence[str], cuda_count: int) -> list[str]:
    if isinstance(spec, str):
        spec = expand_devices(spec)
        if spec == "cuda:all":
            if cuda_count == 0:
                raise InvalidSettingsError("'cuda:all' asked for, but this machine has no visible CUDA device")
            return [f"cuda:{i}" for i in range(cuda_count)]
        if spec.startswith("cpu:"):
            count = _count(spec[4:], spec)
            cores = os.cpu_count() or 1
            if count > cores:
                raise InvalidSettingsError(
                    f"{count} CPU workers asked for but this machine has {cores} CPU core(s); use at most {cores}"
                )
            return ["cpu"] * count
        if spec.startswith("cuda:") and "," in spec:
            items = [f"cuda:{part.strip()}" for part in spec[5:].split(",") if part.strip()]
        else:
            items = [part.strip() for part in spec.split(",") if part.strip()]
    else:
        items = [str(item).strip().lower() for item in spec]
    if not items:
        raise InvalidSettingsError("no devices given; use e.g. 'cpu:2', 'cuda:all' or ['cuda:0', 'cuda:1']")
    devices = [_one_device(item, cuda_count) for item in items]
    kinds = {d.split(":")[0] for d in devices}
    if len(kinds) > 1:
        raise InvalidSettingsError("a pool uses either CPU or CUDA workers, not both; list devices of one kind")
    duplicates = sorted({d for d in devices if d != "cpu" and devices.count(d) > 1})
    if duplicates:
        raise InvalidSettingsError(
            f"{', '.join(duplicates)} listed more than once; one worker per GPU (NCCL cannot run two ranks on one GPU)"
        )
    return devices


def _one_device(item: str, cuda_count: int) -> str:
    if item == "cpu":
        return "cpu"
    if item == "cuda":
        item = "cuda:0"
    if item.startswith("cuda:"):
        index = _count(item[5:], item, minimum=0)
        if index >= cuda_count:
            have = ", ".join(f"cuda:{i}" for i in range(cuda_count)) or "none"
            raise InvalidSettingsError(f"device {item} does not exist; visible CUDA devices: {have}")
        return f"cuda:{index}"
    raise InvalidSettingsError(f"unknown device {item!r}; use 'cpu', 'cuda:N', 'cpu:N' or 'cuda:all'")


def _count(text: str, spec: str, minimum: int = 1) -> int:
    try:
        value = int(text)
    except ValueError as error:
        raise InvalidSettingsError(f"device {spec!r}: {text!r} is not a number") from error
    if value < minimum:
        raise InvalidSettingsError(f"device {spec!r}: the number must be at least {minimum}")
    return value
