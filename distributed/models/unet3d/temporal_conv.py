"""Temporal convolutions across rank borders, and GroupNorms whose statistics span the whole video."""

from __future__ import annotations

import torch
from diffusers.models.resnet import TemporalConvLayer
from torch import nn

from ...engine.comm import Communicator
from ...engine.context import TemporalContext


class FrameGroupNorm(nn.Module):
    """A GroupNorm over (B, C, F, H, W) that normalises across frames.

    Exact mode: statistics come from the own frames of every rank (halo frames excluded), so the result
    is the same for any split of the video over ranks. With norm_window 0 they span the whole video:
    each rank computes its count, mean and sum of squared deviations (two passes over its own frames),
    one all_gather shares them and every rank merges them in rank order (Chan's formula, fp64), one
    collective per norm. With norm_window W each frame uses the W frames around it: per-frame sums
    travel with a halo and a prefix sum gives every window. Other modes: the original per-rank
    GroupNorm (the reference code's behaviour).
    """

    def __init__(self, norm: nn.GroupNorm, ctx: TemporalContext):
        super().__init__()
        self.norm = norm
        self.ctx = ctx

    def forward(self, x: torch.Tensor, own: tuple[int, int] | None = None) -> torch.Tensor:
        """own: [first, end) of this rank's own frames along axis 2 when x carries halo frames too."""
        ctx = self.ctx
        if not ctx.active or ctx.settings.mode != "exact":
            return self.norm(x)
        norm = self.norm
        batch, channels, frames = x.shape[:3]
        own = own if own is not None else (0, frames)
        compute = torch.float32 if x.element_size() < 4 else x.dtype  # half precision: statistics in fp32
        # (B, G, C/G, F, H*W): statistics per group, over channels and pixels, and (below) over frames.
        grouped = x.to(compute).reshape(batch, norm.num_groups, channels // norm.num_groups, frames, -1)
        if ctx.settings.norm_window > 0:
            mean, var = window_statistics(ctx, grouped, own, ctx.settings.norm_window)
            mean, var = mean[:, :, None, :, None], var[:, :, None, :, None]
        else:
            own_rows = grouped[:, :, :, own[0] : own[1]].reshape(batch, norm.num_groups, -1)
            mean, var = merged_statistics(ctx.comm, own_rows)
            mean, var = mean[:, :, None, None, None], var[:, :, None, None, None]
        normed = (grouped - mean.to(compute)) * torch.rsqrt(var.to(compute) + norm.eps)
        normed = normed.reshape(x.shape)
        if norm.affine:
            shape = (1, channels) + (1,) * (x.dim() - 2)
            normed = normed * norm.weight.to(compute).view(shape) + norm.bias.to(compute).view(shape)
        return normed.to(x.dtype)


def merged_statistics(comm: Communicator, own: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and (biased) variance over the last dim of every rank's `own` together, in fp64.

    own: (B, G, n_rank); n_rank may differ between ranks. Every rank gets bit-identical results.
    """
    count = own.shape[-1]
    local_mean = own.sum(-1).double() / count
    local_m2 = (own - local_mean.to(own.dtype).unsqueeze(-1)).square().sum(-1).double()
    pieces = comm.all_gather(torch.stack([torch.full_like(local_mean, count), local_mean, local_m2]))
    total = sum(piece[0] for piece in pieces)
    mean = sum(piece[0] * piece[1] for piece in pieces) / total
    m2 = sum(piece[2] + piece[0] * (piece[1] - mean).square() for piece in pieces)
    return mean, m2 / total


def window_statistics(
    ctx: TemporalContext, grouped: torch.Tensor, own: tuple[int, int], window: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-frame mean and variance, (B, G, F) in fp64, each over the `window` video frames around it.

    grouped: (B, G, C/G, F, H*W), this rank's own frames at own[0]:own[1] plus halo frames around them.
    A frame's window starts window // 2 frames before it and is shifted inward at the video's ends, so
    it always holds min(window, video) frames. Every frame holds the same number of values, so window
    statistics are plain averages of per-frame mean and mean square.
    """
    assert ctx.layout is not None
    lo, hi = own
    total, frames = ctx.layout.total, grouped.shape[3]
    mine = grouped[:, :, :, lo:hi]
    frame_mean = mine.sum(dim=(2, 4)).double() / (mine.shape[2] * mine.shape[4])
    deviation = mine - frame_mean.to(mine.dtype)[:, :, None, :, None]
    frame_square = deviation.square().mean(dim=(2, 4)).double() + frame_mean.square()
    per_frame = torch.stack([frame_mean, frame_square], dim=-1)  # (B, G, own frames, 2)
    # Enough neighbouring frames for the windows of the halo frames too.
    left, right = ctx.borrow(per_frame, dim=2, width=max(lo, frames - hi) + window, pad_ends=False)
    sequence = torch.cat([left, per_frame, right], dim=2)
    first = ctx.span[0] - left.shape[2]  # global index of sequence[:, :, 0]
    prefix = torch.nn.functional.pad(sequence.cumsum(dim=2), (0, 0, 1, 0))
    index = torch.arange(frames, device=grouped.device) + ctx.span[0] - lo
    starts = (index - window // 2).clamp(min=0, max=max(total - window, 0))
    ends = (starts + window).clamp(max=total)
    sums = prefix[:, :, ends - first] - prefix[:, :, starts - first]
    averages = sums / (ends - starts).to(sums.dtype)[:, None]
    mean = averages[..., 0]
    return mean, (averages[..., 1] - mean.square()).clamp(min=0.0)


class HaloTemporalConv(nn.Module):
    """Runs a TemporalConvLayer on [left halo ; own ; right halo] and keeps the own frames.

    The layer's receptive field is +-4 frames (four Conv3d(3,1,1) stages), so a halo of 4 makes the own
    frames exact. At the video ends there is no neighbour: exact mode pads nothing there, so the
    layer's own zero padding applies as on one device; reference mode feeds zero frames.
    """

    def __init__(self, layer: TemporalConvLayer, ctx: TemporalContext):
        super().__init__()
        self.layer = layer
        self.ctx = ctx

    def forward(self, hidden_states: torch.Tensor, num_frames: int = 1) -> torch.Tensor:
        ctx = self.ctx
        width = ctx.settings.conv_halo
        if not ctx.active or width == 0:
            return self._run(hidden_states, num_frames, None)
        batch = hidden_states.shape[0] // num_frames
        frames = hidden_states.view(batch, num_frames, *hidden_states.shape[1:])
        left, right = ctx.borrow(frames, dim=1, width=width, pad_ends=ctx.settings.mode == "reference")
        extended = torch.cat([left, frames, right], dim=1)
        total = extended.shape[1]
        out = self._run(
            extended.reshape(batch * total, *hidden_states.shape[1:]),
            total,
            (left.shape[1], left.shape[1] + num_frames),
        )
        out = out.view(batch, total, *out.shape[1:])[:, left.shape[1] : left.shape[1] + num_frames]
        return out.reshape(batch * num_frames, *out.shape[2:])

    def _run(self, hidden_states: torch.Tensor, num_frames: int, own: tuple[int, int] | None) -> torch.Tensor:
        """TemporalConvLayer's own computation, with each stage's FrameGroupNorm told which frames are ours."""
        layer = self.layer
        x = hidden_states[None, :].reshape((-1, num_frames) + hidden_states.shape[1:]).permute(0, 2, 1, 3, 4)
        identity = x
        for stage in (layer.conv1, layer.conv2, layer.conv3, layer.conv4):
            x = stage[0](x, own)
            for module in stage[1:]:
                x = module(x)
        x = identity + x
        return x.permute(0, 2, 1, 3, 4).reshape((x.shape[0] * x.shape[2], -1) + x.shape[3:])
