"""This machine's memory as the kernel enforces it: free memory within the container's limit, and OOM kills."""

from __future__ import annotations

from pathlib import Path

import psutil

CGROUP_ROOT = Path("/sys/fs/cgroup")
_v1 = CGROUP_ROOT / "memory"  # cgroup v1's memory controller
NO_LIMIT = 1 << 60  # cgroup v1 reports "no limit" as a huge number


def available_bytes() -> int:
    """Memory a new allocation can still get: the machine's available memory, or less under a cgroup limit."""
    available = psutil.virtual_memory().available
    limit, usage = _cgroup_limit_and_usage()
    if limit is not None and usage is not None and limit < NO_LIMIT:
        available = min(available, max(0, limit - usage))
    return available


def default_floor_bytes() -> int:
    """Free memory below which a running job is stopped before the OOM killer acts: 5 % of RAM, 256 MiB to 2 GiB."""
    total = psutil.virtual_memory().total
    return int(min(2 * 2**30, max(256 * 2**20, 0.05 * total)))


def oom_kill_count() -> int | None:
    """How many processes of this cgroup the kernel's out-of-memory killer has ended so far; None if unknown."""
    for path, key in ((_cgroup_v2_dir() / "memory.events", "oom_kill"), (_v1 / "memory.oom_control", "oom_kill")):
        value = _read_key(path, key)
        if value is not None:
            return value
    return None


def _cgroup_v2_dir() -> Path:
    try:
        for line in Path("/proc/self/cgroup").read_text().splitlines():
            if line.startswith("0::"):
                return CGROUP_ROOT / line[3:].lstrip("/")
    except OSError:
        pass
    return CGROUP_ROOT


def _cgroup_limit_and_usage() -> tuple[int | None, int | None]:
    v2 = _cgroup_v2_dir()
    for limit_file, usage_file in (
        (v2 / "memory.max", v2 / "memory.current"),
        (_v1 / "memory.limit_in_bytes", _v1 / "memory.usage_in_bytes"),
    ):
        limit, usage = _read_int(limit_file), _read_int(usage_file)
        if limit is not None or usage is not None:
            return limit, usage
    return None, None


def _read_int(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None  # "max" (no limit) and unreadable files count as unknown


def _read_key(path: Path, key: str) -> int | None:
    try:
        for line in path.read_text().splitlines():
            name, _, value = line.partition(" ")
            if name == key and value.strip().isdigit():
                return int(value)
    except OSError:
        pass
    return None
