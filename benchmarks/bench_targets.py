"""Functions that run inside each benchmark process (imported by name in the spawned ranks)."""

from __future__ import annotations

import ctypes
import gc
import statistics
import time
from typing import Any

import torch
import torch.distributed as dist

from distributed.engine.comm import Communicator
from distributed.engine.context import TemporalContext
from distributed.engine.layout import FrameLayout
from distributed.engine.settings import DualScopeSettings
from distributed.models.unet3d.model import UNet3DVideoCrafterConditionModel, run_unet3d
from distributed.models.unet3d.patch import patch_unet
from support.tiny_models import tiny_unet_config

from .common import (
    independent_clips_step,
    peak_rss_bytes,
    reset_peak_rss,
    rss_bytes,
    sliding_window_step,
    window_evaluations,
)

TIMESTEP = 500.0  # below the phase threshold: the local-bias phase, which costs the same as the other
TEXT_TOKENS = 16


def bench_unet(seed: int = 0, **overrides: Any) -> UNet3DVideoCrafterConditionModel:
    """A random UNet3D of the real family; zero-initialised layers get small weights so nothing is skipped."""
    torch.manual_seed(seed)
    unet = UNet3DVideoCrafterConditionModel(**tiny_unet_config(**overrides))
    with torch.no_grad():
        for parameter in unet.parameters():
            if not parameter.any():
                parameter.normal_(0.0, 0.05)
    return unet.eval()


def _inputs(frames: int, latent: int, text_dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The same whole-video CFG batch (uncond, cond) on every rank: one global tensor, sliced by rank."""
    generator = torch.Generator().manual_seed(1)
    sample = torch.randn(2, 4, frames, latent, latent, generator=generator)
    prompt = torch.randn(2, 1, TEXT_TOKENS, text_dim, generator=generator)
    return sample, prompt.expand(2, frames, TEXT_TOKENS, text_dim)


def _barrier(comm: Communicator) -> None:
    if comm.world_size > 1:
        dist.barrier()


def _release_freed_memory() -> None:
    """Returns freed heap pages to the kernel, so the RSS before a measurement holds no garbage of the last."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def map_every_tensor() -> None:
    """Makes glibc give every allocation of 64 KiB or more a mapping of its own, returned to the kernel when
    it is freed. With the default dynamic threshold, freed blocks below 32 MiB stay in the heap and count in
    the RSS, so a step's peak RSS also holds whatever the allocator kept; mapped, it follows the live tensors
    (docs/5, "Working memory per frame"). Allocation gets slower, so only memory is measured this way."""
    m_mmap_threshold = -3  # mallopt's parameter number in glibc's malloc.h
    if not ctypes.CDLL("libc.so.6").mallopt(m_mmap_threshold, 64 * 1024):
        raise RuntimeError("mallopt(M_MMAP_THRESHOLD) was refused; working memory cannot be measured exactly")


def step_target(
    comm: Communicator,
    method: str,
    frame_counts: list[int],
    latent: int = 8,
    reps: dict[int, int] | None = None,
    window: int = 16,
    stride: int = 4,
    settings: dict[str, Any] | None = None,
    unet_overrides: dict[str, Any] | None = None,
    exact_memory: bool = False,
) -> list[dict[str, Any]]:
    """Times one denoising step (one CFG-batched UNet evaluation of the whole video) of `method` on this
    rank, for each frame count (ascending, so memory left behind by a run is smaller than the next one's).

    method: "vi" (patched model, this rank's clip), "vi_waiting" (the same, attention waiting for its exchange
    instead of overlapping it), "solo" (the same without any exchange), "windows" (sliding windows of `window` frames every
    `stride` frames, pyramid fusion), "full" (unpatched model on all frames), "clips" (independent clips of
    `window` frames). Only "vi", "vi_waiting" and "solo" use several ranks. exact_memory: every tensor gets
    a mapping of its own (map_every_tensor), for a working memory without the allocator's leftovers; its
    times are not the method's.
    """
    if exact_memory:
        map_every_tensor()
    unet = bench_unet(**(unet_overrides or {}))
    # "solo": every rank runs the 1-rank model on its share of the frames and exchanges nothing; the
    # process group only lines the ranks' steps up. It is what perfect parallelism would cost here.
    ctx = TemporalContext(Communicator.single() if method == "solo" else comm)
    if method in ("vi", "vi_waiting", "solo"):
        patch_unet(unet, ctx)
        for processor in unet.attn_processors.values():
            if hasattr(processor, "overlap"):
                processor.overlap = method != "vi_waiting"
    elif method not in ("windows", "clips", "full"):
        raise ValueError(f"unknown method {method!r}")
    job_settings = DualScopeSettings(**(settings or {}))
    ctx.timestep = TIMESTEP
    results = []
    for index, frames in enumerate(sorted(frame_counts)):
        sample, text = _inputs(frames, latent, unet.config.cross_attention_dim)
        evaluations = frames
        if method in ("vi", "vi_waiting", "solo"):
            layout = FrameLayout(frames, comm.world_size)
            start, end = layout.span(comm.rank)
            sample, text = sample[:, :, start:end].contiguous(), text[:, start:end]
            ctx.begin_job(layout if method != "solo" else FrameLayout(end - start, 1), job_settings)
            evaluations = end - start

            def call(sample: torch.Tensor = sample, text: torch.Tensor = text) -> torch.Tensor:
                return run_unet3d(unet, sample, TIMESTEP, text)

        elif method == "windows":
            evaluations = window_evaluations(frames, window, stride)

            def call(sample: torch.Tensor = sample, text: torch.Tensor = text) -> torch.Tensor:
                return sliding_window_step(unet, sample, TIMESTEP, text, window, stride)

        elif method == "clips":

            def call(sample: torch.Tensor = sample, text: torch.Tensor = text) -> torch.Tensor:
                return independent_clips_step(unet, sample, TIMESTEP, text, window)

        else:

            def call(sample: torch.Tensor = sample, text: torch.Tensor = text) -> torch.Tensor:
                return run_unet3d(unet, sample, TIMESTEP, text)

        if index == 0:  # the first call of a process pays for lazy initialisation
            with torch.no_grad():
                call()
        results.append(
            _measure(comm, call, (reps or {}).get(frames, 1)) | {"frames": frames, "evaluations": evaluations}
        )
        del sample, text, call
    return results


def _measure(comm: Communicator, call: Any, reps: int) -> dict[str, Any]:
    _release_freed_memory()
    before = rss_bytes()
    resettable = reset_peak_rss()
    times, sent, received, calls, rounds, waited = [], [], [], [], [], []
    for _ in range(reps):
        comm.reset_counters()
        comm.stalls.reset()
        _barrier(comm)  # ranks start together, so the slowest rank's time is the step time
        began = time.perf_counter()
        with torch.no_grad():
            out = call()
        times.append(time.perf_counter() - began)
        sent.append(comm.bytes_sent)
        received.append(comm.bytes_received)
        calls.append(comm.calls)
        rounds.append(comm.rounds)
        waited.append(comm.stalls.seconds())
        del out
    return {
        "rank": comm.rank,
        "world": comm.world_size,
        "times": times,
        "time": statistics.median(times),
        "bytes_sent": sent[0],
        "bytes_received": received[0],
        "bytes_steady": len(set(sent)) == 1,
        "calls": calls[0],
        "rounds": rounds[0],
        "waited": statistics.median(waited),  # seconds this rank stood in exchanges, waiting for the others
        "rss_before": before,
        "peak_rss": peak_rss_bytes(),
        "peak_resettable": resettable,
    }


def exchange_latency_target(comm: Communicator, latent: int = 8, repeats: int = 500) -> dict[str, float]:
    """Seconds per exchange of the kinds a step waits on, as the engine makes them: the all-gather of one
    norm's statistics, a temporal convolution's halo of 4 frames, and both posted together."""
    settings = DualScopeSettings()
    layout = FrameLayout(64 * comm.world_size, comm.world_size)
    moments = torch.zeros(3, 2, 8, dtype=torch.float64)  # count, mean, m2 per (CFG batch, group)
    frames = torch.zeros(2, 64, 48, latent, latent)  # the first level's temporal-conv input, CFG batch 2

    def gather() -> None:
        comm.all_gather(moments)

    def halo() -> None:
        comm.borrow_frames(frames, 1, layout, settings.conv_halo)

    def both() -> None:
        finish = comm.start_all_gather(moments)
        comm.borrow_frames(frames, 1, layout, settings.conv_halo)
        finish()

    timings = {}
    for name, call in (("statistics", gather), ("halo", halo), ("both", both)):
        for _ in range(20):
            call()
        _barrier(comm)
        began = time.perf_counter()
        for _ in range(repeats):
            call()
        timings[name] = (time.perf_counter() - began) / repeats
    return timings
