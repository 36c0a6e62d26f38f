"""The worker pool: persistent workers (one per device) that run generation jobs for the nodes and the CLI.

Public API (what the ComfyUI nodes call):

    config = PoolConfig(devices="cuda:all")          # or "cpu:2", ["cuda:0", "cuda:1"], workers=N, ...
    pool = shared_pool(config)                        # warm pool reused while the config is equal
    handle = pool.submit(job)                         # a JobSpec; checks the split, starts the pool if needed
                                                      # (preview="none" | "latent" | "pixels": see take_preview)
    handle.poll_events()                              # [ProgressEvent(step, total, phase, time)], never blocks
    handle.take_preview()                             # newest PreviewEvent(step, total, frame) or None: the
                                                      # first frame of the denoised estimate, for live previews
    handle.cancel(); handle.done()
    frames = handle.result(timeout)                   # (T, H, W, 3) uint8 numpy over shared memory
                                                      # raises JobCancelled, WorkerError(.rank, .message,
                                                      # .traceback_text), PoolError, TimeoutError
    pool.status()                                     # JSON-able: state, workers, model, loads, last_error
    shutdown_shared_pool()

Additions beyond that: WorkerPool(config) for a private pool (a context manager), pool.start(),
pool.run(job), pool.restart(), pool.shutdown(), pool.join_address (multi-machine pools),
pool.worker_pids(), handle.wait(timeout), handle.latents(timeout), handle.latest (last ProgressEvent),
current_shared_pool(), and run_agent() behind `python -m distributed.cli join`.

Phases: "loading", "denoising", "decoding", "gathering" (from the engine).
"""

from .config import PoolConfig, parse_devices
from .errors import PoolError, WorkerError
from .handle import JobHandle, PreviewEvent, ProgressEvent
from .pool import WorkerPool
from .shared import current_shared_pool, shared_pool, shutdown_shared_pool

__all__ = [
    "JobHandle",
    "PoolConfig",
    "PoolError",
    "PreviewEvent",
    "ProgressEvent",
    "WorkerError",
    "WorkerPool",
    "current_shared_pool",
    "parse_devices",
    "shared_pool",
    "shutdown_shared_pool",
]
