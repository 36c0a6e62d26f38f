"""Functions that run inside each local rank (imported by name in the spawned processes)."""

from __future__ import annotations

from typing import Any

import torch

from distributed.engine.comm import Communicator
from distributed.engine.context import TemporalContext
from distributed.engine.errors import JobCancelled
from distributed.engine.layout import FrameLayout
from distributed.engine.settings import DualScopeSettings
from distributed.models.unet3d.model import UNet3DVideoCrafterConditionModel, run_unet3d
from distributed.models.unet3d.patch import patch_unet
from support.tiny_models import tiny_unet_config


def random_unet(seed: int, dtype: torch.dtype, fps_cond: bool = True) -> UNet3DVideoCrafterConditionModel:
    torch.manual_seed(seed)
    unet = UNet3DVideoCrafterConditionModel(**tiny_unet_config(fps_cond=fps_cond))
    with torch.no_grad():
        for parameter in unet.parameters():
            if not parameter.any():
                parameter.normal_(0.0, 0.05)
    return unet.to(dtype).eval()


def unet_call(comm: Communicator, frames: int, settings: dict[str, Any], timestep: float, dtype: str) -> dict:
    """One patched UNet call on this rank's clip of a fixed random input; returns the own output."""
    torch_dtype = getattr(torch, dtype)
    unet = random_unet(0, torch_dtype)
    ctx = TemporalContext(comm)
    patch_unet(unet, ctx)
    generator = torch.Generator().manual_seed(1)
    sample = torch.randn(2, 4, frames, 8, 8, generator=generator, dtype=torch_dtype)
    text = torch.randn(2, frames, 16, 32, generator=generator, dtype=torch_dtype)
    layout = FrameLayout(frames, comm.world_size)
    start, end = layout.span(comm.rank)
    ctx.begin_job(layout, DualScopeSettings(**settings))
    ctx.timestep = timestep
    with torch.no_grad():
        out = run_unet3d(unet, sample[:, :, start:end], timestep, text[:, start:end], fps=8)
    return {"start": start, "out": out}


def temporal_conv_call(comm: Communicator, frames: int, mode: str, norm_window: int = 0) -> dict:
    """A lone TemporalConvLayer (GroupNorms included) on this rank's clip, float64."""
    from diffusers.models.resnet import TemporalConvLayer

    torch.manual_seed(3)
    layer = TemporalConvLayer(16, 16, norm_num_groups=4).double().eval()
    with torch.no_grad():
        for parameter in layer.parameters():
            parameter.normal_(0.0, 0.3)
    ctx = TemporalContext(comm)
    holder = torch.nn.Module()
    holder.conv = layer
    patch_unet(holder, ctx)
    x = torch.randn(2 * frames, 16, 4, 4, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    x = x.view(2, frames, 16, 4, 4) * 3 + 1  # a non-zero mean makes the statistics matter
    layout = FrameLayout(frames, comm.world_size)
    start, end = layout.span(comm.rank)
    ctx.begin_job(layout, DualScopeSettings(mode=mode, norm_window=norm_window))
    own = x[:, start:end].reshape(-1, 16, 4, 4)
    convolved = count_convolved_frames()
    with torch.no_grad():
        out = holder.conv(own, num_frames=end - start)
    return {"out": out.view(2, end - start, 16, 4, 4), "bytes": comm.bytes_sent, "convolved": convolved}


def count_convolved_frames() -> list[int]:
    """From now on in this process, the output frames of every convolution a temporal conv stage computes
    (its frames-only kernel runs as conv2d over (frames, pixels)), appended to the returned list."""
    import torch.nn.functional as F

    from distributed.models.unet3d import temporal_conv

    counts: list[int] = []

    class Counting:
        def __getattr__(self, name: str):
            return getattr(F, name)  # everything but conv2d is torch's own

        @staticmethod
        def conv2d(*args, **kwargs):
            result = F.conv2d(*args, **kwargs)
            counts.append(result.shape[2])
            return result

    temporal_conv.F = Counting()
    return counts


def groupnorm_statistics(comm: Communicator, sizes: list[int]) -> dict:
    """The GroupNorm moments of uneven fp32 pieces of one random (2, 3, sum(sizes)) tensor, merged over ranks."""
    from distributed.models.unet3d.temporal_conv import row_moments, start_merge_over_ranks

    whole = torch.randn(2, 3, sum(sizes), generator=torch.Generator().manual_seed(5)) * 3 + 40
    start = sum(sizes[: comm.rank])
    comm.reset_counters()
    mine = whole[..., start : start + sizes[comm.rank]].contiguous()
    mean, var = start_merge_over_ranks(comm, *row_moments(mine.view(2, 3, 1, -1)))()
    truth = whole.double()
    return {
        "mean": mean.numpy(),
        "var": var.numpy(),
        "true_mean": truth.mean(-1).numpy(),
        "true_var": truth.var(-1, unbiased=False).numpy(),
        "calls": comm.calls,
    }


def receive_where_the_file_is_not_visible(
    comm: Communicator, path: str, received: str, chunk: int, elsewhere: dict[str, str]
) -> dict:
    """Ranks named in `elsewhere` stand in for ranks on other machines (there is no second machine here): they
    cannot see the coordinator's disk and keep what they receive in that machine's folder. The others see
    the file, as on a shared file system. Two calls, as two jobs on a warm pool."""
    import os

    from distributed.engine import file_transfer

    file_transfer.CHUNK_BYTES = chunk
    machine = elsewhere.get(str(comm.rank))
    if machine is not None:
        os.environ[file_transfer.RECEIVED_ENV] = os.path.join(received, machine)
        file_transfer.visible_here = lambda path, size: False
    try:
        file_transfer.local_path(comm, path + ".missing", "models", keep=2)
        missing = ""
    except Exception as error:  # noqa: BLE001 - the test compares every rank's text
        missing = str(error)
    calls = []
    for _ in range(2):
        comm.reset_counters()
        where = file_transfer.local_path(comm, path, "models", keep=2)
        with open(where, "rb") as file:
            calls.append({"path": where, "data": file.read(), "received": comm.bytes_received})
    return {"calls": calls, "missing": missing}


def keys_and_values_of_a_job(comm: Communicator, frames: int) -> tuple[TemporalContext, torch.Tensor, torch.Tensor]:
    """A job begun on `frames` (P = 1, G = 2), and this rank's stand-in keys and values (1, own frames, 1):
    each frame's global index, and its negative."""
    ctx = TemporalContext(comm)
    layout = FrameLayout(frames, comm.world_size)
    ctx.begin_job(layout, DualScopeSettings(local_window=1, global_frames=2))
    own = torch.arange(layout.counts[comm.rank], dtype=torch.float32) + layout.starts[comm.rank]
    return ctx, own.view(1, -1, 1), -own.view(1, -1, 1)


def settle_after_a_cancel(comm: Communicator, frames: int) -> dict:
    """Keys' and values' exchanges posted together, a Cancel asked on rank 0 only: it travels with the
    keys' all-gather, so every rank raises there with the values' exchange still in flight. settle()
    waits for it, and the next exchange delivers its own data."""
    ctx, keys, values = keys_and_values_of_a_job(comm, frames)
    comm.watch_cancel(lambda: comm.rank == 0, step=3)
    together = ctx.start_halo_and_globals_of((keys, values), dim=1, width=1, pad_ends=False)
    try:
        together()
        stopped = None
    except JobCancelled as cancelled:
        stopped = cancelled.step
    left_in_flight = comm.in_flight
    settled = comm.settle()
    comm.unwatch_cancel()
    ctx.end_job()
    after = comm.all_gather(torch.tensor([10.0 + comm.rank]))
    return {
        "stopped_at": stopped,
        "left_in_flight": left_in_flight,
        "settled": settled,
        "in_flight_after": comm.in_flight,
        "next_exchange": [piece.item() for piece in after],
    }


def exchanges_posted_together(comm: Communicator, frames: int) -> dict:
    """Two halo-and-global exchanges posted before either is waited for (a Wan attention's keys and
    values), then one alone: the calls made and the rounds counted."""
    ctx, keys, values = keys_and_values_of_a_job(comm, frames)
    together = ctx.start_halo_and_globals_of((keys, values), dim=1, width=1, pad_ends=False)
    (k_left, k_right, k_glb), (v_left, v_right, v_glb) = together()
    both = {"calls": comm.calls, "rounds": comm.rounds}
    ctx.halo_and_globals(keys, dim=1, width=1, pad_ends=False)
    return {
        "together": both,
        "after_one_more": {"calls": comm.calls, "rounds": comm.rounds},
        "halos": [k_left.flatten().tolist(), k_right.flatten().tolist(), (-v_left).flatten().tolist()],
        "globals": [k_glb.flatten().tolist(), (-v_glb).flatten().tolist()],
    }
