"""Temporal convolutions across rank borders, and GroupNorms whose statistics span the whole video."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from diffusers.models.resnet import TemporalConvLayer
from torch import nn

from ...engine.comm import Communicator
from ...engine.context import TemporalContext

Statistics = tuple[torch.Tensor, torch.Tensor]  # whole-video mean and variance per (batch, group), fp64


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

    def forward(
        self, x: torch.Tensor, own: tuple[int, int] | None = None, merged: Statistics | None = None
    ) -> torch.Tensor:
        """own: [first, end) of this rank's own frames along axis 2 when x carries halo frames too."""
        ctx = self.ctx
        exact = ctx.active and ctx.settings.mode == "exact"
        frames = x.shape[2]
        whole_video = ctx.comm.world_size == 1 and own in (None, (0, frames))
        if not exact or (ctx.settings.norm_window == 0 and whole_video):
            return self.norm(x)  # torch's own GroupNorm: per rank, or the whole video is here anyway
        scale, shift = self.terms(x, own, merged)
        return torch.addcmul(shift, x, scale).to(x.dtype)

    @property
    def whole_video_statistics(self) -> bool:
        """Whether this norm's statistics are one all-gather of every rank's own moments."""
        settings = self.ctx.settings
        return self.ctx.active and settings.mode == "exact" and settings.norm_window == 0

    def own_moments_piece(self, x: torch.Tensor) -> torch.Tensor:
        """This rank's moments of x, all of it its own frames (B, C, F, H, W), as the piece an all-gather
        shares; merge_pieces turns every rank's into what `terms` takes. Lets a caller move halo frames in
        the same exchange."""
        return moments_piece(*own_moments(x, self.norm.num_groups, (0, x.shape[2])))

    def terms(
        self, x: torch.Tensor, own: tuple[int, int] | None = None, merged: Statistics | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(scale, shift) such that x * scale + shift is this layer's output, broadcastable to x: per
        channel, and per frame with window statistics. Lets a caller apply the norm in pieces. `merged`:
        the whole video's statistics when the caller already has them (own_moments_piece)."""
        ctx = self.ctx
        norm = self.norm
        frames = x.shape[2]
        own = own if own is not None else (0, frames)
        if self.whole_video_statistics:
            if merged is None:
                merged = start_merge_over_ranks(ctx.comm, *own_moments(x, norm.num_groups, own))()
            mean, var = merged
        elif ctx.active and ctx.settings.mode == "exact":  # windowed statistics
            grouped = x.reshape(x.shape[0], norm.num_groups, -1, frames, x[0, 0, 0].numel())
            grouped = grouped.float() if x.element_size() < 4 else grouped
            mean, var = window_statistics(ctx, grouped, own, ctx.settings.norm_window)
        else:
            count, mean, m2 = own_moments(x, norm.num_groups, (0, frames))  # per rank, halo included
            var = m2 / count
        return _fold(x, norm, mean, var)


def _fold(
    x: torch.Tensor, norm: nn.GroupNorm, mean: torch.Tensor, var: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale and shift per channel (and per frame for window statistics), folded from the fp64 statistics
    and the affine weights, so the norm is x * scale + shift in one pass (the form torch's own GroupNorm
    kernel uses)."""
    batch, channels = x.shape[:2]
    per_group = channels // norm.num_groups
    scale = torch.rsqrt(var + norm.eps)
    shift = -mean * scale
    # (B, G, [F]) -> (B, C, [F]): every channel of a group shares its group's statistics.
    scale, shift = (t.repeat_interleave(per_group, dim=1) for t in (scale, shift))
    if norm.affine:
        weight = norm.weight.double().view((1, channels) + (1,) * (scale.dim() - 2))
        bias = norm.bias.double().view(weight.shape)
        scale, shift = scale * weight, shift * weight + bias
    compute = torch.float32 if x.element_size() < 4 else x.dtype
    trailing = (1,) * (x.dim() - scale.dim())
    return scale.to(compute).view(scale.shape + trailing), shift.to(compute).view(shift.shape + trailing)


def own_moments(x: torch.Tensor, groups: int, own: tuple[int, int]) -> tuple[int, torch.Tensor, torch.Tensor]:
    """Count, mean and sum of squared deviations (B, G) in fp64 of the own frames of x (B, C, F, H, W).

    Two passes over contiguous rows in the input's layout (per frame and group when frames lead in
    memory, as after a temporal permute; per channel otherwise), then the rows are merged in fp64.
    """
    lo, hi = own
    batch, channels = x.shape[:2]
    frame_major = x.transpose(1, 2)
    if frame_major.is_contiguous():
        rows = frame_major[:, lo:hi].reshape(batch, hi - lo, groups, -1).transpose(1, 2)  # (B, G, frames, n)
    else:
        rows = x.contiguous()[:, :, lo:hi].reshape(batch, groups, channels // groups, -1)  # (B, G, C/G, n)
    return row_moments(rows.float() if rows.element_size() < 4 else rows)


def row_moments(rows: torch.Tensor) -> tuple[int, torch.Tensor, torch.Tensor]:
    """Count, mean and sum of squared deviations over the last two dims of rows (B, G, k, n), in fp64.

    Each row of n values gets two passes in its own precision (sum, then the norm of the deviations);
    the k rows are merged in fp64 (Chan's formula with equal counts).
    """
    n = rows.shape[-1]
    row_mean = rows.sum(-1, keepdim=True) / n
    row_m2 = torch.linalg.vector_norm(rows - row_mean, dim=-1).double().square()
    row_mean = row_mean.squeeze(-1).double()
    mean = row_mean.mean(-1)
    m2 = row_m2.sum(-1) + n * (row_mean - mean.unsqueeze(-1)).square().sum(-1)
    return n * rows.shape[-2], mean, m2


def moments_piece(count: int, mean: torch.Tensor, m2: torch.Tensor) -> torch.Tensor:
    """One rank's moments (B, G) stacked as the (3, B, G) fp64 piece its all-gather sends."""
    return torch.stack([torch.full_like(mean, count), mean, m2])


def merge_pieces(pieces: Sequence[torch.Tensor]) -> Statistics:
    """The mean and (biased) variance of every rank's moments_piece together, in fp64, merged in rank order
    with Chan's formula. The counts may differ between ranks; every rank gets bit-identical results."""
    total = sum(piece[0] for piece in pieces)
    merged_mean = sum(piece[0] * piece[1] for piece in pieces) / total
    merged_m2 = sum(piece[2] + piece[0] * (piece[1] - merged_mean).square() for piece in pieces)
    return merged_mean, merged_m2 / total


def start_merge_over_ranks(
    comm: Communicator, count: int, mean: torch.Tensor, m2: torch.Tensor
) -> Callable[[], Statistics]:
    """Posts the all-gather of this rank's moments; the returned call gives merge_pieces of every rank's."""
    wait = comm.start_all_gather(moments_piece(count, mean, m2))
    return lambda: merge_pieces(wait())


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
    """A TemporalConvLayer whose own frames come out as on one device, however the video is split.

    The layer's receptive field is +-4 frames (four Conv3d(3,1,1) stages). With whole-video statistics
    (exact mode) each stage borrows the one frame per side its kernel reaches, inside the all-gather of
    that stage's norm statistics, which has to happen anyway: no call and no frame is computed twice.
    Otherwise (window statistics, reference mode, a halo narrower than the receptive field) the layer runs
    on [left halo ; own ; right halo] of the input and keeps the own frames. At the video ends there is no
    neighbour: exact mode pads nothing there, so the layer's own zero padding applies as on one device;
    reference mode feeds zero frames.
    """

    def __init__(self, layer: TemporalConvLayer, ctx: TemporalContext, elements: int):
        super().__init__()
        self.layer = layer
        self.ctx = ctx
        self.elements = elements  # input values per chunk of frames (chunked.chunk_elements)

    def forward(self, hidden_states: torch.Tensor, num_frames: int = 1) -> torch.Tensor:
        ctx = self.ctx
        ctx.cancel_checkpoint()
        width = ctx.settings.conv_halo
        if not ctx.active or width == 0:
            return self._run(hidden_states, num_frames, None)
        if self._halo_per_stage(width):
            return self._run_with_stage_halos(hidden_states, num_frames)
        batch = hidden_states.shape[0] // num_frames
        frames = hidden_states.view(batch, num_frames, *hidden_states.shape[1:])
        first_norm = self.layer.conv1[0]
        # The first stage's statistics need only the own frames: their all-gather travels with the halo (in
        # one call at two ranks, TemporalContext.halo_rides_all_gather).
        merge_first = ctx.comm.world_size > 1 and first_norm.whole_video_statistics
        moments = [first_norm.own_moments_piece(frames.transpose(1, 2))] if merge_first else []
        pad_ends = ctx.settings.mode == "reference"
        left, right, gathered = ctx.start_halo_with(frames, dim=1, width=width, pad_ends=pad_ends, parts=moments)()
        merged = merge_pieces(gathered[0]) if merge_first else None
        if left.shape[1] == right.shape[1] == 0:  # one rank: nothing to add, and no copy of the clip
            return self._run(hidden_states, num_frames, None, merged)
        extended = torch.cat([left, frames, right], dim=1)
        total = extended.shape[1]
        out = self._run(
            extended.reshape(batch * total, *hidden_states.shape[1:]),
            total,
            (left.shape[1], left.shape[1] + num_frames),
            merged,
        )
        out = out.view(batch, total, *out.shape[1:])[:, left.shape[1] : left.shape[1] + num_frames]
        return out.reshape(batch * num_frames, *out.shape[2:])

    @property
    def _stages(self) -> tuple[nn.Sequential, ...]:
        layer = self.layer
        return (layer.conv1, layer.conv2, layer.conv3, layer.conv4)

    def _halo_per_stage(self, width: int) -> bool:
        """Whether each stage can borrow its own kernel's reach with its statistics (see the class)."""
        stages = self._stages
        return (
            self.ctx.comm.world_size > 1
            and all(_chunkable(stage) and stage[0].whole_video_statistics for stage in stages)
            and width >= sum(stage[-1].padding[0] for stage in stages)
        )

    def _run_with_stage_halos(self, hidden_states: torch.Tensor, num_frames: int) -> torch.Tensor:
        """The layer on the own frames only: every stage's input frames next to this clip travel with that
        stage's statistics (one call at two ranks), and the stage convolves [left ; own ; right] in chunks."""
        ctx = self.ctx
        x = hidden_states[None, :].reshape((-1, num_frames) + hidden_states.shape[1:]).permute(0, 2, 1, 3, 4)
        identity = x
        for stage in self._stages:
            moments = stage[0].own_moments_piece(x)
            reach = stage[-1].padding[0]
            left, right, gathered = ctx.start_halo_with(x, dim=2, width=reach, pad_ends=False, parts=[moments])()
            merged = merge_pieces(gathered[0])
            x = _stage_in_chunks(stage, x, None, self.elements, ctx.comm.poll_cancel, merged, (left, right))
        x = identity + x
        return x.permute(0, 2, 1, 3, 4).reshape((x.shape[0] * x.shape[2], -1) + x.shape[3:])

    def _run(
        self,
        hidden_states: torch.Tensor,
        num_frames: int,
        own: tuple[int, int] | None,
        first_statistics: Statistics | None = None,
    ) -> torch.Tensor:
        """TemporalConvLayer's own computation, with each stage's FrameGroupNorm told which frames are ours
        (and the first one given its statistics when they travelled with the halo)."""
        x = hidden_states[None, :].reshape((-1, num_frames) + hidden_states.shape[1:]).permute(0, 2, 1, 3, 4)
        identity = x
        for index, stage in enumerate(self._stages):
            merged = first_statistics if index == 0 else None
            if _chunkable(stage):
                x = _stage_in_chunks(stage, x, own, self.elements, self.ctx.comm.poll_cancel, merged)
                continue
            x = stage[0](x, own, merged)
            for module in stage[1:]:
                x = module(x)
        x = identity + x
        return x.permute(0, 2, 1, 3, 4).reshape((x.shape[0] * x.shape[2], -1) + x.shape[3:])


def _chunkable(stage: nn.Sequential) -> bool:
    """A stage of (frame GroupNorm, element-wise layers, a Conv3d over frames only with k = 2p + 1)."""
    conv = stage[-1]
    return (
        isinstance(stage[0], FrameGroupNorm)
        and isinstance(conv, nn.Conv3d)
        and all(isinstance(module, (nn.SiLU, nn.Dropout, nn.Identity)) for module in stage[1:-1])
        and conv.kernel_size[1:] == (1, 1)
        and conv.kernel_size[0] == 2 * conv.padding[0] + 1
        and conv.padding[1:] == (0, 0)
        and conv.stride == (1, 1, 1)
        and conv.dilation == (1, 1, 1)
        and conv.groups == 1
        and conv.padding_mode == "zeros"
    )


def _stage_in_chunks(
    stage: nn.Sequential,
    x: torch.Tensor,
    own: tuple[int, int] | None,
    elements: int,
    poll: Callable[[], bool],
    merged: Statistics | None = None,
    halo: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> torch.Tensor:
    """norm -> element-wise layers -> convolution over frames, on chunks of frames (each with the frames
    its kernel reaches beyond it), so the normalised and activated input never exists for the whole clip.
    The norm's statistics come first, from the whole input. halo: (left, right) input frames just outside
    x that the kernel reaches (whole-video statistics only); the output has x's frames."""
    norm, conv, between = stage[0], stage[-1], list(stage[1:-1])
    scale, shift = norm.terms(x, own, merged)
    per_frame_terms = scale.dim() > 2 and scale.shape[2] == x.shape[2] and x.shape[2] > 1
    assert halo is None or not per_frame_terms, "halo frames have no per-frame terms here"
    left, right = halo if halo is not None else (x[:, :, :0], x[:, :, :0])
    batch, channels, frames, height, width = x.shape
    reach = conv.padding[0]
    step = max(1, elements // (batch * channels * height * width))
    weight = conv.weight.squeeze(-1)  # (out, in, k, 1): the 2-D kernel over (frames, pixels)
    out = x.new_empty((batch, conv.out_channels, frames, height, width))
    for first in range(0, frames, step):
        if poll():
            break
        end = min(frames, first + step)
        lo, hi = max(-left.shape[2], first - reach), min(frames + right.shape[2], end + reach)
        piece_scale, piece_shift = (t[:, :, lo:hi] if per_frame_terms else t for t in (scale, shift))
        piece = torch.addcmul(piece_shift, _frames_between(x, left, right, lo, hi), piece_scale).to(x.dtype)
        for module in between:
            piece = module(piece)
        # Zero frames where the clip ends, as the convolution's own padding would give.
        piece = F.pad(piece, (0, 0, 0, 0, reach - (first - lo), reach - (hi - end)))
        result = F.conv2d(piece.reshape(batch, channels, -1, height * width), weight, conv.bias)
        out[:, :, first:end] = result.view(batch, -1, end - first, height, width)
    return out


def _frames_between(x: torch.Tensor, left: torch.Tensor, right: torch.Tensor, lo: int, hi: int) -> torch.Tensor:
    """Frames [lo, hi) of [left ; x ; right] along axis 2, counted from x's first frame; only a chunk that
    reaches into a halo is copied."""
    frames = x.shape[2]
    parts = [x[:, :, max(lo, 0) : min(hi, frames)]]
    if lo < 0:
        parts.insert(0, left[:, :, left.shape[2] + lo :])
    if hi > frames:
        parts.append(right[:, :, : hi - frames])
    return parts[0] if len(parts) == 1 else torch.cat(parts, dim=2)
