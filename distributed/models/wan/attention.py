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
    settings = ctx.settings
    batch, length, width = q.shape
    frames = length // tokens_per_frame
    kv = torch.stack([k, v]).view(2, batch, frames, tokens_per_frame, width)
    left, right = ctx.borrow(kv, dim=2, width=settings.local_window, pad_ends=False)
    extended = torch.cat([left, kv, right], dim=2) if left.shape[2] or right.shape[2] else kv
    glb = ctx.gather_global(kv, dim=2) if ctx.global_indices else kv[:, :, :0]
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
) -> torch.Tensor:
    """q: (B, h, F, T, d) own frames; k/v_ext: (B, h, E, T, d) as [left halo ; own ; right halo];
    k/v_glb: (B, h, G, T, d). Returns (B, h, F, T, d).

    Frames whose local window is the same share one SDPA call (all of them when the window covers the clip).
    """
    batch, heads, frames, tokens, dim = q.shape
    extended = k_ext.shape[2]
    glb_keys = k_glb.flatten(2, 3)
    glb_values = v_glb.flatten(2, 3)
    out = torch.empty_like(q)
    for first, last, lo, hi in _window_groups(frames, extended, left, window):
        keys = torch.cat([k_ext[:, :, lo:hi].flatten(2, 3), glb_keys], dim=2)
        values = torch.cat([v_ext[:, :, lo:hi].flatten(2, 3), glb_values], dim=2)
        mask = None
        if local_bonus or global_bonus:
            mask = torch.full((1, keys.shape[2]), global_bonus, dtype=q.dtype, device=q.device)
            mask[:, : (hi - lo) * tokens] = local_bonus
        queries = q[:, :, first:last].flatten(2, 3)
        result = F.scaled_dot_product_attention(queries, keys, values, attn_mask=mask)
        out[:, :, first:last] = result.view(batch, heads, last - first, tokens, dim)
    return out


def _window_groups(frames: int, extended: int, left: int, window: int) -> list[tuple[int, int, int, int]]:
    """Runs of own frames [first, last) sharing the local key frames [lo, hi) of the extended clip."""
    groups: list[tuple[int, int, int, int]] = []
    for frame in range(frames):
        centre = frame + left
        lo, hi = max(0, centre - window), min(extended, centre + window + 1)
        if groups and groups[-1][2:] == (lo, hi):
            groups[-1] = (groups[-1][0], frame + 1, lo, hi)
        else:
            groups.append((frame, frame + 1, lo, hi))
    return groups


def _heads_first(x: torch.Tensor, heads: int) -> torch.Tensor:
    """(B, frames, tokens, heads * d) -> (B, heads, frames, tokens, d)."""
    batch, frames, tokens, width = x.shape
    return x.view(batch, frames, tokens, heads, width // heads).permute(0, 3, 1, 2, 4)
