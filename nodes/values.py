"""Plain values that travel between the pack's nodes (picklable, no ComfyUI objects)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..distributed.engine.choices import AUTO_DEVICES, AUTO_SHARES, DEFAULT_COLLECTIVE_TIMEOUT_S, DEFAULT_JOIN_PORT


@dataclass(frozen=True)
class ModelChoice:
    base: str  # diffusers pipeline folder
    unet: str | None  # optional UNet override (folder or .safetensors file)
    dtype: str
    name: str  # what the user picked, for messages

    def spec(self):
        """The engine's ModelSpec for this choice."""
        from ..distributed.engine.job import ModelSpec

        return ModelSpec(base=self.base, unet=self.unet, dtype=self.dtype)


def asks_for_measured_shares(frame_shares: str) -> bool:
    """Whether a Worker Pool's frame_shares text is "auto" (any case, any surrounding spaces)."""
    return frame_shares.strip().lower() == AUTO_SHARES


@dataclass(frozen=True)
class PoolChoice:
    devices: str  # "auto", "cpu:N", "cuda:all" or a comma list such as "cuda:0,cuda:1"
    keep_warm: bool = True
    timeout_s: float = DEFAULT_COLLECTIVE_TIMEOUT_S  # the longest a worker may wait for the others inside a collective
    job_timeout_s: float = 0.0  # the longest the node waits for the video before cancelling it; 0: no limit
    remote_workers: int = 0  # ranks that node agents on other machines add (docs/2)
    join_address: str = f"127.0.0.1:{DEFAULT_JOIN_PORT}"  # HOST:PORT where the agents connect
    frame_shares: str = ""  # relative frames per worker, "3,1" (layout.FrameLayout); "": even; "auto": measured

    @property
    def measured_shares(self) -> bool:
        """frame_shares "auto": each job's split follows the workers' speeds measured on earlier jobs."""
        return asks_for_measured_shares(self.frame_shares)

    def shares(self, pool: Any = None, job: Any = None) -> tuple[float, ...]:
        """The frame shares of `job`: the parsed frame_shares, or with "auto" the running pool's measured split
        for it (WorkerPool.balanced_shares; even before its first job). Raises InvalidSettingsError naming the
        expected form."""
        from ..distributed.engine.layout import parse_shares

        if self.measured_shares:
            return pool.balanced_shares(job) if pool is not None else ()
        return parse_shares(self.frame_shares)

    def join_endpoint(self) -> tuple[str, int]:
        """(host, port) of join_address, read as the agents' command line reads it, plus a host and a port in
        range; raises ValueError naming the expected form."""
        from ..distributed.pool.netutil import parse_address

        try:
            host, port = parse_address(self.join_address.strip())
        except ValueError:
            host, port = "", 0
        if not host or not 1 <= port <= 65535:
            raise ValueError(
                f"join_address is {self.join_address!r}; give HOST:PORT, such as 10.0.0.5:{DEFAULT_JOIN_PORT}, "
                "an address of this machine that the other machines reach"
            )
        return host, port


DEFAULT_POOL = PoolChoice(devices=AUTO_DEVICES)  # what a sampler uses with no Worker Pool connected


@dataclass
class VideoFrames:
    """A finished video as uint8 (T, H, W, 3): four times smaller than ComfyUI's float32 IMAGE."""

    frames: np.ndarray
    fps: float
    info: dict[str, Any] = field(default_factory=dict)
