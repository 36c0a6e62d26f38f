"""Dual-scope attention installed on a cloned ComfyUI ModelPatcher through ComfyUI's own hooks (Wan, LTX-Video).

- `transformer_options["optimized_attention_override"]` receives every attention call of the model;
- a `patches_replace["dit"][("double_block", i)]` wrapper per block marks its first attention call, which
  in a Wan or LTX-Video block is the self-attention (cross-attention to text and image follows), so only
  that one becomes dual-scope;
- VACE models run their VACE blocks outside that hook, so each is wrapped by an object patch that marks
  its self-attention the same way;
- the frame positions RoPE rotates by move to the clip's global start (architectures.py: Wan's
  `rope_options["shift_t"]`, LTX-Video's patchifier coordinates);
- `model_function_wrapper` sets the step's timestep for the phase bias (on the model's own timestep
  scale) and runs one batch element per model call, so every rank makes the same collective calls
  whatever ComfyUI decides about batching the positive and negative prompt.

Hooks used: optimized_attention_override and rope_options (ComfyUI 0.3.75 and later), patches_replace
"dit" double_block, model_function_wrapper and object patches (older).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from ...engine.context import TemporalContext
from .architectures import architecture_of
from .attention import dual_scope_self_attention

OPTIONS_KEY = "video_infinity"  # our per-call state inside transformer_options


class _SelfAttentionTurn:
    """Set by a block wrapper; the block's next attention call is its self-attention."""

    def __init__(self) -> None:
        self.pending = True


class _MarkedSelfAttention(torch.nn.Module):
    """A block called with the model's own transformer_options (a VACE block), given a self-attention turn."""

    def __init__(self, block: torch.nn.Module) -> None:
        super().__init__()
        self.block = block

    def forward(self, *args: Any, transformer_options: dict[str, Any] | None = None, **kwargs: Any) -> Any:
        options = dict(transformer_options or {}, **{OPTIONS_KEY: _SelfAttentionTurn()})
        return self.block(*args, transformer_options=options, **kwargs)


def install_dual_scope(patcher: Any, ctx: TemporalContext, overlap: bool = True) -> Any:
    """A clone of `patcher` whose self-attentions are dual-scope while ctx has a job. Weights are shared.

    overlap: attend to the own frames while the halo and global frames travel (dual_scope_self_attention);
    False waits for them first, the same result (benchmarks.wan_scaling measures what it saves).
    What differs between models comes from the model's architecture (architectures.py)."""
    architecture = architecture_of(patcher.model)
    model = patcher.clone()
    diffusion_model = model.get_model_object("diffusion_model")
    clip = {"tokens_per_frame": 0}  # set from each model call's input, read by its attention calls
    place_clip = architecture.place_clip(model, lambda: ctx.span[0] if ctx.active else None)

    def attention_override(func: Callable[..., torch.Tensor], q, k, v, heads, *args, **kwargs) -> torch.Tensor:
        options = kwargs.get("transformer_options") or {}
        turn = options.get(OPTIONS_KEY)
        if turn is None or not turn.pending:
            return func(q, k, v, heads, *args, **kwargs)
        turn.pending = False
        if not ctx.active:
            return func(q, k, v, heads, *args, **kwargs)
        return dual_scope_self_attention(ctx, q, k, v, heads, clip["tokens_per_frame"], overlap)

    def block_wrapper(args: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
        options = dict(args["transformer_options"], **{OPTIONS_KEY: _SelfAttentionTurn()})
        return extra["original_block"](dict(args, transformer_options=options))

    def model_wrapper(apply_model: Callable[..., torch.Tensor], args: dict[str, Any]) -> torch.Tensor:
        x, timestep, conds = args["input"], args["timestep"], args["c"]
        clip["tokens_per_frame"] = architecture.tokens_per_frame(diffusion_model, x)
        # apply_model belongs to the model being sampled, with the job's model_sampling patched in.
        sampling = apply_model.__self__.model_sampling
        ctx.timestep = float(sampling.timestep(timestep[:1]).item()) * architecture.timestep_scale
        conds = place_clip(conds)
        outputs = [
            apply_model(x[i : i + 1], timestep[i : i + 1], **_batch_item(conds, i, x.shape[0]))
            for i in range(x.shape[0])
        ]
        return torch.cat(outputs)

    model.model_options["transformer_options"]["optimized_attention_override"] = attention_override
    for index in range(len(architecture.blocks(diffusion_model))):
        model.set_model_patch_replace(block_wrapper, "dit", "double_block", index)
    for index, block in enumerate(getattr(diffusion_model, "vace_blocks", None) or ()):
        model.add_object_patch(f"diffusion_model.vace_blocks.{index}", _MarkedSelfAttention(block))
    model.set_model_unet_function_wrapper(model_wrapper)
    return model


def _batch_item(conds: dict[str, Any], index: int, batch: int) -> dict[str, Any]:
    """Element `index` of every batched tensor in the model's keyword arguments; other values as they are."""
    item: dict[str, Any] = {}
    for name, value in conds.items():
        if isinstance(value, torch.Tensor) and value.shape[:1] == (batch,):
            item[name] = value[index : index + 1]
        elif name == "transformer_options":
            item[name] = {
                key: _item_of(entry, index, batch) if key in BATCHED_OPTIONS else entry for key, entry in value.items()
            }
        else:
            item[name] = value
    return item


BATCHED_OPTIONS = ("cond_or_uncond", "uuids", "sigmas")


def _item_of(entry: Any, index: int, batch: int) -> Any:
    if isinstance(entry, (list, torch.Tensor)) and len(entry) == batch:
        return entry[index : index + 1]
    return entry
