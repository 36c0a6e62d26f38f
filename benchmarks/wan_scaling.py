"""Clip-parallel Wan against ComfyUI's own long-video options, with a tiny random Wan on CPU, in one run.

Per-frame cost on one worker, at 4x and 16x the native clip (Wan: 81 video frames = 21 latent frames):
- Video-Infinity: frame-block dual-scope attention (P 10, G 16 latent frames), every frame evaluated once;
- core "WAN Context Windows (Manual)" at its defaults (length 81, overlap 30 video frames, i.e. 21 and 8
  latent frames, pyramid fuse), the same model and sampler;
- full attention over the whole video (core KSampler, no windows).
Then, with frames and workers doubled together, each worker's peak memory and the bytes it exchanges per
step (both should stay flat), and the bytes per step of one interior rank as the video grows. Last, two
workers with the attention computing its own frames while the halo and global frames travel, against the
same job waiting for them first (`--overlap-rounds 0` leaves this out).

    python -m benchmarks.wan_scaling
    python -m benchmarks.wan_scaling --lengths 4 16 --steps 2 --size 8
"""

from __future__ import annotations

import argparse
import os
import resource
import tempfile
import time
from typing import Any

import torch

from distributed.engine.comm import Communicator
from distributed.engine.context import TemporalContext
from distributed.engine.contract import RunControl, RunStats
from distributed.engine.latent_job import ComfySampling
from distributed.engine.layout import FrameLayout
from distributed.models.wan.comfy_runtime import COMFY_ROOT_ENV, import_comfy
from distributed.models.wan.family import DEFAULT_ATTENTION
from distributed.models.wan.patch import install_dual_scope
from distributed.models.wan.sampling import sample_clip
from support.comfy_tree import comfy_tree
from support.local_ranks import run_on_local_ranks
from support.tiny_wan import core_sample, load_tiny_wan, random_conditioning

from .common import human_bytes, markdown_table

NATIVE_LATENT_FRAMES = 21  # Wan's 81 video frames
CONTEXT_LENGTH, CONTEXT_OVERLAP = 21, 8  # core WAN Context Windows defaults (81 / 30 video frames), in latent frames


def one_worker_costs(comm: Communicator, weights: str, frames: int, size: int, steps: int) -> dict[str, float]:
    """Seconds per latent frame and step of each method on this one process."""
    comfy = import_comfy(on_cpu=True)
    plain = load_tiny_wan(comfy, weights)
    spec = ComfySampling("euler", "simple", steps=steps, cfg=4.0, seed=1)
    latent = torch.zeros(1, 16, frames, size, size)
    costs = {}

    began = time.perf_counter()
    ctx = TemporalContext(comm)
    ours = install_dual_scope(plain, ctx)
    ctx.begin_job(FrameLayout(frames, 1), DEFAULT_ATTENTION)
    sample_clip(
        comfy,
        ours,
        ctx,
        latent,
        random_conditioning(1),
        random_conditioning(2),
        spec,
        RunControl.create(None, None, RunStats()),
    )
    ctx.end_job()
    costs["Video-Infinity (P 10, G 16)"] = time.perf_counter() - began

    windowed = plain.clone()
    windows = comfy.context_windows
    windowed.model_options["context_handler"] = windows.IndexListContextHandler(
        context_schedule=windows.get_matching_context_schedule(windows.ContextSchedules.STATIC_STANDARD),
        fuse_method=windows.get_matching_fuse_method(windows.ContextFuseMethods.PYRAMID),
        context_length=CONTEXT_LENGTH, context_overlap=CONTEXT_OVERLAP, context_stride=1, closed_loop=False, dim=2,
    )  # fmt: skip
    windows.create_prepare_sampling_wrapper(windowed)
    began = time.perf_counter()
    core_sample(comfy, windowed, latent, spec)
    costs["core WAN Context Windows (81 / 30)"] = time.perf_counter() - began

    began = time.perf_counter()
    core_sample(comfy, plain, latent, spec)
    costs["full attention (core KSampler)"] = time.perf_counter() - began
    return {name: seconds / (frames * steps) for name, seconds in costs.items()}


def per_worker(
    comm: Communicator, weights: str, frames: int, size: int, steps: int, overlap: bool = True, runs: int = 1
) -> dict[str, Any]:
    """Peak memory of this rank's process, its exchange per step and its fastest run's seconds per step,
    for one clip-parallel job run `runs` times (overlap: see install_dual_scope)."""
    comfy = import_comfy(on_cpu=True)
    ctx = TemporalContext(comm)
    model = install_dual_scope(load_tiny_wan(comfy, weights), ctx, overlap)
    spec = ComfySampling("euler", "simple", steps=steps, cfg=4.0, seed=1)
    latent = torch.zeros(1, 16, frames, size, size)
    fastest = float("inf")
    for _ in range(runs):
        ctx.begin_job(FrameLayout(frames, comm.world_size), DEFAULT_ATTENTION)
        stats = RunStats()
        began = time.perf_counter()
        sample_clip(
            comfy,
            model,
            ctx,
            latent,
            random_conditioning(1),
            random_conditioning(2),
            spec,
            RunControl.create(None, None, stats),
        )
        fastest = min(fastest, (time.perf_counter() - began) / steps)
        ctx.end_job()
    return {
        "peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "bytes_received_per_step": max(stats.bytes_received_per_step),
        "seconds_per_step": fastest,
    }


def overlap_rows(weights: str, frames: int, size: int, steps: int, rounds: int) -> list[list[str]]:
    """Two workers, the attention overlapped with its exchange against waiting for it, alternated `rounds`
    times (each a fresh pair of processes, best of 2 runs): the slower worker's seconds per step."""
    seconds: dict[bool, list[float]] = {True: [], False: []}
    for _ in range(rounds):
        for overlap in (True, False):
            kwargs = {"weights": weights, "frames": frames, "size": size, "steps": steps, "overlap": overlap, "runs": 2}
            ranks = run_on_local_ranks(2, per_worker, kwargs, timeout=3600)
            seconds[overlap].append(max(rank["seconds_per_step"] for rank in ranks))
    best = {overlap: min(values) for overlap, values in seconds.items()}
    return [
        [name, f"{best[overlap]:.3f}", ", ".join(f"{value:.3f}" for value in seconds[overlap])]
        for name, overlap in (("overlapped", True), ("waiting for the exchange", False))
    ] + [["overlapped / waiting", f"{best[True] / best[False]:.2f}", ""]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=[4, 16], help="multiples of the native clip")
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--size", type=int, default=8, help="latent height and width (8: 64x64 video)")
    parser.add_argument(
        "--overlap-rounds", type=int, default=2, help="rounds of the overlapped-against-waiting comparison (0: skip)"
    )
    args = parser.parse_args()
    os.environ.setdefault(COMFY_ROOT_ENV, str(comfy_tree()))
    with tempfile.TemporaryDirectory() as folder:
        from tests.wan_targets import save_tiny_wan_target

        weights = run_on_local_ranks(1, save_tiny_wan_target, {"path": f"{folder}/tiny.safetensors"})[0]
        rows = []
        for multiple in args.lengths:
            frames = multiple * NATIVE_LATENT_FRAMES
            kwargs = {"weights": weights, "frames": frames, "size": args.size, "steps": args.steps}
            costs = run_on_local_ranks(1, one_worker_costs, kwargs, timeout=3600)[0]
            ours = costs["Video-Infinity (P 10, G 16)"]
            for name, cost in costs.items():
                rows.append([f"{multiple}x ({frames} latent frames)", name, f"{cost * 1e3:.2f}", f"{cost / ours:.2f}"])
        print(
            f"One worker, tiny Wan at {args.size * 8}x{args.size * 8}, {args.steps} euler steps, cfg 4 (two model calls)"
        )
        print(markdown_table(["video", "method", "ms per latent frame-step", "against Video-Infinity"], rows))

        rows = []
        for workers in (1, 2, 4):
            frames = NATIVE_LATENT_FRAMES * workers
            kwargs = {"weights": weights, "frames": frames, "size": args.size, "steps": args.steps}
            ranks = run_on_local_ranks(workers, per_worker, kwargs, timeout=3600)
            peak = max(rank["peak_rss"] for rank in ranks)
            traffic = max(rank["bytes_received_per_step"] for rank in ranks)
            rows.append([str(workers), str(frames), human_bytes(peak), human_bytes(traffic)])
        print("\nFrames and workers doubled together (each worker: 21 latent frames)")
        print(
            markdown_table(
                ["workers", "latent frames", "peak memory per worker (RSS)", "received per step, most"], rows
            )
        )

        rows = []
        for multiple in (1, 2, 4):
            frames = NATIVE_LATENT_FRAMES * multiple * 3
            kwargs = {"weights": weights, "frames": frames, "size": args.size, "steps": args.steps}
            ranks = run_on_local_ranks(3, per_worker, kwargs, timeout=3600)
            rows.append([str(frames), human_bytes(ranks[1]["bytes_received_per_step"])])
        print("\nThree workers, the video growing: what the middle worker receives per step")
        print(markdown_table(["latent frames", "received per step (rank 1)"], rows))

        if args.overlap_rounds:
            frames = 2 * NATIVE_LATENT_FRAMES
            rows = overlap_rows(weights, frames, args.size, args.steps, args.overlap_rounds)
            print(f"\nTwo workers, {frames} latent frames: the attention while its exchange travels, or after it")
            print(markdown_table(["attention", "seconds per step, best", "each round"], rows))


if __name__ == "__main__":
    main()
