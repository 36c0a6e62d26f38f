"""Dual-scope temporal attention for the UNet3D family (docs/algorithm.md section 3).

Each rank sends the attention *input* of its halo and global frames, not K and V: one tensor instead
of two, and to_k / to_v are applied to the received frames locally.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers.models.attention_processor import Attention, AttnProcessor2_0
from torch import nn

from ...engine.banded import BandSpec, band_plan, banded_attention, banded_attention_in_parts, part_plans
from ...engine.context import TemporalContext
from .chunked import chunk_elements, in_chunks

PROFILE_LABEL = "video_infinity.temporal_attention"


class DualScopeAttnProcessor:
    """Attention processor for the temporal self-attentions of a UNet3D (input (B*H*W, F, C))."""

    def __init__(self, ctx: TemporalContext, overlap: bool = True):
        self.ctx = ctx
        self.plain = AttnProcessor2_0()
        # With several ranks: compute the own band while the exchange travels. False waits for it first
        # and attends in one pass, the same result (benchmarks.scaling measures what the overlap saves).
        self.overlap = overlap

    def __call__(
        self,
        attn: Attention,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
        **kwargs: object,
    ) -> torch.Tensor:
        if encoder_hidden_states is not None or attention_mask is not None:
            raise ValueError("dual-scope attention patches temporal self-attention only")
        with torch.profiler.record_function(PROFILE_LABEL):  # the GPU check reads this share of the step
            return self._attend(attn, hidden_states)

    def _attend(self, attn: Attention, hidden_states: torch.Tensor) -> torch.Tensor:
        ctx = self.ctx
        ctx.cancel_checkpoint()
        if not ctx.active:
            return self.plain(attn, hidden_states)
        x = hidden_states
        # One rank has nothing to wait for; several compute their own band while the other frames travel.
        attend = _attend_in_parts if self.overlap and ctx.comm.world_size > 1 else _attend_in_one_pass
        out = attend(ctx, attn, x)
        out = out.transpose(1, 2).reshape(x.shape[0], x.shape[1], -1).to(x.dtype)
        out = attn.to_out[1](in_chunks(attn.to_out[0], out, chunk_elements(x.device), ctx.comm.poll_cancel))
        if attn.residual_connection:
            out = out + hidden_states
        if attn.rescale_output_factor != 1.0:
            out = out / attn.rescale_output_factor
        return out


def _attend_in_one_pass(ctx: TemporalContext, attn: Attention, x: torch.Tensor) -> torch.Tensor:
    """(B, h, F, d): the halo and global frames first, then one banded attention over every key."""
    if ctx.comm.world_size == 1 and ctx.settings.mode == "exact":
        # A lone rank's halo is the zero padding past both ends of the video, which exact mode masks: the
        # windows read zeros there (halo_absent) instead of projecting and copying padding frames.
        glb = ctx.start_gather_global(x, dim=1)() if ctx.global_indices else x.narrow(1, 0, 0)
        query, key, value = _project(ctx, attn, torch.cat([x, glb], dim=1), slice(0, x.shape[1]))
        plan = band_plan(_band_spec(ctx, x, glb.shape[1]), x.device, query.dtype)
        return banded_attention(query, key, value, plan, attn.scale, ctx.comm.poll_cancel, halo_absent=True)
    left, right, glb = ctx.halo_and_globals(x, dim=1, width=ctx.settings.local_window, pad_ends=True)
    # One copy of every key frame, [left ; own ; right ; globals], shared by the projections.
    key_frames = torch.cat([left, x, right, glb], dim=1)
    own = slice(left.shape[1], left.shape[1] + x.shape[1])
    query, key, value = _project(ctx, attn, key_frames, own)
    plan = band_plan(_band_spec(ctx, x, glb.shape[1]), x.device, query.dtype)
    return banded_attention(query, key, value, plan, attn.scale, poll=ctx.comm.poll_cancel)


def _attend_in_parts(ctx: TemporalContext, attn: Attention, x: torch.Tensor) -> torch.Tensor:
    """(B, h, F, d): the exchange is posted, the own frames' band computed while it travels, then the halo
    and global keys are added exactly (banded.banded_attention_in_parts)."""
    arrived = ctx.start_halo_and_globals(x, dim=1, width=ctx.settings.local_window, pad_ends=True)
    query, key, value = _project(ctx, attn, x, slice(None))

    def rest() -> tuple[torch.Tensor, torch.Tensor]:
        left, right, glb = arrived()
        _, rest_key, rest_value = _project(ctx, attn, torch.cat([left, right, glb], dim=1), None)
        return rest_key, rest_value

    plans = part_plans(_band_spec(ctx, x, len(ctx.global_indices)), x.device, query.dtype)
    return banded_attention_in_parts(query, key, value, rest, plans, attn.scale, poll=ctx.comm.poll_cancel)


def _band_spec(ctx: TemporalContext, x: torch.Tensor, globals_count: int) -> BandSpec:
    """This rank's banded attention at the current step."""
    settings = ctx.settings
    assert ctx.layout is not None
    phase = settings.phase_bias
    return BandSpec(
        frames=x.shape[1],
        start=ctx.span[0],
        total=ctx.layout.total,
        width=settings.local_window,
        globals_count=globals_count,
        mask_ends=settings.mode == "exact",
        local_bonus=settings.local_bias if phase and not ctx.global_phase else 0.0,
        global_bonus=settings.global_bias if phase and ctx.global_phase else 0.0,
        attn_scale=settings.attn_scale,
        token_num_scale=settings.token_num_scale,
    )


def _project(
    ctx: TemporalContext, attn: Attention, frames: torch.Tensor, queries: slice | None
) -> tuple[torch.Tensor | None, torch.Tensor, torch.Tensor]:
    """(query, key, value) with heads split, (B, h, frames, d). Keys and values cover every frame; queries
    only the frames in `queries` (None: no queries). In chunks of the batch (a long clip's projection is
    the layer's largest single pass), looking for a Cancel between them."""
    heads = attn.heads
    elements, poll = chunk_elements(frames.device), ctx.comm.poll_cancel
    if all(type(layer) is nn.Linear for layer in (attn.to_q, attn.to_k, attn.to_v)):
        # One projection for everything asked: the queries are rows of it, so the frames are read once.
        weight, bias = _fused_qkv(attn)
        inner = attn.to_q.out_features
        if queries is None:
            weight, bias = weight[inner:], None if bias is None else bias[inner:]
        projected = in_chunks(lambda rows: F.linear(rows, weight, bias), frames, elements, poll)
        offset = 0 if queries is None else inner
        query = None if queries is None else _split_heads(projected[:, queries, :inner], heads)
        key = _split_heads(projected[:, :, offset : offset + inner], heads)
        value = _split_heads(projected[:, :, offset + inner :], heads)
        return query, key, value

    # Projections with adapters of their own.
    def split(layer: nn.Module, rows: torch.Tensor) -> torch.Tensor:
        return _split_heads(in_chunks(layer, rows, elements, poll), heads)

    query = None if queries is None else split(attn.to_q, frames[:, queries])
    return query, split(attn.to_k, frames), split(attn.to_v, frames)


def _fused_qkv(attn: Attention) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The weights (and biases, if any) of to_q, to_k and to_v stacked, for one projection."""
    layers = (attn.to_q, attn.to_k, attn.to_v)
    weight = torch.cat([layer.weight for layer in layers])
    if all(layer.bias is None for layer in layers):
        return weight, None
    biases = [layer.bias if layer.bias is not None else layer.weight.new_zeros(layer.out_features) for layer in layers]
    return weight, torch.cat(biases)


def _split_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    batch, frames, inner = x.shape
    return x.view(batch, frames, heads, inner // heads).transpose(1, 2)
