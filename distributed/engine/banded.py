"""Banded dual-scope attention (docs/algorithm.md section 3): the masks, biases and blocked SDPA.

Model-independent: a family hands over queries for its own frames and keys/values laid out as
[left halo ; own ; right halo ; global frames] along the frame axis; memory grows with F * (2P+1+G).

With several ranks the attention runs in two parts (`banded_attention_in_parts`): the band over the
rank's own frames while the halo and global frames are still travelling, then the halo and global keys,
joined exactly by their softmax normalisers (the merge of online softmax).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache

import torch
import torch.nn.functional as F

# Upper bound on elements of the key/value blocks materialised per chunk of the batch axis: on a CPU about
# a cache's worth, so a long clip's attention needs no more working memory per frame than a short one's
# (docs/5, "Working memory per frame"); on an accelerator large enough to keep it busy.
CPU_CHUNK_ELEMENTS = 1 << 18
ACCELERATOR_CHUNK_ELEMENTS = 1 << 23


def chunk_elements(device: torch.device) -> int:
    """Key/value elements materialised per chunk of the batch axis on `device`."""
    return CPU_CHUNK_ELEMENTS if device.type == "cpu" else ACCELERATOR_CHUNK_ELEMENTS


class BandPlan:
    """Blocks of queries with their key window and additive bias, for one rank's frames."""

    def __init__(self, block: int, blocks: int, width: int, globals_count: int, bias: torch.Tensor, row_scale):
        self.block = block
        self.blocks = blocks
        self.width = width
        self.globals_count = globals_count
        self.bias = bias  # (blocks, block, block + 2 * width + globals_count)
        self.row_scale = row_scale  # (blocks, block, 1) or None


@dataclass(frozen=True)
class RestPart:
    """Some of the keys that are not the own frames', and the own frames (rows) that see them.

    keys: where they lie in the rest keys [left halo ; right halo ; globals].
    rows: the own frames that see at least one of them (None: all); the others skip this part.
    bias: (rows, keys) additive bias.
    """

    keys: slice
    rows: torch.Tensor | None
    bias: torch.Tensor


@dataclass(frozen=True)
class PartPlans:
    """The attention of one rank's frames in parts whose key sets do not overlap.

    own: the band over the own frames alone, keys laid out [P empty ; own ; P empty].
    rest: the global keys (every row sees them), then the halo keys (only the rows within P of a clip end
        see them), each part left out when it has no keys: added one after the other, each part costs
        only the rows that see it.
    row_scale: (F, 1) query scale of the whole attention (see BandSpec), or None.
    """

    own: BandPlan
    rest: tuple[RestPart, ...]
    row_scale: torch.Tensor | None


@dataclass
class PartialAttention:
    """Softmax attention over a subset of the keys: its output and each row's log normaliser.

    out (B, h, F, d); lse (B, h, F). Every row sees at least one key of the subset: part_plans leaves
    the rows that see none of the rest out of it.
    """

    out: torch.Tensor
    lse: torch.Tensor


@dataclass(frozen=True)
class BandSpec:
    """What one rank's banded attention looks like at one step; the key of the cached plans.

    frames: the rank's own frames, starting at video frame `start` of `total`.
    width: P, the local half window; globals_count: the G global keys after the halos.
    mask_ends: exact mode (the video's ends hide the halo positions past them); reference mode keeps
        the zero-padded frames visible.
    local_bonus / global_bonus: additive biases of the local and global keys (the phase bias).
    attn_scale / token_num_scale: the query scale, fixed or by the log of each row's key count.
    """

    frames: int
    start: int
    total: int
    width: int
    globals_count: int
    mask_ends: bool = True
    local_bonus: float = 0.0
    global_bonus: float = 0.0
    attn_scale: float = 1.0
    token_num_scale: bool = False


def query_block(frames: int, width: int) -> int:
    """Queries per block of the banded attention: at least 8, and 2P so a block's window is mostly its own."""
    return max(1, min(frames, max(8, 2 * width)))


@lru_cache(maxsize=64)
def band_plan(spec: BandSpec, device: torch.device, dtype: torch.dtype) -> BandPlan:
    frames, start, total, width = spec.frames, spec.start, spec.total, spec.width
    globals_count = spec.globals_count
    block = query_block(frames, width)
    blocks = math.ceil(frames / block)
    span = block + 2 * width
    u = torch.arange(block).view(block, 1)  # query position in its block
    w = torch.arange(span).view(1, span)  # key position in the block's window
    b = torch.arange(blocks).view(blocks, 1, 1)
    query_frame = b * block + u  # own index
    key_ext = b * block + w  # index into [left halo ; own ; right halo]
    key_global = start - width + key_ext
    visible = (w >= u) & (w <= u + 2 * width) & (key_ext < frames + 2 * width)
    if spec.mask_ends:
        visible &= (key_global >= 0) & (key_global < total)
    real_query = query_frame < frames
    visible = torch.where(real_query, visible, torch.ones_like(visible))  # padded rows: anything finite
    local = torch.full(visible.shape, float("-inf"))
    local[visible] = spec.local_bonus
    glb = torch.full((blocks, block, globals_count), spec.global_bonus)
    bias = torch.cat([local, glb], dim=-1)
    row_scale = None
    if spec.token_num_scale or spec.attn_scale != 1.0:
        counts = visible.sum(-1, keepdim=True).double() + globals_count
        factor = torch.log(counts) / math.log(16) if spec.token_num_scale else torch.ones_like(counts)
        row_scale = (spec.attn_scale * factor).to(device=device, dtype=dtype)
    return BandPlan(block, blocks, width, globals_count, bias.to(device=device, dtype=dtype), row_scale)


@lru_cache(maxsize=64)
def part_plans(spec: BandSpec, device: torch.device, dtype: torch.dtype) -> PartPlans:
    """band_plan's attention split into the own band and the rest (same spec, same result once merged)."""
    whole = band_plan(spec, device, dtype)
    frames, start, width = spec.frames, spec.start, spec.width
    # The own frames as a video of their own: its ends mask exactly the halo positions.
    own_band = BandSpec(frames, 0, frames, width, 0, mask_ends=True, local_bonus=spec.local_bonus)
    own = band_plan(own_band, device, dtype)
    query = torch.arange(frames).view(frames, 1)
    halo = torch.arange(width).view(1, width)
    left_frame = start - width + halo  # global index of left halo key j
    right_frame = start + frames + halo
    left_visible = halo >= query  # |(start + i) - left_frame| <= P
    right_visible = halo <= query - frames + width
    if spec.mask_ends:
        left_visible &= left_frame >= 0
        right_visible &= right_frame < spec.total
    local = torch.cat([left_visible, right_visible], dim=1)
    parts = []
    if spec.globals_count:
        bias = torch.full((frames, spec.globals_count), float(spec.global_bonus), device=device, dtype=dtype)
        parts.append(RestPart(slice(2 * width, 2 * width + spec.globals_count), None, bias))
    # Only rows near the clip's ends see a halo key; skipping the others saves their work and keeps every
    # row of the part's attention non-empty, which the fused kernel needs.
    seeing = local.any(dim=1)
    if bool(seeing.any()):
        rows = None if bool(seeing.all()) else seeing.nonzero().flatten()
        halo_bias = torch.where(local, spec.local_bonus, float("-inf"))
        if rows is not None:
            halo_bias, rows = halo_bias[rows], rows.to(device)
        parts.append(RestPart(slice(0, 2 * width), rows, halo_bias.to(device=device, dtype=dtype)))
    row_scale = None if whole.row_scale is None else whole.row_scale.reshape(-1, 1)[:frames]
    return PartPlans(own, tuple(parts), row_scale)


def banded_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    plan: BandPlan,
    scale: float,
    poll: Callable[[], bool] = lambda: False,
    halo_absent: bool = False,
) -> torch.Tensor:
    """query (B, h, F, d); key/value (B, h, F + 2P + G, d) as [left ; own ; right ; globals], or with
    halo_absent (B, h, F + G, d) as [own ; globals]: the halo is read as zeros, for a plan that masks it.

    Returns (B, h, F, d), a view of a frames-first (B, F, h, d) tensor, so the caller's merge of the
    heads costs no copy. Queries are processed in blocks; each block sees its window of 2P + block local
    keys plus the G global keys, so scores and key copies are O(F * (block + 2P + G)). Every input is
    copied once, straight into the layout the attention kernel reads. `poll` runs before each chunk of
    the batch; True skips the rest (a Cancel inside a long clip's attention, see engine.comm.poll_cancel).
    """
    return _banded(query, key, value, plan, scale, poll, with_lse=False, halo_absent=halo_absent).out


def banded_attention_in_parts(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    rest: Callable[[], tuple[torch.Tensor, torch.Tensor]],
    plans: PartPlans,
    scale: float,
    poll: Callable[[], bool] = lambda: False,
) -> torch.Tensor:
    """The same attention as banded_attention, while the halo and global frames travel.

    query/key/value (B, h, F, d) are the own frames'. `rest` is called once the own band is done: it waits
    for the other frames and returns their keys and values (B, h, 2P + G, d) as [left ; right ; globals].
    Returns (B, h, F, d) as banded_attention does.
    """
    if plans.row_scale is not None:
        query = query * plans.row_scale
    own = _banded(query, key, value, plans.own, scale, poll, with_lse=True, halo_absent=True)
    rest_key, rest_value = rest()  # always waited for: every rank finishes the exchange it posted
    for part in plans.rest:
        if poll():
            break  # after a Cancel the result is never used (see banded_attention's poll)
        _merge_rest(own, query, rest_key[:, :, part.keys], rest_value[:, :, part.keys], part, scale, poll)
    return own.out


def merge_partials(a: PartialAttention, b: PartialAttention) -> torch.Tensor:
    """The attention over both key sets: each part weighted by its share of the joint normaliser.

    a's share is exp(a.lse) / (exp(a.lse) + exp(b.lse)) = sigmoid(a.lse - b.lse), so the merge is one
    interpolation between the two outputs. Returns (B, h, F, d)."""
    weight = torch.sigmoid(a.lse - b.lse).unsqueeze(-1).to(a.out.dtype)
    return torch.lerp(b.out, a.out, weight)


def join_partials(a: PartialAttention, b: PartialAttention) -> PartialAttention:
    """The attention over both key sets with its log normaliser, so a third part can be joined to it."""
    return PartialAttention(merge_partials(a, b), torch.logaddexp(a.lse, b.lse))


def _merge_rest(
    own: PartialAttention,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    part: RestPart,
    scale: float,
    poll: Callable[[], bool],
) -> None:
    """Adds the attention of part.rows (None: all) to the keys (B, h, K, d) of one rest part to `own`, in
    place, a chunk of the batch at a time (each chunk merged at once, so nothing clip-sized is made),
    stopped early by `poll` like banded_attention."""
    batch, heads, frames, dim = query.shape
    rows = part.rows
    count = frames if rows is None else rows.numel()
    step = max(1, chunk_elements(query.device) // max(1, heads * count * key.shape[2]))
    for lo in range(0, batch, step):
        if lo and poll():
            break
        cut = slice(lo, min(batch, lo + step))
        q, out, lse = query[cut], own.out[cut], own.lse[cut]
        if rows is not None:
            q, out, lse = q.index_select(2, rows), out.index_select(2, rows), lse.index_select(2, rows)
        seen = PartialAttention(*attention_with_lse(q, key[cut], value[cut], part.bias, scale))
        joint = join_partials(PartialAttention(out, lse), seen)
        if rows is None:
            own.out[cut], own.lse[cut] = joint.out, joint.lse
        else:
            own.out[cut].index_copy_(2, rows, joint.out)
            own.lse[cut].index_copy_(2, rows, joint.lse)


def _banded(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    plan: BandPlan,
    scale: float,
    poll: Callable[[], bool],
    with_lse: bool,
    halo_absent: bool = False,
) -> PartialAttention:
    """banded_attention, with each row's log normaliser when asked (else lse is an empty tensor).
    halo_absent: key/value hold the own frames only; the windows read zeros for the halo (the plan masks
    them), so the clip is not copied once more to pad it."""
    batch, heads, frames, dim = query.shape
    block, blocks, width, count = plan.block, plan.blocks, plan.width, plan.globals_count
    length = block + 2 * width + count
    out = query.new_empty((batch, frames, heads, dim))
    lse = query.new_empty(
        (batch, heads, frames if with_lse else 0), dtype=torch.promote_types(query.dtype, torch.float32)
    )
    per_item = heads * blocks * length * dim * 2
    step = max(1, chunk_elements(query.device) // max(1, per_item))
    row_scale = None if plan.row_scale is None else plan.row_scale.reshape(-1, 1)[:frames]
    for lo in range(0, batch, step):
        if poll():
            break
        hi = min(batch, lo + step)
        merged = (hi - lo) * heads
        q = _blocked_queries(query[lo:hi], blocks * block, row_scale)
        lead = width if halo_absent else 0
        keys = _windows(key[lo:hi], frames, plan, lead)
        values = _windows(value[lo:hi], frames, plan, lead)
        q = q.view(merged, blocks, block, dim)
        keys = keys.view(merged, blocks, length, dim)
        values = values.view(merged, blocks, length, dim)
        mask = plan.bias.unsqueeze(0)
        if with_lse:
            result, row_lse = attention_with_lse(q, keys, values, mask, scale)
            lse[lo:hi] = row_lse.reshape(hi - lo, heads, blocks * block)[:, :, :frames]
        else:
            result = F.scaled_dot_product_attention(q, keys, values, attn_mask=mask, scale=scale)
        out[lo:hi] = result.view(hi - lo, heads, blocks * block, dim)[:, :, :frames].transpose(1, 2)
    return PartialAttention(out.transpose(1, 2), lse)


def fused_lse_available(device: torch.device) -> bool:
    """Whether attention_with_lse runs a fused kernel on `device` (no scores matrix in memory). Elsewhere
    it computes the scores out, fine for the UNet's band of a few frames, too large for a DiT's frames."""
    return device.type == "cpu"


def attention_with_lse(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, bias: torch.Tensor | None, scale: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax attention and each row's log normaliser. Every row must see at least one key.

    On CPU, torch's fused attention kernel returns the normaliser itself; elsewhere it is computed out."""
    if fused_lse_available(query.device):
        out, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
            query, key, value, 0.0, False, attn_mask=bias, scale=scale
        )
        return out, lse
    return attention_with_lse_unfused(query, key, value, bias, scale)


def attention_with_lse_unfused(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, bias: torch.Tensor | None, scale: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """attention_with_lse in plain tensor operations, for devices without a CPU kernel (scores in fp32 or
    wider)."""
    scores = torch.matmul(query, key.transpose(-1, -2)).mul_(scale)
    if bias is not None:
        scores = scores.add_(bias)
    scores = scores.to(torch.promote_types(scores.dtype, torch.float32))
    lse = torch.logsumexp(scores, dim=-1)
    weights = torch.exp(scores - lse.unsqueeze(-1)).to(value.dtype)
    return torch.matmul(weights, value), lse


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


def _windows(x: torch.Tensor, frames: int, plan: BandPlan, lead: int = 0) -> torch.Tensor:
    """(B, h, blocks, block + 2P + G, d): each block's local window followed by the global keys.

    x: (B, h, F + 2P - 2 * lead + G, d), the local keys [left ; own ; right] with `lead` rows left out at
    each end (read as zeros: lead = P when the halo has not arrived), then the globals. Window rows outside
    the keys x holds (those left out, and past the clip's last frame in a partial last block) are zero;
    the plan's bias masks them.
    """
    batch, heads, _, dim = x.shape
    block, blocks = plan.block, plan.blocks
    span = block + 2 * plan.width
    present = frames + 2 * plan.width - 2 * lead  # local keys held
    windows = x.new_empty((batch, heads, blocks, span + plan.globals_count, dim))
    # Window b starts at row b * block - lead of x: blocks first..last lie wholly inside what x holds.
    first = -(-lead // block)
    last = min(blocks - 1, (present + lead - span) // block)
    if first <= last:
        inside = x[:, :, first * block - lead : present].unfold(2, span, block)[:, :, : last + 1 - first]
        windows[:, :, first : last + 1, :span] = inside.transpose(-1, -2)
    for b in (*range(min(first, blocks)), *range(max(last + 1, first), blocks)):
        start = b * block - lead
        windows[:, :, b, :span] = 0
        a, z = max(start, 0), min(start + span, present)
        if a < z:
            windows[:, :, b, a - start : z - start] = x[:, :, a:z]
    windows[:, :, :, span:] = x[:, :, present:].unsqueeze(2)
    return windows
