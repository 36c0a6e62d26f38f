"""Banded dual-scope attention (docs/algorithm.md section 3): the masks, biases and blocked SDPA.

Model-independent: a family hands over queries for its own frames and keys/values laid out as
[left halo ; own ; right halo ; global frames] along the frame axis; memory grows with F * (2P+1+G).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import lru_cache

import torch
import torch.nn.functional as F

# Upper bound on elements of the key/value blocks materialised per chunk of the batch axis.
CHUNK_ELEMENTS = 1 << 23


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
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    plan: BandPlan,
    scale: float,
    poll: Callable[[], bool] = lambda: False,
) -> torch.Tensor:
    """query (B, h, F, d); key/value (B, h, F + 2P + G, d) as [left ; own ; right ; globals].

    Returns (B, h, F, d), a view of a frames-first (B, F, h, d) tensor, so the caller's merge of the
    heads costs no copy. Queries are processed in blocks; each block sees its window of 2P + block local
    keys plus the G global keys, so scores and key copies are O(F * (block + 2P + G)). Every input is
    copied once, straight into the layout the attention kernel reads. `poll` runs before each chunk of
    the batch; True skips the rest (a Cancel inside a long clip's attention, see engine.comm.poll_cancel).
    """
    batch, heads, frames, dim = query.shape
    block, blocks, width, count = plan.block, plan.blocks, plan.width, plan.globals_count
    length = block + 2 * width + count
    out = query.new_empty((batch, frames, heads, dim))
    per_item = heads * blocks * length * dim * 2
    step = max(1, CHUNK_ELEMENTS // max(1, per_item))
    row_scale = None if plan.row_scale is None else plan.row_scale.reshape(-1, 1)[:frames]
    for lo in range(0, batch, step):
        if poll():
            break
        hi = min(batch, lo + step)
        merged = (hi - lo) * heads
        q = _blocked_queries(query[lo:hi], blocks * block, row_scale)
        keys = _windows(key[lo:hi], frames, plan)
        values = _windows(value[lo:hi], frames, plan)
        result = F.scaled_dot_product_attention(
            q.view(merged, blocks, block, dim),
            keys.view(merged, blocks, length, dim),
            values.view(merged, blocks, length, dim),
            attn_mask=plan.bias.unsqueeze(0),
            scale=scale,
        )
        out[lo:hi] = result.view(hi - lo, heads, blocks * block, dim)[:, :, :frames].transpose(1, 2)
    return out.transpose(1, 2)


def _blocked_queries(query: torch.Tensor, padded: int, row_scale: torch.Tensor | None) -> torch.Tensor:
    """(B, h, padded, d) contiguous: the queries, scaled per row if asked, zero rows after the last frame."""
    batch, heads, frames, dim = query.shape
    q = query.new_empty((batch, heads, padded, dim))
    q[:, :, frames:] = 0
    if row_scale is None:
        q[:, :, :frames] = query
    else:
        torch.mul(query, row_scale, out=q[:, :, :frames])
    return q


def _windows(x: torch.Tensor, frames: int, plan: BandPlan) -> torch.Tensor:
    """(B, h, blocks, block + 2P + G, d): each block's local window followed by the global keys.

    x: (B, h, F + 2P + G, d). Window rows past the clip's last frame (a partial last block) are zero;
    the plan's bias masks them.
    """
    batch, heads, _, dim = x.shape
    block, blocks = plan.block, plan.blocks
    span = block + 2 * plan.width
    local_len = frames + 2 * plan.width
    windows = x.new_empty((batch, heads, blocks, span + plan.globals_count, dim))
    whole = (local_len - span) // block + 1  # blocks whose window lies inside the clip
    windows[:, :, :whole, :span] = x[:, :, :local_len].unfold(2, span, block)[:, :, :whole].transpose(-1, -2)
    for b in range(whole, blocks):
        rows = local_len - b * block
        windows[:, :, b, :rows] = x[:, :, b * block : local_len]
        windows[:, :, b, rows:span] = 0
    windows[:, :, :, span:] = x[:, :, local_len:].unsqueeze(2)
    return windows
