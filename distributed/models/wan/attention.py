"""Frame-block dual-scope attention for DiT video models whose tokens run frame by frame (Wan).

A DiT flattens a latent video into tokens in (frame, row, column) order, so the tokens of one latent frame
are one contiguous run. Dual-scope attention on such a model (docs/algorithm.md section 9): the tokens of
latent frame g attend to every token of the frames g-P .. g+P that exist in the video, plus every token of
the G global frames. Keys and values arrive after RoPE, each rotated at its own global frame position, so
halo and global keys from other ranks are exact as they are.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ...engine.context import TemporalContext


def dual_scope_self_attention(
    ctx: TemporalContext, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int, tokens_per_frame: int
) -> torch.Tensor:
    """q, k, v: (B, own frames * tokens, heads * d) for this rank's clip. Returns (B, tokens, heads * d).

    Exchanges one stacked K/V tensor per scope: a halo of P frames with the neighbours and the G global frames.
    """
    ctx.cancel_checkpoint()
    settings = ctx.settings
    batch, length, width = q.shape
    frames = length // tokens_per_frame
    kv = torch.stack([k, v]).view(2, batch, frames, tokens_per_frame, width)
    left, right, glb = ctx.halo_and_globals(kv, dim=2, width=settings.local_window, pad_ends=False)
    extended = torch.cat([left, kv, right], dim=2) if left.shape[2] or right.shape[2] else kv
    local_bonus = settings.local_bias if settings.phase_bias and not ctx.global_phase else 0.0
    global_bonus = settings.global_bias if settings.phase_bias and ctx.global_phase else 0.0
    out = frame_window_attention(
        _heads_first(q.view(batch, frames, tokens_per_frame, width), heads),
        _heads_first(extended[0], heads),
        _heads_first(extended[1], heads),
        _heads_first(glb[0], heads),
        _heads_first(glb[1], heads),
        left=left.shape[2],
        window=settings.local_window,
        local_bonus=local_bonus,
        global_bonus=global_bonus,
        start=ctx.span[0],
    )
    # (B, heads, frames, tokens, d) -> (B, frames * tokens, heads * d)
    return out.permute(0, 2, 3, 1, 4).reshape(batch, length, width)


def frame_window_attention(
    q: torch.Tensor,
    k_ext: torch.Tensor,
    v_ext: torch.Tensor,
    k_glb: torch.Tensor,
    v_glb: torch.Tensor,
    left: int,
    window: int,
    local_bonus: float = 0.0,
    global_bonus: float = 0.0,
    start: int = 0,
    block_frames: int | None = None,
) -> torch.Tensor:
    """q: (B, h, F, T, d) own frames; k/v_ext: (B, h, E, T, d) as [left halo ; own ; right halo];
    k/v_glb: (B, h, G, T, d). Returns (B, h, F, T, d).

    Queries go in blocks of frames aligned on the global timeline (`start` is the first own frame's global
    index), so the blocks are the same whatever the split over ranks. A block attends to the union of its
    frames' windows, masked per frame; a block whose frames share one window needs no mask, which makes a
    window covering the clip plain full attention. Blocks hold about QUERY_TOKENS query tokens: one frame
    each for real resolutions, several for tiny test models, where per-call overhead would dominate.
    """
    batch, heads, frames, tokens, dim = q.shape
    extended = k_ext.shape[2]
    block = block_frames or max(1, QUERY_TOKENS // tokens)
    glb_keys = k_glb.flatten(2, 3)
    glb_values = v_glb.flatten(2, 3)
    out = torch.empty_like(q)
    for first, last in _blocks(frames, start, block):
        windows = [_window(frame, left, window, extended) for frame in range(first, last)]
        lo, hi = min(w[0] for w in windows), max(w[1] for w in windows)
        keys = torch.cat([k_ext[:, :, lo:hi].flatten(2, 3), glb_keys], dim=2)
        values = torch.cat([v_ext[:, :, lo:hi].flatten(2, 3), glb_values], dim=2)
        mask = _block_mask(windows, lo, hi, tokens, glb_keys.shape[2], local_bonus, global_bonus, q)
        queries = q[:, :, first:last].flatten(2, 3)
        result = F.scaled_dot_product_attention(queries, keys, values, attn_mask=mask)
        out[:, :, first:last] = result.view(batch, heads, last - first, tokens, dim)
    return out


QUERY_TOKENS = 256  # query tokens per attention call, when frames are small


def _blocks(frames: int, start: int, block: int) -> list[tuple[int, int]]:
    """Runs [first, last) of own frames that fall into one global block of `block` frames."""
    runs: list[tuple[int, int]] = []
    frame = 0
    while frame < frames:
        block_end = ((start + frame) // block + 1) * block - start
        runs.append((frame, min(frames, block_end)))
        frame = runs[-1][1]
    return runs


def _window(frame: int, left: int, window: int, extended: int) -> tuple[int, int]:
    """Key frames [lo, hi) of the extended clip that own frame `frame` sees (missing frames are absent)."""
    centre = frame + left
    return max(0, centre - window), min(extended, centre + window + 1)


def _block_mask(
    windows: list[tuple[int, int]],
    lo: int,
    hi: int,
    tokens: int,
    global_keys: int,
    local_bonus: float,
    global_bonus: float,
    like: torch.Tensor,
) -> torch.Tensor | None:
    """Additive bias over the block's keys, or None when no key needs masking or a bonus."""
    shared = all(window == (lo, hi) for window in windows)
    if shared and not local_bonus and not global_bonus:
        return None
    if shared:  # one row for every query: broadcast
        mask = torch.full((1, (hi - lo) * tokens + global_keys), global_bonus, dtype=like.dtype, device=like.device)
        mask[:, : (hi - lo) * tokens] = local_bonus
        return mask
    frame_bias = torch.full((len(windows), hi - lo), float("-inf"), dtype=like.dtype, device=like.device)
    for row, (first, last) in enumerate(windows):
        frame_bias[row, first - lo : last - lo] = local_bonus
    local = frame_bias.repeat_interleave(tokens, dim=0).repeat_interleave(tokens, dim=1)
    glb = torch.full((local.shape[0], global_keys), global_bonus, dtype=like.dtype, device=like.device)
    return torch.cat([local, glb], dim=1)


def _heads_first(x: torch.Tensor, heads: int) -> torch.Tensor:
    """(B, frames, tokens, heads * d) -> (B, heads, frames, tokens, d)."""
    batch, frames, tokens, width = x.shape
    return x.view(batch, frames, tokens, heads, width // heads).permute(0, 3, 1, 2, 4)
