"""Dual-scope temporal attention for the UNet3D family (docs/algorithm.md section 3).

Each rank sends the attention *input* of its halo and global frames, not K and V: one tensor instead
of two, and to_k / to_v are applied to the received frames locally.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers.models.attention_processor import Attention, AttnProcessor2_0
from torch import nn

from ...engine.banded import band_plan, banded_attention
from ...engine.context import TemporalContext

PROFILE_LABEL = "video_infinity.temporal_attention"


class DualScopeAttnProcessor:
    """Attention processor for the temporal self-attentions of a UNet3D (input (B*H*W, F, C))."""

    def __init__(self, ctx: TemporalContext):
        self.ctx = ctx
        self.plain = AttnProcessor2_0()

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
        settings = ctx.settings
        width = settings.local_window
        x = hidden_states
        left, right, glb = ctx.halo_and_globals(x, dim=1, width=width, pad_ends=True)
        # One copy of every key frame, [left ; own ; right ; globals], shared by to_k and to_v.
        key_frames = torch.cat([left, x, right, glb], dim=1)

        heads = attn.heads
        if all(type(layer) is nn.Linear for layer in (attn.to_q, attn.to_k, attn.to_v)):
            # One projection to queries, keys and values over every key frame: the own frames' queries
            # are rows of it, so the frames are read once.
            projected = F.linear(key_frames, *_fused_qkv(attn))
            inner = attn.to_q.out_features
            own = slice(left.shape[1], left.shape[1] + x.shape[1])
            query = _split_heads(projected[:, own, :inner], heads)
            key = _split_heads(projected[:, :, inner : 2 * inner], heads)
            value = _split_heads(projected[:, :, 2 * inner :], heads)
        else:  # projections with adapters of their own
            query = _split_heads(attn.to_q(x), heads)
            key = _split_heads(attn.to_k(key_frames), heads)
            value = _split_heads(attn.to_v(key_frames), heads)
        start, _ = ctx.span
        plan = band_plan(
            frames=x.shape[1],
            start=start,
            total=ctx.layout.total,  # type: ignore[union-attr]
            width=width,
            globals_count=glb.shape[1],
            mask_ends=settings.mode == "exact",
            local_bonus=settings.local_bias if settings.phase_bias and not ctx.global_phase else 0.0,
            global_bonus=settings.global_bias if settings.phase_bias and ctx.global_phase else 0.0,
            attn_scale=settings.attn_scale,
            token_num_scale=settings.token_num_scale,
            device=x.device,
            dtype=query.dtype,
        )
        out = banded_attention(query, key, value, plan, attn.scale, poll=ctx.comm.poll_cancel)
        out = out.transpose(1, 2).reshape(x.shape[0], x.shape[1], -1).to(x.dtype)
        out = attn.to_out[1](attn.to_out[0](out))
        if attn.residual_connection:
            out = out + hidden_states
        if attn.rescale_output_factor != 1.0:
            out = out / attn.rescale_output_factor
        return out


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
