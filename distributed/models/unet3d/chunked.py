"""Per-frame and per-token layers run in chunks, so their intermediates stay small however long the clip.

A ResNet block or a spatial transformer acts on every frame alone, and a feed-forward on every token
alone. On a whole clip each of their intermediates (norms, activations, the feed-forward's 8x-wide
GEGLU) is a pass over a tensor that grows with the clip and soon leaves the caches for main memory. In
chunks, the intermediates stay the size a short clip needs, the clip is read and written once per layer,
and every frame's and token's result is the same.

Between chunks a rank looks for a Cancel (`poll`, engine.comm.poll_cancel), so even a very long clip's
layer stops soon.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

Poll = Callable[[], bool]  # True: skip the rest, the job stops at the next exchange (or it raises here)


def chunk_elements(device: torch.device) -> int:
    """Input elements per chunk: cache-sized on a CPU; on an accelerator large enough to keep it busy, so
    chunks there only bound the memory of very long clips."""
    return 1 << 18 if device.type == "cpu" else 1 << 26


class ChunkedFeedForward(nn.Module):
    """Applies a per-token module to chunks of at most `elements` input values, whole tokens each."""

    def __init__(self, inner: nn.Module, elements: int, poll: Poll):
        super().__init__()
        self.inner = inner
        self.elements = elements
        self.poll = poll

    def forward(self, hidden_states: torch.Tensor, *args: object, **kwargs: object) -> torch.Tensor:
        rows = hidden_states.reshape(-1, hidden_states.shape[-1])
        out = in_chunks(lambda piece: self.inner(piece, *args, **kwargs), rows, self.elements, self.poll)
        return out.view(*hidden_states.shape[:-1], out.shape[-1])


def in_chunks(
    layer: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, elements: int, poll: Poll
) -> torch.Tensor:
    """layer(x) for a layer that acts on each row of x (along dim 0) alone, on chunks of at most `elements`
    input values, whole rows each."""
    step = max(1, elements // max(1, x[0].numel()))
    if x.shape[0] <= step:
        return layer(x)
    out: torch.Tensor | None = None
    for lo in range(0, x.shape[0], step):
        if lo and poll():  # the first chunk runs: it gives the result its shape
            break
        piece = layer(x[lo : lo + step])
        if out is None:
            out = piece.new_empty((x.shape[0], *piece.shape[1:]))
        out[lo : lo + piece.shape[0]] = piece
        del piece  # freed before the next chunk is computed, so only one chunk's result is ever held
    assert out is not None
    return out


class FrameChunked(nn.Module):
    """Runs a per-frame module (input (batch x frames, C, H, W)) on chunks of whole frames.

    Every tensor argument with one row per frame (the time embedding, the text of each frame) is cut
    the same way; other arguments pass unchanged. A tuple result (return_dict=False) stays a tuple.
    """

    def __init__(self, inner: nn.Module, elements: int, poll: Poll):
        super().__init__()
        self.inner = inner
        self.elements = elements
        self.poll = poll

    def forward(self, hidden_states: torch.Tensor, *args: object, **kwargs: object) -> object:
        rows = hidden_states.shape[0]
        step = max(1, self.elements // max(1, hidden_states[0].numel()))
        if rows <= step:
            return self.inner(hidden_states, *args, **kwargs)
        out: torch.Tensor | None = None
        as_tuple = False
        for lo in range(0, rows, step):
            if lo and self.poll():  # the first chunk runs: it gives the result its shape
                break
            cut = slice(lo, lo + step)
            piece_args = [_cut(value, rows, cut) for value in args]
            piece_kwargs = {name: _cut(value, rows, cut) for name, value in kwargs.items()}
            result = self.inner(hidden_states[cut], *piece_args, **piece_kwargs)
            as_tuple = isinstance(result, tuple)
            piece = result[0] if as_tuple else result
            if not isinstance(piece, torch.Tensor):
                raise TypeError(
                    f"{type(self.inner).__name__} returned {type(piece).__name__}; call it with return_dict=False"
                )
            if out is None:
                out = piece.new_empty((rows, *piece.shape[1:]))
            out[cut] = piece
            del result, piece  # as in in_chunks: one chunk's result held at a time
        return (out,) if as_tuple else out


def _cut(value: object, rows: int, cut: slice) -> object:
    if isinstance(value, torch.Tensor) and value.dim() > 0 and value.shape[0] == rows:
        return value[cut]
    return value
