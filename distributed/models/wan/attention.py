"""Frame-block dual-scope attention for DiT video models whose tokens run frame by frame (Wan).

A DiT flattens a latent video into tokens in (frame, row, column) order, so the tokens of one latent frame
are one contiguous run. Dual-scope attention on such a model (docs/algorithm.md section 9): the tokens of
latent frame g attend to every token of the frames g-P .. g+P that exist in the video, plus every token of
the G global frames. Keys and values arrive after RoPE, each rotated at its own global frame position, so
halo and global keys from other ranks are exact as they are.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

from ...engine.banded import PartialAttention, attention_with_lse, fused_lse_available, join_partials
from ...engine.context import TemporalContext

HeadsFirst = tuple[torch.Tensor, torch.Tensor]  # keys and values (B, h, frames, tokens, d)


def dual_scope_self_attention(
    ctx: TemporalContext,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    heads: int,
    tokens_per_frame: int,
    overlap: bool = True,
) -> torch.Tensor:
    """q, k, v: (B, own frames * tokens, heads * d) for this rank's clip. Returns (B, tokens, heads * d).

    Exchanges keys and values for both scopes: a halo of P frames with the neighbours and the G global
    frames. With several ranks and `overlap`, the own frames' windows are attended while the exchange
    travels, where a fused kernel gives the softmax normaliser to join the parts exactly
    (frame_window_attention_in_parts); otherwise the attention waits for the exchange and runs in one pass.
    """
    ctx.cancel_checkpoint()
    settings = ctx.settings
    batch, length, width = q.shape
    frames = length // tokens_per_frame
    keys, values = (t.reshape(batch, frames, tokens_per_frame, width) for t in (k, v))
    # Keys and values travel as two exchanges posted together, so they move at the same time: one stacked
    # tensor of both would cost a copy of the whole clip's keys and values on every rank, one rank included.
    exchange = ctx.start_halo_and_globals_of((keys, values), dim=1, width=settings.local_window, pad_ends=False)
    local_bonus = settings.local_bias if settings.phase_bias and not ctx.global_phase else 0.0
    global_bonus = settings.global_bias if settings.phase_bias and ctx.global_phase else 0.0
    queries = _heads_first(q.view(batch, frames, tokens_per_frame, width), heads)
    if overlap and ctx.comm.world_size > 1 and fused_lse_available(q.device):

        def rest() -> tuple[HeadsFirst, HeadsFirst, HeadsFirst]:
            (k_left, k_right, k_glb), (v_left, v_right, v_glb) = exchange()
            pairs = ((k_left, v_left), (k_right, v_right), (k_glb, v_glb))
            return tuple((_heads_first(pk, heads), _heads_first(pv, heads)) for pk, pv in pairs)

        out = frame_window_attention_in_parts(
            queries,
            (_heads_first(keys, heads), _heads_first(values, heads)),
            rest,
            window=settings.local_window,
            local_bonus=local_bonus,
            global_bonus=global_bonus,
            start=ctx.span[0],
        )
    else:
        (k_left, k_right, k_glb), (v_left, v_right, v_glb) = exchange()
        out = frame_window_attention(
            queries,
            [_heads_first(piece, heads) for piece in (k_left, keys, k_right)],
            [_heads_first(piece, heads) for piece in (v_left, values, v_right)],
            _heads_first(k_glb, heads),
            _heads_first(v_glb, heads),
            left=k_left.shape[1],
            window=settings.local_window,
            local_bonus=local_bonus,
            global_bonus=global_bonus,
            start=ctx.span[0],
        )
    # (B, heads, frames, tokens, d) -> (B, frames * tokens, heads * d)
    return out.permute(0, 2, 3, 1, 4).reshape(batch, length, width)


def frame_window_attention(
    q: torch.Tensor,
    k_ext: torch.Tensor | Sequence[torch.Tensor],
    v_ext: torch.Tensor | Sequence[torch.Tensor],
    k_glb: torch.Tensor,
    v_glb: torch.Tensor,
    left: int,
    window: int,
    local_bonus: float = 0.0,
    global_bonus: float = 0.0,
    start: int = 0,
    block_frames: int | None = None,
    lse: torch.Tensor | None = None,
) -> torch.Tensor:
    """q: (B, h, F, T, d) own frames; k/v_ext: (B, h, E, T, d) as [left halo ; own ; right halo], or the
    pieces of it along the frame axis, which are never joined into one clip-sized tensor; k/v_glb:
    (B, h, G, T, d). Returns (B, h, F, T, d); fills `lse` (B, h, F*T), when given, with each query's log
    normaliser.

    Queries go in blocks of frames aligned on the global timeline (`start` is the first own frame's global
    index), so the blocks are the same whatever the split over ranks. A block attends to the union of its
    frames' windows, masked per frame; a block whose frames share one window needs no mask, which makes a
    window covering the clip plain full attention. Blocks hold about QUERY_TOKENS query tokens: one frame
    each for real resolutions, several for tiny test models, where per-call overhead would dominate.
    """
    batch, heads, frames, tokens, dim = q.shape
    k_pieces, v_pieces = ([x] if isinstance(x, torch.Tensor) else list(x) for x in (k_ext, v_ext))
    extended = sum(piece.shape[2] for piece in k_pieces)
    block = block_frames or _query_block(tokens)
    glb_keys = k_glb.flatten(2, 3)
    glb_values = v_glb.flatten(2, 3)
    out = q.new_empty((batch, heads, frames * tokens, dim))
    for first, last in _blocks(frames, start, block):
        windows = [_window(frame, left, window, extended) for frame in range(first, last)]
        lo, hi = min(w[0] for w in windows), max(w[1] for w in windows)
        keys = torch.cat([*_frame_run(k_pieces, lo, hi), glb_keys], dim=2)
        values = torch.cat([*_frame_run(v_pieces, lo, hi), glb_values], dim=2)
        mask = _block_mask(windows, lo, hi, tokens, glb_keys.shape[2], local_bonus, global_bonus, q)
        queries = q[:, :, first:last].flatten(2, 3)
        rows = slice(first * tokens, last * tokens)
        if lse is not None:
            out[:, :, rows], lse[:, :, rows] = attention_with_lse(queries, keys, values, mask, dim**-0.5)
        else:
            out[:, :, rows] = F.scaled_dot_product_attention(queries, keys, values, attn_mask=mask)
    return out.view(q.shape)


def frame_window_attention_in_parts(
    q: torch.Tensor,
    own: HeadsFirst,
    rest: Callable[[], tuple[HeadsFirst, HeadsFirst, HeadsFirst]],
    window: int,
    local_bonus: float = 0.0,
    global_bonus: float = 0.0,
    start: int = 0,
    block_frames: int | None = None,
) -> torch.Tensor:
    """frame_window_attention while the halo and global frames travel: the same result up to rounding.

    q (B, h, F, T, d) and own (keys, values of the own frames) are at hand; `rest` waits for the exchange
    and gives the (keys, values) of the left halo, the right halo and the global frames. First each query
    attends to its window's own frames, keeping its softmax normaliser; then every query to the global
    frames, and each of the P frames nearest a clip end to the halo frames its window reaches, in blocks of
    frames like the own part (one frame per call at real resolutions, where those keys are one run and need
    no mask). Each part is joined by the normalisers (join_partials); a bonus that is the same over a
    part's keys only shifts its normaliser.
    """
    frames, tokens, dim = q.shape[2:]
    scale = dim**-0.5
    empty = q.new_empty(q.shape[:2] + (0, tokens, dim))
    lse = q.new_empty(q.shape[:2] + (frames * tokens,), dtype=torch.promote_types(q.dtype, torch.float32))
    out = frame_window_attention(q, *own, empty, empty, 0, window, local_bonus, 0.0, start, block_frames, lse)
    result = PartialAttention(out.view(q.shape[:2] + (frames * tokens, dim)), lse)
    (k_left, v_left), (k_right, v_right), (k_glb, v_glb) = rest()
    if k_glb.shape[2]:
        seen = PartialAttention(
            *attention_with_lse(q.flatten(2, 3), k_glb.flatten(2, 3), v_glb.flatten(2, 3), None, scale)
        )
        seen.lse += global_bonus
        _join(result, seen, slice(None))
    block = block_frames or _query_block(tokens)
    halo_left, halo_right = k_left.shape[2], k_right.shape[2]
    # The halo frames each own frame's window reaches: [lo, hi) of the left and of the right halo.
    left_spans = {f: (max(0, f + halo_left - window), halo_left) for f in range(min(frames, window)) if halo_left}
    right_spans = {
        f: (0, min(halo_right, window - (frames - f) + 1)) for f in range(max(0, frames - window), frames) if halo_right
    }
    for spans, keys, values in ((left_spans, k_left, v_left), (right_spans, k_right, v_right)):
        _join_halo(result, q, keys, values, spans, local_bonus, scale, block)
    return result.out.view(q.shape)


def _join_halo(
    result: PartialAttention,
    q: torch.Tensor,
    keys: torch.Tensor,
    values: torch.Tensor,
    spans: dict[int, tuple[int, int]],
    bonus: float,
    scale: float,
    block: int,
) -> None:
    """Adds the attention of the own frames in `spans` (consecutive, each seeing at least one halo frame) to
    the halo frames [lo, hi) of keys/values (B, h, n, T, d) that each sees, `block` frames per call."""
    tokens = q.shape[3]
    frames = sorted(spans)
    for index in range(0, len(frames), block):
        first, last = frames[index], frames[min(len(frames), index + block) - 1] + 1
        windows = [spans[frame] for frame in range(first, last)]
        lo, hi = min(w[0] for w in windows), max(w[1] for w in windows)
        mask = _block_mask(windows, lo, hi, tokens, 0, bonus, 0.0, q)
        queries = q[:, :, first:last].flatten(2, 3)
        seen = attention_with_lse(
            queries, keys[:, :, lo:hi].flatten(2, 3), values[:, :, lo:hi].flatten(2, 3), mask, scale
        )
        _join(result, PartialAttention(*seen), slice(first * tokens, last * tokens))


def _join(result: PartialAttention, seen: PartialAttention, rows: slice) -> None:
    """result (out (B, h, F*T, d), lse (B, h, F*T)) over the union of its keys and seen's, for `rows`, in place."""
    joint = join_partials(PartialAttention(result.out[:, :, rows], result.lse[:, :, rows]), seen)
    result.out[:, :, rows], result.lse[:, :, rows] = joint.out, joint.lse


QUERY_TOKENS = 256  # query tokens per attention call, when frames are small


def _query_block(tokens: int) -> int:
    """Frames of queries per attention call: about QUERY_TOKENS tokens, at least one frame."""
    return max(1, QUERY_TOKENS // tokens)


def _frame_run(pieces: list[torch.Tensor], lo: int, hi: int) -> list[torch.Tensor]:
    """Frames [lo, hi) of the pieces (B, h, n, T, d) laid end to end, as slices (B, h, frames * T, d)."""
    run, offset = [], 0
    for piece in pieces:
        first, last = max(lo, offset), min(hi, offset + piece.shape[2])
        if first < last:
            run.append(piece[:, :, first - offset : last - offset].flatten(2, 3))
        offset += piece.shape[2]
    return run


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
