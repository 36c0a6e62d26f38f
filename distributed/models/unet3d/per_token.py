"""Per-token layers run in chunks of tokens, so their intermediates stay small however long the clip.

A transformer block's feed-forward (GEGLU: a projection to 8x the width, a gate, a projection back)
acts on every token alone. On a whole clip its intermediate is frames x tokens x 8C values, which
leaves the caches for main memory as clips grow; in chunks it stays the size one 16-frame clip
needs, and every token's result is the same.
"""

from __future__ import annotations

import torch
from torch import nn

# Tokens per feed-forward chunk: a 16-frame clip's worth at a 16x16 latent.
FEED_FORWARD_CHUNK_TOKENS = 4096


class ChunkedFeedForward(nn.Module):
    """Applies a per-token module to at most `tokens` rows at a time."""

    def __init__(self, inner: nn.Module, tokens: int = FEED_FORWARD_CHUNK_TOKENS):
        super().__init__()
        self.inner = inner
        self.tokens = tokens

    def forward(self, hidden_states: torch.Tensor, *args: object, **kwargs: object) -> torch.Tensor:
        rows = hidden_states.reshape(-1, hidden_states.shape[-1])
        if rows.shape[0] <= self.tokens:
            return self.inner(hidden_states, *args, **kwargs)
        out: torch.Tensor | None = None
        for lo in range(0, rows.shape[0], self.tokens):
            piece = self.inner(rows[lo : lo + self.tokens], *args, **kwargs)
            if out is None:
                out = piece.new_empty((rows.shape[0], piece.shape[-1]))
            out[lo : lo + piece.shape[0]] = piece
        assert out is not None
        return out.view(*hidden_states.shape[:-1], out.shape[-1])
