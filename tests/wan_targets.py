"""Functions run in real rank processes for the Wan family tests: ComfyUI is imported there, never in pytest."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from distributed.engine.comm import Communicator
from distributed.engine.context import TemporalContext
from distributed.engine.contract import CancelFn, PreviewFn, RunControl, RunStats
from distributed.engine.errors import JobCancelled
from distributed.engine.latent_job import ComfySampling
from distributed.engine.layout import FrameLayout
from distributed.engine.settings import DualScopeSettings
from distributed.models.wan.comfy_runtime import import_comfy
from distributed.models.wan.patch import install_dual_scope
from distributed.models.wan.sampling import sample_clip
from support.tiny_wan import core_sample, load_tiny_wan, random_conditioning


def save_tiny_wan_target(comm: Communicator, path: str, seed: int = 0, image_to_video: bool = False) -> str:
    import_comfy(on_cpu=True)
    from support.tiny_wan import save_tiny_wan

    return str(save_tiny_wan(Path(path), seed, image_to_video))


def save_tiny_ltxv_target(comm: Communicator, path: str, seed: int = 0) -> str:
    import_comfy(on_cpu=True)
    from support.tiny_ltxv import save_tiny_ltxv

    return str(save_tiny_ltxv(Path(path), seed))


def save_tiny_wan_files(comm: Communicator, models: str) -> dict[str, str]:
    """The files the Wan workflows load, under a ComfyUI models folder (existing ones are kept)."""
    import_comfy(on_cpu=True)
    from support.tiny_wan import (
        TINY_WAN_FILES,
        save_tiny_wan,
        save_tiny_wan_lora,
        save_tiny_wan_mixed_fp8,
        save_tiny_wan_scaled_fp8,
        save_tiny_wan_vae,
    )

    root = Path(models)
    paths = {name: root / relative for name, relative in TINY_WAN_FILES.items()}
    if not paths["t2v"].exists():
        save_tiny_wan(paths["t2v"], seed=0)
    if not paths["i2v"].exists():
        save_tiny_wan(paths["i2v"], seed=1, image_to_video=True)
    if not paths["vae"].exists():
        save_tiny_wan_vae(paths["vae"])
    if not paths["lora"].exists():
        save_tiny_wan_lora(paths["lora"])
    if not paths["ti2v"].exists():  # Wan 2.2 TI2V 5B's layout: 48 latent channels
        save_tiny_wan(paths["ti2v"], seed=2, in_dim=48, out_dim=48)
    if not paths["fun_control"].exists():  # Wan 2.1 Fun Control: 48 input channels
        save_tiny_wan(paths["fun_control"], seed=3, image_to_video=True, in_dim=48)
    if not paths["vace"].exists():  # 96 VACE channels: 32 of control latents, 64 of mask
        save_tiny_wan(paths["vace"], seed=5, model_class="VaceWanModel", vace_layers=1, vace_in_dim=96)
    if not paths["camera"].exists():  # Wan 2.1 Fun Camera: not supported
        save_tiny_wan(paths["camera"], seed=4, image_to_video=True, model_class="CameraWanModel", in_dim=32)
    if not paths["t2v_fp8"].exists():  # the t2v weights as a scaled-fp8 file
        save_tiny_wan_scaled_fp8(paths["t2v_fp8"], seed=0)
    if not paths["t2v_mixed"].exists():  # the t2v weights in the mixed-precision layout
        save_tiny_wan_mixed_fp8(paths["t2v_mixed"], seed=0)
    if not paths["ltxv"].exists():
        from support.tiny_ltxv import save_tiny_ltxv

        save_tiny_ltxv(paths["ltxv"], seed=6)
    return {name: str(path) for name, path in paths.items()}


def held_as(weight: torch.Tensor) -> str:
    """How a layer holds its weight: "QuantizedTensor" (ComfyUI's mixed-precision layers) or the tensor's dtype."""
    return type(weight).__name__ if type(weight).__name__ == "QuantizedTensor" else str(weight.dtype)


@torch.no_grad()  # a worker's weights are inference tensors (loaded in inference mode)
def computed_weights(patcher: Any) -> dict[str, torch.Tensor]:
    """Each linear layer's weight as the layer computes with it (fp32): dequantized, or times its scale."""
    found = {}
    for name, layer in patcher.model.diffusion_model.named_modules():
        weight = getattr(layer, "weight", None)
        if not (hasattr(layer, "in_features") and isinstance(weight, torch.Tensor)):
            continue
        if held_as(weight) == "QuantizedTensor":
            found[name] = weight.dequantize().float()
        else:
            scale = getattr(layer, "scale_weight", None)
            found[name] = weight.float() * (1.0 if scale is None else scale.float())
    return found


def largest_difference(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    """The largest difference of any weight, relative to that weight's largest value in `a`."""
    return max(float((a[name] - b[name]).abs().max() / a[name].abs().max()) for name in a)


def scaled_fp8_export_round_trip(comm: Communicator, folder: str) -> dict[str, Any]:
    """A scaled-fp8 Wan loaded as UNETLoader loads it (weight_dtype default), alone and with a LoRA, exported
    for the workers and loaded back as a worker loads it: the largest relative difference of any linear
    layer's weight as computed with (weight x its scale) from ComfyUI's own patched model, and how much the
    LoRA moved them."""
    comfy = import_comfy(on_cpu=True)
    from support.tiny_wan import loaded_as_a_worker, save_tiny_wan_scaled_fp8, scaled_fp8_with_lora

    root = Path(folder)
    cache = root / "exports"

    result = weights_round_trip(*scaled_fp8_with_lora(comfy, root), cache)
    # A file whose marker keeps ComfyUI from multiplying in fp8 (on GPUs that can) keeps that on the workers.
    for fp8_matmul in (True, False):
        file = save_tiny_wan_scaled_fp8(root / f"fp8-matmul-{fp8_matmul}.safetensors", fp8_matmul=fp8_matmul)
        loaded = comfy.sd.load_diffusion_model(str(file), model_options={})
        reloaded = loaded_as_a_worker(loaded, cache)
        result[f"fp8_matmul_{fp8_matmul}"] = [
            patcher.model.model_config.optimizations.get("fp8") for patcher in (loaded, reloaded)
        ]

    return result


def mixed_precision_export_round_trip(comm: Communicator, folder: str) -> dict[str, Any]:
    """A Wan in ComfyUI's mixed-precision layout (its block linears held as QuantizedTensor, the layout newer
    ComfyUI also converts scaled-fp8 files to), loaded as UNETLoader loads it, alone and with a LoRA, exported
    and loaded back as a worker loads it: the largest relative difference of any linear layer's weight as the
    layer computes with it (dequantized) from ComfyUI's own patched model, how the weights are held, and how the
    exported file holds a quantized layer's weight."""
    comfy = import_comfy(on_cpu=True)
    from safetensors import safe_open

    from distributed.models.wan.export import export_model
    from distributed.models.wan.quantized import travel_plan
    from support.tiny_wan import loaded_with_lora, save_tiny_wan_mixed_fp8

    root = Path(folder)
    cache = root / "exports"

    mixed, with_lora = loaded_with_lora(comfy, save_tiny_wan_mixed_fp8(root / "mixed.safetensors"), {}, root)
    found = weights_round_trip(mixed, with_lora, cache)
    exported = export_model(mixed, cache)
    with safe_open(str(exported.weights), "pt") as file:
        in_file = file.get_slice("blocks.0.self_attn.q.weight").get_dtype()
    as_written = travel_plan(mixed.model.diffusion_model)[0]
    return found | {"exported": exported.spec().dtype, "in_file": in_file, "as_written": as_written}


def weights_round_trip(plain: Any, with_lora: Any, cache: Path) -> dict[str, Any]:
    """A MODEL and the same with a LoRA, each exported and loaded back as a worker loads it: how the first
    layer holds its weight before and after, and the largest relative differences of the linear weights as
    computed with: exported against ComfyUI's own (patched) model, and how much the LoRA moved them."""
    from support.tiny_wan import loaded_as_a_worker

    alone, patched = loaded_as_a_worker(plain, cache), loaded_as_a_worker(with_lora, cache)
    q = "blocks.0.self_attn.q"
    result: dict[str, Any] = {
        "held_as": held_as(plain.model.diffusion_model.get_submodule(q).weight),
        "reloaded_held_as": [held_as(p.model.diffusion_model.get_submodule(q).weight) for p in (alone, patched)],
        # UNETLoader's fp8_e4m3fn_fast: whether each multiplies in fp8 where the device can
        "fast": [p.model.model_config.optimizations.get("fp8", False) for p in (plain, alone, patched)],
        "alone": largest_difference(computed_weights(plain), computed_weights(alone)),
    }
    with torch.no_grad():  # as ComfyUI patches the model (its weights shared with plain) for its own sampler
        with_lora.patch_model()
    result["with_lora"] = largest_difference(computed_weights(with_lora), computed_weights(patched))
    result["lora_moved"] = largest_difference(computed_weights(with_lora), computed_weights(alone))
    with_lora.unpatch_model()
    return result


# UNETLoader's weight_dtype choices that cast the weights to fp8, and the model_options it loads them with.
UNET_LOADER_FP8 = {
    "fp8_e4m3fn": {"dtype": torch.float8_e4m3fn},
    "fp8_e4m3fn_fast": {"dtype": torch.float8_e4m3fn, "fp8_optimizations": True},
    "fp8_e5m2": {"dtype": torch.float8_e5m2},
}


def cast_fp8_export_round_trip(comm: Communicator, folder: str) -> dict[str, Any]:
    """The tiny Wan (an fp32 file) loaded with each of UNETLoader's fp8 weight_dtypes, alone and with a LoRA, exported
    for the workers and loaded back as a worker loads it: how each side holds the weights, the largest
    relative difference of any linear weight from ComfyUI's own (patched) model, how much the LoRA moved them,
    and the size of the exported file against the weights of the model in fp32."""
    comfy = import_comfy(on_cpu=True)
    from distributed.models.wan.export import export_model
    from support.tiny_wan import loaded_with_lora, save_tiny_wan

    root = Path(folder)
    cache = root / "exports"
    weights = save_tiny_wan(root / "t2v.safetensors")

    result: dict[str, Any] = {"fp32_bytes": weights.stat().st_size}
    for weight_dtype, options in UNET_LOADER_FP8.items():
        cast, with_lora = loaded_with_lora(comfy, weights, options, root)
        result[weight_dtype] = weights_round_trip(cast, with_lora, cache) | {
            "exported_as": export_model(with_lora, cache).weight_dtype,
            "bytes": export_model(cast, cache).weights.stat().st_size,
        }
    return result


def _load(comfy: Any, weights: str) -> Any:
    torch.set_num_threads(1)
    return load_tiny_wan(comfy, weights)


def _sampling(kwargs: dict[str, Any]) -> ComfySampling:
    return ComfySampling(**kwargs)


def core_and_clip_parallel(
    comm: Communicator,
    weights: str,
    latent_shape: tuple[int, ...],
    samplings: list[dict[str, Any]],
    settings: dict,
    keep_first: bool = False,
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """For each sampling on one rank: (core KSampler's latent, the clip-parallel latent), one model load.
    keep_first: see start_image_latent."""
    comfy = import_comfy(on_cpu=True)
    plain = _load(comfy, weights)
    ctx = TemporalContext(comm)
    patched = install_dual_scope(plain, ctx)
    latent, mask = start_image_latent(latent_shape, keep_first)
    pairs = []
    for sampling in samplings:
        spec = _sampling(sampling)
        ours = _clip_parallel(comfy, patched, ctx, latent_shape, spec, settings, keep_first=keep_first)
        pairs.append((core_sample(comfy, plain, latent, spec, mask), ours))
    return pairs


def clip_parallel(
    comm: Communicator,
    weights: str,
    latent_shape: tuple[int, ...],
    samplings: list[dict[str, Any]],
    settings: dict,
    overlap: bool = True,
    keep_first: bool = False,
) -> list[torch.Tensor | None]:
    """Each sampling clip-parallel over this group's ranks; rank 0 returns the whole latents. overlap: see
    install_dual_scope (False: the path of devices without a fused attention that gives its normaliser).
    keep_first: see start_image_latent."""
    comfy = import_comfy(on_cpu=True)
    ctx = TemporalContext(comm)
    model = install_dual_scope(_load(comfy, weights), ctx, overlap)
    return [
        _clip_parallel(comfy, model, ctx, latent_shape, _sampling(s), settings, keep_first=keep_first)
        for s in samplings
    ]


def start_image_latent(latent_shape: tuple[int, ...], keep_first: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Zeros and no noise mask; or (keep_first) a random first latent frame kept by a noise mask of 0 there, as
    LTXVImgToVideo makes an image-to-video latent at strength 1."""
    latent = torch.zeros(latent_shape)
    if not keep_first:
        return latent, None
    latent[:, :, :1] = torch.randn(latent[:, :, :1].shape, generator=torch.Generator().manual_seed(5))
    mask = torch.ones(latent_shape[0], 1, *latent_shape[2:])
    mask[:, :, :1] = 0.0
    return latent, mask


def cancel_inside_a_step_then_sample(
    comm: Communicator,
    weights: str,
    latent_shape: tuple[int, ...],
    sampling: dict[str, Any],
    settings: dict,
    first_seen: int = 2,
) -> tuple[list[str], torch.Tensor | None]:
    """A Cancel that the root first sees inside step 0 (at its look number `first_seen`: 2 is the first
    attention's checkpoint, 3 the post of its keys' all-gather), then the same job to the end on the same
    group: the cancel's text and the exchanges left in flight on every rank, and rank 0's whole latents from
    the second run."""
    comfy = import_comfy(on_cpu=True)
    ctx = TemporalContext(comm)
    model = install_dual_scope(_load(comfy, weights), ctx)
    looks = iter([False] * (first_seen - 1))
    texts = []
    try:
        _clip_parallel(comfy, model, ctx, latent_shape, _sampling(sampling), settings, lambda: next(looks, True))
    except JobCancelled as cancelled:
        texts.append(str(cancelled))
    texts.append(f"{comm.in_flight} in flight")
    return texts, _clip_parallel(comfy, model, ctx, latent_shape, _sampling(sampling), settings)


def previews_and_latents(
    comm: Communicator, weights: str, latent_shape: tuple[int, ...], sampling: dict[str, Any], settings: dict
) -> dict[str, Any]:
    """One clip-parallel job whose root collects the previews; rank 0 also returns the whole latents, and the
    first of them in the model's own latent space (where ComfyUI's samplers hand their previewers x0)."""
    comfy = import_comfy(on_cpu=True)
    ctx = TemporalContext(comm)
    model = install_dual_scope(_load(comfy, weights), ctx)
    previews: list[tuple[int, int, torch.Tensor]] = []
    latents = _clip_parallel(
        comfy, model, ctx, latent_shape, _sampling(sampling), settings,
        preview=(lambda step, total, latent: previews.append((step, total, latent))) if comm.is_root else None,
    )  # fmt: skip
    in_model_space = None if latents is None else model.model.latent_format.process_in(latents[:, :, :1])
    return {"previews": previews, "latents": latents, "first_in_model_space": in_model_space}


def _clip_parallel(
    comfy: Any,
    model: Any,
    ctx: TemporalContext,
    latent_shape: tuple[int, ...],
    spec: ComfySampling,
    settings: dict,
    should_cancel: CancelFn | None = None,
    preview: PreviewFn | None = None,
    keep_first: bool = False,
) -> torch.Tensor | None:
    comm = ctx.comm
    layout = FrameLayout(latent_shape[2], comm.world_size)
    control = RunControl.create(None, should_cancel if comm.is_root else None, RunStats(), preview)
    latent, mask = start_image_latent(latent_shape, keep_first)
    with ctx.job(layout, DualScopeSettings(**settings)):
        own = sample_clip(
            comfy, model, ctx, latent, random_conditioning(1, model), random_conditioning(2, model), spec, control,
            noise_mask=mask,
        )  # fmt: skip
    gathered = comm.gather_frames_to_root(own[0].permute(1, 0, 2, 3).contiguous(), layout)
    return None if gathered is None else gathered.permute(1, 0, 2, 3).unsqueeze(0)


def latent_job_across_machines(
    comm: Communicator, weights: str, folder: str, latent_shape: tuple[int, ...], sampling: dict, settings: dict
) -> torch.Tensor | None:
    """A whole LatentJob through the engine, as a pool's worker runs it. Ranks from 1 on stand in for other
    machines (there is none here): they cannot see the coordinator's files and receive them from rank 0."""
    import os

    from distributed.engine import file_transfer
    from distributed.engine.job import ModelSpec
    from distributed.engine.latent_job import LatentJob
    from distributed.engine.runner import Engine
    from distributed.models.wan.export import ModelSampling
    from distributed.models.wan.inputs import JobInputs, write_inputs

    torch.set_num_threads(1)
    os.environ[file_transfer.RECEIVED_ENV] = str(Path(folder) / f"machine-{comm.rank}")
    if comm.rank > 0:
        file_transfer.visible_here = lambda path, size: False
    inputs = Path(folder) / f"job-{comm.world_size}.safetensors"
    if comm.is_root:
        latent = torch.zeros(latent_shape)
        write_inputs(
            inputs, JobInputs(latent, random_conditioning(1), random_conditioning(2), ModelSampling(5.0, 1000.0))
        )
    spec = ModelSpec(base=weights, dtype="fp32", family="wan")
    job = LatentJob(spec, str(inputs), latent_shape[2], ComfySampling(**sampling), DualScopeSettings(**settings))
    return Engine(comm).run(job).latents


def wan_memory_needs(
    comm: Communicator, weights: str, folder: str, latent_shape: tuple[int, ...], holdings: list[tuple[int, int]]
) -> list[tuple[int, str, float]]:
    """For each (own, held) frame count: the Wan family's admission estimate, its text, and ComfyUI's own
    sampler estimate (the minimum, one latent per call) on a latent of the held frames."""
    from distributed.engine.job import ModelSpec
    from distributed.engine.latent_job import LatentJob
    from distributed.models.wan.export import ModelSampling
    from distributed.models.wan.family import WanFamily
    from distributed.models.wan.inputs import JobInputs, write_inputs

    comfy = import_comfy(on_cpu=True)
    inputs = Path(folder) / "admission.safetensors"
    conditioning = random_conditioning(1)
    write_inputs(inputs, JobInputs(torch.zeros(latent_shape), conditioning, conditioning, ModelSampling(5.0, 1000.0)))
    spec = ModelSpec(base=weights, dtype="fp32", family="wan")
    job = LatentJob(
        spec,
        str(inputs),
        latent_shape[2],
        _sampling({"sampler_name": "euler", "scheduler": "simple", "steps": 1, "cfg": 4.0, "seed": 0}),
    )
    family = WanFamily()
    loaded = family.load(spec, torch.device("cpu"))
    conds = {"positive": comfy.sampler_helpers.convert_cond(conditioning)}
    results = []
    for own, held in holdings:
        need = family.peak_bytes(loaded, job, own, held)
        shape = (latent_shape[0], latent_shape[1], held, *latent_shape[3:])
        _, minimum = comfy.sampler_helpers.estimate_memory(loaded.patcher, shape, conds)
        results.append((need.bytes, need.holding, float(minimum)))
    return results
