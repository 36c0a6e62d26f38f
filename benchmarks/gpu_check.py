"""The GPU check: what a first run on a CUDA machine must find out, in one command, as a report.

Each section runs on its own and records its numbers or its error, so one failure never costs the rest
of a scarce GPU session:
- correctness: the tiny random model on one rank, CUDA fp32 against the same job on the CPU, then fp16
  and bf16 (finite, and their difference to fp32), and the banded attention's masked rows (-inf bias)
  in half precision, the usual source of NaNs;
- videocrafter2: the real VideoCrafter2 configuration with random weights at 320x512 in fp16, one rank,
  at several lengths: seconds per denoising step, peak GPU memory, achieved TFLOP/s against the FLOP
  count of benchmarks/physical_limit.py, and the share of time in temporal attention (torch profiler);
- pool: a worker pool on cuda:0 runs a job, cancels one, survives a killed worker, frees memory on unload;
- nccl: two NCCL ranks, which need two GPUs (one GPU cannot host both: said, not faked with gloo);
- wan: the real Wan 2.1 1.3B configuration with random weights at 480p, one rank (ComfyUI's model class);
- ltxv: the real LTX-Video 2B configuration with random weights at 768x512, 121 frames, one rank;
- wan_fp8: a tiny Wan with a LoRA in both fp8 forms (a scaled-fp8 file; weights UNETLoader casts to fp8 with
  weight_dtype fp8_e4m3fn_fast) through the export to the workers, against core KSampler (on GPUs that
  multiply in fp8, both sides must do so alike).
With --cpu (or no CUDA) the CUDA rows say "not available" and the CPU half of the correctness section runs.

    bash scripts/gpu_check.sh OUT_DIR [--cpu]        (writes OUT_DIR/gpu_check.md and gpu_check.json)
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import signal
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
import torch

from distributed.engine.banded import (
    BandSpec,
    attention_with_lse_unfused,
    band_plan,
    banded_attention,
    banded_attention_in_parts,
    part_plans,
)
from distributed.engine.comm import Communicator
from distributed.engine.job import JobSpec, ModelSpec
from distributed.engine.runner import Engine
from support.comfy_tree import comfy_tree

NOT_AVAILABLE = "not available"
Section = Callable[[argparse.Namespace, Path], dict[str, Any]]


def tiny_model(folder: Path) -> Path:
    from support.tiny_models import build_tiny_pipeline

    return build_tiny_pipeline(folder / "tiny", words=["red", "ball"])


def tiny_job(model: Path, dtype: str = "fp32", **changes: Any) -> JobSpec:
    options = dict(height=32, width=32, steps=3, cfg=7.0, sampler="ddim", seed=0)
    options.update(changes)
    attention = {"local_window": 2, "global_frames": 2}
    return JobSpec.build(ModelSpec(str(model), dtype=dtype), "a red ball", 8, attention=attention, **options)


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).abs().max() / b.float().abs().max().clamp_min(1e-12))


def correctness(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    model = tiny_model(work)

    def latents(device: str, dtype: str) -> torch.Tensor:
        result = Engine(Communicator.single(device)).run(tiny_job(model, dtype))
        assert result.latents is not None
        return result.latents

    reference = latents("cpu", "fp32")
    rows: dict[str, Any] = {}
    device = args.device
    if device == "cpu":
        rows["cuda fp32 vs cpu fp32"] = NOT_AVAILABLE
        for dtype in ("fp16", "bf16"):
            rows[f"cuda {dtype}"] = NOT_AVAILABLE
        half = latents("cpu", "bf16")  # what the CPU can say about half precision
        rows["cpu bf16"] = {"finite": bool(torch.isfinite(half).all()), "relative_to_fp32": relative(half, reference)}
    else:
        on_device = latents(device, "fp32")
        rows["cuda fp32 vs cpu fp32"] = {"relative": relative(on_device, reference)}
        for dtype in ("fp16", "bf16"):
            half = latents(device, dtype)
            rows[f"cuda {dtype}"] = {
                "finite": bool(torch.isfinite(half).all()),
                "relative_to_fp32": relative(half, on_device),
            }
    rows["compute time of a job (what frame_shares auto balances)"] = compute_time(model, device)
    rows["masked rows in half precision"] = masked_rows(device)
    rows["attention in parts vs one pass"] = attention_in_parts(device)
    rows["fused attention with its normaliser"] = fused_lse_kernels(device)
    rows["wan attention in parts vs one pass"] = wan_attention_in_parts(device)
    return rows


def compute_time(model: Path, device: str) -> dict[str, Any]:
    """The engine's compute seconds of a one-rank job (CUDA: stream time from events) against its wall time,
    and the frames of it that the device's free memory would hold (the admission estimate, bisected)."""
    began = time.perf_counter()
    stats = Engine(Communicator.single(device)).run(tiny_job(model)).stats
    wall = time.perf_counter() - began
    seconds = stats.compute_seconds
    return {
        "compute_seconds": list(seconds),
        "wall_seconds": wall,
        "within_wall": len(seconds) == 1 and 0 < seconds[0] <= wall,
        "frame_capacity": list(stats.frame_capacity),  # the job's 8 frames all fit: [8]
    }


def masked_rows(device: str) -> dict[str, Any]:
    """Banded attention with masked ends (-inf bias columns) in fp16 and bf16 on `device`: finite?"""
    found = {}
    for dtype in (torch.float16, torch.bfloat16):
        generator = torch.Generator().manual_seed(0)
        q, k, v = (torch.randn(4, 2, 6 + (4 if i else 0), 8, generator=generator) for i in range(3))
        plan = band_plan(BandSpec(6, 0, 6, width=2, globals_count=0, global_bonus=10.0), torch.device(device), dtype)
        out = banded_attention(q.to(device, dtype), k.to(device, dtype), v.to(device, dtype), plan, 8**-0.5)
        found[str(dtype).removeprefix("torch.")] = bool(torch.isfinite(out).all())
    return found


def attention_in_parts(device: str) -> dict[str, Any]:
    """The banded attention of an interior rank (halos, globals, phase bias) in its parts, as several ranks
    run it while the exchange travels, against the one pass, on `device` in each dtype: finite, and the
    largest difference relative to the one pass's largest value. On a GPU this is the path without a fused
    kernel that returns the normaliser."""
    width, count, frames = 4, 6, 21
    spec = BandSpec(frames, 30, 90, width, count, local_bonus=0.0, global_bonus=3.0)
    generator = torch.Generator().manual_seed(1)
    q = torch.randn(6, 2, frames, 8, generator=generator)
    k, v = (torch.randn(6, 2, frames + 2 * width + count, 8, generator=generator) for _ in range(2))
    found = {}
    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        place = (torch.device(device), dtype)
        qd, kd, vd = (x.to(*place) for x in (q, k, v))
        whole = banded_attention(qd, kd, vd, band_plan(spec, *place), 8**-0.5)
        own = slice(width, width + frames)
        rest = tuple(torch.cat([x[:, :, :width], x[:, :, width + frames :]], dim=2) for x in (kd, vd))
        parts = banded_attention_in_parts(
            qd, kd[:, :, own], vd[:, :, own], lambda r=rest: r, part_plans(spec, *place), 8**-0.5
        )
        found[str(dtype).removeprefix("torch.")] = {
            "finite": bool(torch.isfinite(parts).all()),
            "relative": relative(parts.float(), whole.float()),
        }
    return found


def wan_attention_in_parts(device: str) -> dict[str, Any]:
    """Wan's frame-window attention of an interior rank (halos of P on both sides, global frames, a phase
    bonus) in its parts, as several workers run it while the exchange travels, against the one pass, on
    `device` in each dtype: finite, and the largest difference relative to the one pass's largest value."""
    from distributed.models.wan.attention import frame_window_attention, frame_window_attention_in_parts

    window, frames, halo, globals_count, tokens = 3, 7, 3, 4, 20
    generator = torch.Generator().manual_seed(3)
    q = torch.randn(1, 4, frames, tokens, 16, generator=generator)
    k, v = (torch.randn(1, 4, frames + 2 * halo, tokens, 16, generator=generator) for _ in range(2))
    k_glb, v_glb = (torch.randn(1, 4, globals_count, tokens, 16, generator=generator) for _ in range(2))
    found = {}
    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        qd, kd, vd, kg, vg = (x.to(device, dtype) for x in (q, k, v, k_glb, v_glb))
        whole = frame_window_attention(qd, kd, vd, kg, vg, halo, window, global_bonus=2.0, start=9)
        own = slice(halo, halo + frames)
        edges = ((kd[:, :, :halo], vd[:, :, :halo]), (kd[:, :, halo + frames :], vd[:, :, halo + frames :]), (kg, vg))
        parts = frame_window_attention_in_parts(
            qd, (kd[:, :, own], vd[:, :, own]), lambda e=edges: e, window, global_bonus=2.0, start=9
        )
        found[str(dtype).removeprefix("torch.")] = {
            "finite": bool(torch.isfinite(parts).all()),
            "relative": relative(parts.float(), whole.float()),
        }
    return found


def fused_lse_kernels(device: str) -> dict[str, Any]:
    """Torch's fused attention kernels that return each row's log normaliser, on `device` in each dtype,
    against the plain computation: the largest relative output difference, the largest normaliser
    difference, and the normaliser's shape as returned (a kernel may pad the rows). A kernel that matches
    can let the Wan attention and the UNet's parts run fused here (engine.banded.fused_lse_available); on
    CPU, the kernel the engine uses."""
    batch, heads, rows, keys, dim = 2, 4, 100, 70, 64
    generator = torch.Generator().manual_seed(2)
    q, k, v = (torch.randn(batch, heads, n, dim, generator=generator) for n in (rows, keys, keys))
    bias = torch.zeros(rows, keys)
    bias[:, :10] = float("-inf")  # masked keys, as at a video's end
    bias[:, 40:] = 3.0  # a bonus, as the phase bias gives
    scale = dim**-0.5
    ops = torch.ops.aten
    if torch.device(device).type == "cpu":
        kernels = {"flash (cpu)": lambda q, k, v, b: ops._scaled_dot_product_flash_attention_for_cpu(
            q, k, v, 0.0, False, attn_mask=b, scale=scale)[:2]}  # fmt: skip
    else:
        kernels = {
            "efficient": lambda q, k, v, b: ops._scaled_dot_product_efficient_attention(
                q, k, v, b.expand(q.shape[0], q.shape[1], -1, -1), True, 0.0, False, scale=scale)[:2],
            "flash (no bias)": lambda q, k, v, b: ops._scaled_dot_product_flash_attention(
                q, k, v, 0.0, False, False, scale=scale)[:2],
        }  # fmt: skip
    found: dict[str, Any] = {}
    for name, kernel in kernels.items():
        for dtype in (torch.float32, torch.float16, torch.bfloat16):
            qd, kd, vd, bd = (x.to(device, dtype) for x in (q, k, v, bias))
            if name.startswith("flash (no"):
                bd = torch.zeros_like(bd)
            plain_out, plain_lse = attention_with_lse_unfused(qd.float(), kd.float(), vd.float(), bd.float(), scale)
            key = f"{name} {str(dtype).removeprefix('torch.')}"
            try:
                out, lse = kernel(qd, kd, vd, bd)
            except Exception as error:  # noqa: BLE001 - a kernel missing on this device or dtype is a finding
                found[key] = f"{type(error).__name__}: {str(error).splitlines()[0][:200]}"
                continue
            found[key] = {
                "relative": relative(out.float(), plain_out),
                "lse_shape": list(lse.shape),
                "lse_max_difference": float((lse[..., :rows].float() - plain_lse).abs().max()),
            }
    return found


def videocrafter2(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    from distributed.engine.context import TemporalContext
    from distributed.engine.layout import FrameLayout
    from distributed.engine.settings import DualScopeSettings
    from distributed.models.unet3d.attention import PROFILE_LABEL
    from distributed.models.unet3d.model import UNet3DVideoCrafterConditionModel, run_unet3d
    from distributed.models.unet3d.patch import patch_unet

    from .physical_limit import TEXT, count_flops, videocrafter2_unet

    device = torch.device(args.device)
    with torch.device(device):
        unet = UNet3DVideoCrafterConditionModel(fps_cond=True).to(torch.float16).eval()
    ctx = TemporalContext(Communicator.single(device))
    patch_unet(unet, ctx)
    meta_unet = videocrafter2_unet()
    rows = {}
    for frames in args.frames:
        ctx.begin_job(FrameLayout(frames, 1), DualScopeSettings())
        ctx.timestep = 500.0
        sample = torch.randn(2, 4, frames, 40, 64, device=device, dtype=torch.float16)
        text = torch.randn(2, frames, *TEXT, device=device, dtype=torch.float16)
        torch.cuda.reset_peak_memory_stats(device)
        with torch.inference_mode():
            run_unet3d(unet, sample, 500.0, text, fps=24)  # warm-up
            torch.cuda.synchronize(device)
            began = time.perf_counter()
            for _ in range(args.repeats):
                run_unet3d(unet, sample, 500.0, text, fps=24)
            torch.cuda.synchronize(device)
            seconds = (time.perf_counter() - began) / args.repeats
            activities = [torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]
            with torch.profiler.profile(activities=activities) as profile:
                run_unet3d(unet, sample, 500.0, text, fps=24)
                torch.cuda.synchronize(device)
        ctx.end_job()
        events = profile.key_averages()
        total = sum(e.self_device_time_total for e in events)
        attention = sum(e.device_time_total for e in events if e.key == PROFILE_LABEL)
        flops = count_flops(meta_unet, frames, 40, 64).total
        rows[f"{frames} frames"] = {
            "seconds_per_step": seconds,  # one CFG-batched UNet call is one denoising step
            "peak_memory_gb": torch.cuda.max_memory_allocated(device) / 1e9,
            "tflops": flops / seconds / 1e12,
            "fraction_of_peak": flops / seconds / (args.peak_tflops * 1e12),
            "temporal_attention_share": attention / total if total else None,
        }
    return rows


def pool(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    import numpy as np

    from distributed.engine.errors import JobCancelled
    from distributed.pool import PoolConfig, WorkerError, WorkerPool

    model = tiny_model(work)
    free_before = torch.cuda.mem_get_info(0)[0]
    rows: dict[str, Any] = {}
    with WorkerPool(PoolConfig(devices="cuda:0")) as workers:
        frames = workers.run(tiny_job(model), timeout=600)
        rows["job"] = {"frames": list(frames.shape), "mean": float(np.mean(frames))}
        handle = workers.submit(tiny_job(model, steps=500))
        while not any(e.phase == "denoising" for e in handle.poll_events()):
            time.sleep(0.05)
        asked = time.monotonic()
        handle.cancel()
        try:
            handle.result(120)
            rows["cancel"] = "the job finished instead of stopping"
        except JobCancelled:
            rows["cancel"] = {"seconds_to_stop": time.monotonic() - asked}
        handle = workers.submit(tiny_job(model, steps=500))
        while not any(e.phase == "denoising" for e in handle.poll_events()):
            time.sleep(0.05)
        os.kill(workers.worker_pids()[0], signal.SIGKILL)
        try:
            handle.result(120)
            rows["killed worker"] = "the job finished although its worker was killed"
        except WorkerError as error:
            rows["killed worker"] = {"error": str(error), "rank": error.rank}
        frames = workers.run(tiny_job(model, seed=1), timeout=600)  # a fresh pool runs the next job
        rows["job after the fault"] = {"frames": list(frames.shape)}
    time.sleep(2)
    rows["memory freed after unload (GB still held)"] = max(0.0, (free_before - torch.cuda.mem_get_info(0)[0]) / 1e9)
    return rows


def nccl(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if count < 2:
        return {
            "result": f"not run: {count} GPU(s) here; NCCL refuses two ranks on one GPU, so a two-rank NCCL check "
            "needs two GPUs (gloo is not a stand-in for it)"
        }
    from distributed.pool import PoolConfig, WorkerPool

    model = tiny_model(work)
    with WorkerPool(PoolConfig(devices="cuda:0,1")) as workers:
        two = workers.run(tiny_job(model), timeout=600)
    with WorkerPool(PoolConfig(devices="cuda:0")) as workers:
        one = workers.run(tiny_job(model), timeout=600)
    return {"frames_differ_from_one_rank": int((two != one).sum()), "frames": list(two.shape)}


def wan(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """Wan 2.1 1.3B at 480p (81 frames = 21 latent frames), random weights, one rank, ComfyUI's classes."""
    from distributed.engine.context import TemporalContext
    from distributed.engine.contract import RunControl, RunStats
    from distributed.engine.latent_job import ComfySampling
    from distributed.engine.layout import FrameLayout
    from distributed.models.wan.comfy_runtime import COMFY_ROOT_ENV, import_comfy
    from distributed.models.wan.family import DEFAULT_ATTENTION
    from distributed.models.wan.patch import install_dual_scope
    from distributed.models.wan.sampling import sample_clip

    os.environ.setdefault(COMFY_ROOT_ENV, str(comfy_tree()))
    comfy = import_comfy(on_cpu=False)
    config = {"dim": 1536, "ffn_dim": 8960, "num_heads": 12, "num_layers": 30, "in_dim": 16, "out_dim": 16}
    with torch.device("meta"):
        shapes = comfy.ldm.wan.model.WanModel(text_dim=4096, operations=comfy.ops.disable_weight_init, **config)
    # What stays in host memory after this is the loaded model's own copy, until ComfyUI moves it.
    patcher, weights_gb = _random_bf16_model(comfy, shapes)
    host_after_load = psutil.Process().memory_info().rss / 1e9
    ctx = TemporalContext(Communicator.single(args.device))
    model = install_dual_scope(patcher, ctx)
    latent = torch.zeros(1, 16, 21, 60, 104)
    text = [[torch.randn(1, 512, 4096), {}]]
    steps = 2
    ctx.begin_job(FrameLayout(21, 1), DEFAULT_ATTENTION)
    # What the engine admits a Wan job by (WanFamily.peak_bytes): ComfyUI's estimate on the frames the rank
    # holds, here the whole video.
    admission = patcher.model.memory_required(list(latent.shape))
    torch.cuda.reset_peak_memory_stats()
    began = time.perf_counter()
    spec = ComfySampling("euler", "simple", steps=steps, cfg=5.0, seed=0)
    sample_clip(comfy, model, ctx, latent, text, text, spec, RunControl.create(None, None, RunStats()))
    torch.cuda.synchronize()
    seconds = (time.perf_counter() - began) / steps
    host_after_sampling = psutil.Process().memory_info().rss / 1e9
    early_move = _move_at_load(comfy, patcher, model, ctx, latent, text)
    ctx.end_job()
    from .wan_limit import CONFIGS, flops_per_frame_step, tokens_per_frame

    window = 2 * DEFAULT_ATTENTION.local_window + 1 + DEFAULT_ATTENTION.global_frames
    flops = flops_per_frame_step(CONFIGS[0], tokens_per_frame(832, 480), min(window, 21)) * 21
    return {
        "seconds_per_step (first steps included)": seconds,
        "peak_memory_gb": torch.cuda.max_memory_allocated() / 1e9,
        "admission_estimate_gb (beyond the weights)": admission / 1e9,
        "weights_gb": weights_gb,
        # A worker holds the weights in host memory from its load until ComfyUI moves them at the first step.
        "host_rss_gb after load": host_after_load,
        "host_rss_gb after sampling": host_after_sampling,
        **early_move,
        "fraction_of_peak": flops / seconds / (args.peak_tflops * 1e12),
    }


def _random_bf16_model(comfy: Any, shapes: torch.nn.Module) -> tuple[Any, float]:
    """ComfyUI's ModelPatcher of random bf16 weights in the layout of `shapes` (a model built on the meta device),
    and the weights' size in GB; the drawn state dict is released on return."""
    weights = {name: torch.randn(t.shape, dtype=torch.bfloat16) * 0.02 for name, t in shapes.state_dict().items()}
    patcher = comfy.sd.load_diffusion_model_state_dict(weights, model_options={"dtype": torch.bfloat16})
    return patcher, sum(t.numel() * t.element_size() for t in weights.values()) / 1e9


def _move_at_load(comfy: Any, patcher: Any, model: Any, ctx: Any, latent: torch.Tensor, text: list) -> dict[str, Any]:
    """Whether a worker could hand the weights to its GPU right after the load (ComfyUI's load_models_gpu) and
    free their host copy before the first step, and whether sampling then runs as before: the weights are
    sent back to the host first, as after a load, then moved early and sampled for one step."""
    from distributed.engine.contract import RunControl, RunStats
    from distributed.engine.latent_job import ComfySampling
    from distributed.models.wan.sampling import sample_clip

    rows: dict[str, Any] = {}
    try:
        comfy.model_management.unload_all_models()
        rows["early move: host_rss_gb with the weights back on the host"] = psutil.Process().memory_info().rss / 1e9
        comfy.model_management.load_models_gpu([patcher])
        rows["early move: host_rss_gb after load_models_gpu"] = psutil.Process().memory_info().rss / 1e9
        spec = ComfySampling("euler", "simple", steps=1, cfg=5.0, seed=0)
        out = sample_clip(comfy, model, ctx, latent, text, text, spec, RunControl.create(None, None, RunStats()))
        rows["early move: one step after it"] = "finite" if bool(torch.isfinite(out).all()) else "NOT finite"
    except Exception as error:  # noqa: BLE001 - recorded; the rest of the row stands
        rows["early move: error"] = f"{type(error).__name__}: {error}"
    return rows


# LTX-Video 0.9 2B: 28 blocks of 32 heads of 64, text from T5-XXL (4096 wide).
LTXV_2B = {"num_layers": 28, "attention_head_dim": 64, "num_attention_heads": 32, "cross_attention_dim": 2048}


def ltxv(args: argparse.Namespace, work: Path, config: dict[str, int] | None = None) -> dict[str, Any]:
    """LTX-Video 2B at 768x512 (121 frames = 16 latent frames of 24x16 tokens), random bf16 weights, one rank,
    ComfyUI's classes, the model's default attention settings: seconds per step, peak memory, finite output.
    `config` replaces the model's size (a CPU run of this code with a small one)."""
    from distributed.engine.context import TemporalContext
    from distributed.engine.contract import RunControl, RunStats
    from distributed.engine.latent_job import ComfySampling
    from distributed.engine.layout import FrameLayout
    from distributed.models.wan.architectures import LTXV
    from distributed.models.wan.comfy_runtime import COMFY_ROOT_ENV, import_comfy
    from distributed.models.wan.patch import install_dual_scope
    from distributed.models.wan.sampling import sample_clip

    os.environ.setdefault(COMFY_ROOT_ENV, str(comfy_tree()))
    cuda = args.device.startswith("cuda")
    comfy = import_comfy(on_cpu=not cuda)
    with torch.device("meta"):
        shapes = comfy.ldm.lightricks.model.LTXVModel(operations=comfy.ops.disable_weight_init, **(config or LTXV_2B))
    patcher, weights_gb = _random_bf16_model(comfy, shapes)
    ctx = TemporalContext(Communicator.single(args.device))
    model = install_dual_scope(patcher, ctx)
    frames, height, width = (16, 16, 24) if config is None else (5, 2, 2)
    latent = torch.zeros(1, 128, frames, height, width)
    mask = torch.ones(1, 128, dtype=torch.int64)
    text = [[torch.randn(1, 128, 4096), {"attention_mask": mask, "frame_rate": 24.0}]]
    steps = 2
    ctx.begin_job(FrameLayout(frames, 1), LTXV.default_attention)
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    began = time.perf_counter()
    spec = ComfySampling("euler", "simple", steps=steps, cfg=3.0, seed=0)
    out = sample_clip(comfy, model, ctx, latent, text, text, spec, RunControl.create(None, None, RunStats()))
    if cuda:
        torch.cuda.synchronize()
    seconds = (time.perf_counter() - began) / steps
    ctx.end_job()
    return {
        "seconds_per_step (first steps included)": seconds,
        "peak_memory_gb": torch.cuda.max_memory_allocated() / 1e9 if cuda else NOT_AVAILABLE,
        "weights_gb": weights_gb,
        "output": "finite" if bool(torch.isfinite(out).all()) else "NOT finite",
    }


def wan_fp8(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """A tiny Wan with a LoRA in both fp8 forms, loaded as UNETLoader loads them (a scaled-fp8 file with
    weight_dtype default; a plain file with weight_dtype fp8_e4m3fn_fast), through the export to the workers'
    loader, against core KSampler on the same MODEL: where the GPU multiplies in fp8, both sides must."""
    from distributed.engine.context import TemporalContext
    from distributed.engine.contract import RunControl, RunStats
    from distributed.engine.latent_job import ComfySampling
    from distributed.engine.layout import FrameLayout
    from distributed.engine.settings import DualScopeSettings
    from distributed.models.wan.comfy_runtime import COMFY_ROOT_ENV, import_comfy
    from distributed.models.wan.patch import install_dual_scope
    from distributed.models.wan.sampling import sample_clip
    from support.tiny_wan import (
        core_sample,
        loaded_as_a_worker,
        loaded_with_lora,
        random_conditioning,
        save_tiny_wan,
        scaled_fp8_with_lora,
    )

    os.environ.setdefault(COMFY_ROOT_ENV, str(comfy_tree()))
    device = torch.device(args.device)
    comfy = import_comfy(on_cpu=device.type == "cpu")
    models = {
        "scaled fp8 file": scaled_fp8_with_lora(comfy, work)[1],
        "weight_dtype fp8_e4m3fn_fast": loaded_with_lora(
            comfy,
            save_tiny_wan(work / "t2v.safetensors"),
            {"dtype": torch.float8_e4m3fn, "fp8_optimizations": True},  # as UNETLoader passes it
            work,
        )[1],
    }
    latent = torch.zeros(1, 16, 5, 8, 8)
    sampling = ComfySampling("euler", "simple", steps=2, cfg=4.0, seed=11)
    window = DualScopeSettings(local_window=5, global_frames=0, phase_bias=False)
    found: dict[str, Any] = {
        "fp8 multiplication on this device": bool(comfy.model_management.supports_fp8_compute(device))
    }
    for label, core_model in models.items():
        ctx = TemporalContext(Communicator.single(device))
        ours = install_dual_scope(loaded_as_a_worker(core_model, work / "exports", device), ctx)
        with torch.inference_mode(), ctx.job(FrameLayout(5, 1), window):  # as ComfyUI runs its nodes
            core = core_sample(comfy, core_model, latent, sampling)
            clip = sample_clip(
                comfy, ours, ctx, latent, random_conditioning(1), random_conditioning(2), sampling,
                RunControl.create(None, None, RunStats()),
            )  # fmt: skip
        found[f"{label}: weights held as"] = str(ours.model.diffusion_model.blocks[0].self_attn.q.weight.dtype)
        found[f"{label}: relative difference to core KSampler (one worker, full window)"] = relative(
            clip.cpu(), core.cpu()
        )
    return found


SECTIONS: dict[str, tuple[Section, bool]] = {  # name: (function, needs CUDA)
    "correctness": (correctness, False),
    "videocrafter2": (videocrafter2, True),
    "pool": (pool, True),
    "nccl": (nccl, False),
    "wan": (wan, True),
    "ltxv": (ltxv, True),
    "wan_fp8": (wan_fp8, False),
}


def run(args: argparse.Namespace) -> dict[str, Any]:
    cuda = torch.cuda.is_available() and not args.cpu
    args.device = "cuda:0" if cuda else "cpu"
    report: dict[str, Any] = {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "device": torch.cuda.get_device_name(0) if cuda else "cpu (CUDA rows not available)",
        "torch": torch.__version__,
        "cuda": torch.version.cuda if cuda else None,
        "sections": {},
    }
    for name, (section, needs_cuda) in SECTIONS.items():
        if needs_cuda and not cuda:
            report["sections"][name] = {"result": NOT_AVAILABLE}
            continue
        began = time.monotonic()
        with tempfile.TemporaryDirectory() as work:
            try:
                result = section(args, Path(work))
            except Exception as error:  # noqa: BLE001 - one failing section must not cost the others
                result = {"error": f"{type(error).__name__}: {error}", "traceback": traceback.format_exc()[-3000:]}
        result["seconds"] = round(time.monotonic() - began, 1)
        report["sections"][name] = result
        print(f"[gpu check] {name}: {json.dumps(result, default=str)[:400]}", flush=True)
    return report


def markdown(report: dict[str, Any]) -> str:
    lines = [
        f"# GPU check, {report['date']}",
        "",
        f"- device: {report['device']}",
        f"- torch {report['torch']}, CUDA {report['cuda']}",
        "",
    ]
    for name, result in report["sections"].items():
        lines += [f"## {name}", "", "| what | value |", "|---|---|"]
        for key, value in result.items():
            if key != "traceback":
                lines.append(f"| {key} | {json.dumps(value, default=str) if not isinstance(value, str) else value} |")
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for gpu_check.md and gpu_check.json")
    parser.add_argument("--cpu", action="store_true", help="no CUDA: run what the CPU can, mark the rest")
    parser.add_argument("--frames", type=int, nargs="+", default=[16, 64, 128], help="VideoCrafter2 lengths")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--peak-tflops", type=float, default=989.0, help="dense fp16/bf16 peak (H100/H200: 989)")
    args = parser.parse_args()
    torch.set_num_threads(max(1, min(4, os.cpu_count() or 1)))
    report = run(args)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "gpu_check.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    (args.out / "gpu_check.md").write_text(markdown(report) + "\n")
    print(f"[gpu check] wrote {args.out / 'gpu_check.md'}")


if __name__ == "__main__":
    main()
