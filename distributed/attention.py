"""Dual-scope temporal attention (algorithm.md section 3), banded so memory grows with F * (2P+1+G).

Each rank sends the attention *input* of its halo and global frames, not K and V: one tensor instead
of two, and to_k / to_v are applied to the received frames locally.
"""

from __future__ import annotations

import math
from functools import lru_cache

import torch
import torch.nn.functional as F
from diffusers.models.attention_processor import Attention, AttnProcessor2_0

from .context import TemporalContext

# Upper bound on elements of the key/value blocks materialised per chunk of the B*H*W axis.
CHUNK_ELEMENTS = 1 << 23


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
        ctx = self.ctx
        if not ctx.active:
            return self.plain(attn, hidden_states)
        settings = ctx.settings
        width = settings.local_window
        x = hidden_states
        left, right = ctx.borrow(x, dim=1, width=width, pad_ends=True)
        glb = ctx.gather_global(x, dim=1) if ctx.global_indices else x[:, :0]
        # One copy of every key frame, [left ; own ; right ; globals], shared by to_k and to_v.
        key_frames = torch.cat([left, x, right, glb], dim=1)

        heads = attn.heads
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
        out = banded_attention(query, key, value, plan, attn.scale)
        out = out.transpose(1, 2).reshape(x.shape[0], x.shape[1], -1).to(x.dtype)
        out = attn.to_out[1](attn.to_out[0](out))
        if attn.residual_connection:
            out = out + hidden_states
        return out / attn.rescale_output_factor


def _split_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    batch, frames, inner = x.shape
    return x.view(batch, frames, heads, inner // heads).transpose(1, 2)


class BandPlan:
    """Blocks of queries with their key window and additive bias, for one rank's frames."""

    def __init__(self, block: int, blocks: int, width: int, globals_count: int, bias: torch.Tensor, row_scale):
        self.block = block
        self.blocks = blocks
        self.width = width
        self.globals_count = globals_count
        self.bias = bias  # (blocks, block, block + 2 * width + globals_count)
        self.row_scale = row_scale  # (blocks, block, 1) or None


@lru_cache(maxsize=64)
def band_plan(
    frames: int,
    start: int,
    total: int,
    width: int,
    globals_count: int,
    mask_ends: bool,
    local_bonus: float,
    global_bonus: float,
    attn_scale: float,
    token_num_scale: bool,
    device: torch.device,
    dtype: torch.dtype,
) -> BandPlan:
    block = max(1, min(frames, max(8, 2 * width)))
    blocks = math.ceil(frames / block)
    span = block + 2 * width
    u = torch.arange(block).view(block, 1)  # query position in its block
    w = torch.arange(span).view(1, span)  # key position in the block's window
    b = torch.arange(blocks).view(blocks, 1, 1)
    query_frame = b * block + u  # own index
    key_ext = b * block + w  # index into [left halo ; own ; right halo]
    key_global = start - width + key_ext
    visible = (w >= u) & (w <= u + 2 * width) & (key_ext < frames + 2 * width)
    if mask_ends:
        visible &= (key_global >= 0) & (key_global < total)
    real_query = query_frame < frames
    visible = torch.where(real_query, visible, torch.ones_like(visible))  # padded rows: anything finite
    local = torch.full(visible.shape, float("-inf"))
    local[visible] = local_bonus
    glb = torch.full((blocks, block, globals_count), global_bonus)
    bias = torch.cat([local, glb], dim=-1)
    row_scale = None
    if token_num_scale or attn_scale != 1.0:
        counts = visible.sum(-1, keepdim=True).double() + globals_count
        factor = torch.log(counts) / math.log(16) if token_num_scale else torch.ones_like(counts)
        row_scale = (attn_scale * factor).to(device=device, dtype=dtype)
    return BandPlan(block, blocks, width, globals_count, bias.to(device=device, dtype=dtype), row_scale)


def banded_attention(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, plan: BandPlan, scale: float
) -> torch.Tensor:
    """query (B, h, F, d); key/value (B, h, F + 2P + G, d) as [left ; own ; right ; globals].

    Returns (B, h, F, d). Queries are processed in blocks; each block sees its window of 2P + block
    local keys plus the G global keys, so scores and key copies are O(F * (block + 2P + G)).
    """
    batch, heads, frames, dim = query.shape
    block, blocks, width, count = plan.block, plan.blocks, plan.width, plan.globals_count
    pad = blocks * block - frames
    local_len = frames + 2 * width
    out = torch.empty_like(query)
    per_item = heads * blocks * (block + 2 * width + count) * dim * 2
    step = max(1, CHUNK_ELEMENTS // max(1, per_item))
    for lo in range(0, batch, step):
        hi = min(batch, lo + step)
        q = F.pad(query[lo:hi], (0, 0, 0, pad)).reshape(hi - lo, heads, blocks, block, dim)
        if plan.row_scale is not None:
            q = q * plan.row_scale
        keys = _windows(key[lo:hi], local_len, pad, block, width, count)
        values = _windows(value[lo:hi], local_len, pad, block, width, count)
        merged = hi - lo
        result = F.scaled_dot_product_attention(
            q.reshape(merged * heads, blocks, block, dim),
            keys.reshape(merged * heads, blocks, -1, dim),
            values.reshape(merged * heads, blocks, -1, dim),
            attn_mask=plan.bias.unsqueeze(0),
            scale=scale,
        )
        out[lo:hi] = result.reshape(merged, heads, blocks * block, dim)[:, :, :frames]
    return out


def _windows(x: torch.Tensor, local_len: int, pad: int, block: int, width: int, count: int) -> torch.Tensor:
    """(B, h, blocks, block + 2P + G, d): each block's local window followed by the global keys."""
    local = F.pad(x[:, :, :local_len], (0, 0, 0, pad))
    windows = local.unfold(2, block + 2 * width, block).transpose(-1, -2)
    glb = x[:, :, local_len:].unsqueeze(2).expand(-1, -1, windows.shape[2], count, -1)
    return torch.cat([windows, glb], dim=3)
