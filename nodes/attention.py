"""Dual-Scope Attention: the temporal attention settings every patched layer uses (reference defaults)."""

from __future__ import annotations

from typing import get_args

from ..distributed.engine import choices
from ..distributed.engine.settings import DualScopeSettings, Mode
from .api import CATEGORY, Attention, io
from .validation import given, validate_node

_DEFAULTS = DualScopeSettings()


class DualScopeAttention(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        d = _DEFAULTS
        return io.Schema(
            node_id="VideoInfinityDualScopeAttention",
            display_name="Dual-Scope Attention (Video-Infinity)",
            category=CATEGORY,
            description="Temporal attention that sees a local window around each frame plus a few frames sampled "
            "over the whole video, so clips on different workers stay one consistent video.",
            inputs=[
                io.Int.Input(
                    "local_window",
                    default=d.local_window,
                    min=0,
                    max=choices.MAX_LOCAL_WINDOW,
                    tooltip="P: frames on each side that local attention sees (latent frames).",
                ),
                io.Int.Input(
                    "global_frames",
                    default=d.global_frames,
                    min=0,
                    max=choices.MAX_GLOBAL_FRAMES,
                    tooltip="G: frames sampled over the whole video that every frame also attends to; "
                    "a video with fewer frames uses every frame. 0 turns the global scope off.",
                ),
                io.Int.Input(
                    "conv_halo",
                    default=d.conv_halo,
                    min=0,
                    max=choices.MAX_CONV_HALO,
                    tooltip="Frames borrowed from neighbouring workers for temporal convolutions "
                    "(4 covers their receptive field: exact).",
                ),
                io.Boolean.Input(
                    "phase_bias",
                    default=d.phase_bias,
                    tooltip="Early steps favour the global scope (layout), later steps the local one "
                    "(motion detail), as in the reference code. Off: both scopes in every step, which "
                    "keeps colours steadier over a long video when the model settles them late "
                    "(the demo model does).",
                ),
                io.Float.Input(
                    "phase_threshold",
                    default=d.phase_threshold,
                    min=0.0,
                    max=choices.MAX_TIMESTEP,
                    step=1.0,
                    tooltip="Timestep where the bias switches from global to local (of 1000). "
                    "0: the global frames are favoured at every step (with a small global_bias, the "
                    "measured best for the demo model).",
                ),
                io.Float.Input(
                    "global_bias",
                    default=d.global_bias,
                    min=0.0,
                    max=choices.MAX_BIAS,
                    step=0.5,
                    tooltip="Logit bias given to global keys before the threshold.",
                ),
                io.Float.Input(
                    "local_bias",
                    default=d.local_bias,
                    min=0.0,
                    max=choices.MAX_BIAS,
                    step=0.5,
                    tooltip="Logit bias given to local keys after the threshold.",
                ),
                io.Float.Input(
                    "attn_scale",
                    default=d.attn_scale,
                    min=0.01,
                    max=choices.MAX_ATTN_SCALE,
                    step=0.01,
                    tooltip="Multiplies the attention logits' softmax scale (1.0 = standard).",
                ),
                io.Boolean.Input(
                    "token_num_scale",
                    default=d.token_num_scale,
                    tooltip="Scale logits by log(keys)/log(training frames), which helps when a "
                    "frame sees many more keys than in training.",
                ),
                io.Combo.Input(
                    "mode",
                    options=list(get_args(Mode)),
                    default=d.mode,
                    tooltip="exact: the math does not depend on how frames are split over workers. "
                    "reference: reproduce the original code's per-clip behaviour.",
                ),
                io.Int.Input(
                    "norm_window",
                    default=d.norm_window,
                    min=0,
                    max=choices.MAX_NORM_WINDOW,
                    optional=True,
                    tooltip="Exact mode: frames whose statistics each temporal GroupNorm uses. 0 = the "
                    "whole video; 16 to 24 = about what the model saw in training.",
                ),
            ],
            outputs=[Attention.Output(display_name="attention", tooltip="Settings for the Clip-Parallel Sampler.")],
        )

    @classmethod
    def validate_inputs(cls, **settings) -> bool:
        # Inputs fed by a link (None here) take their defaults for the check; they are checked again when it runs.
        return validate_node(cls, settings, lambda: DualScopeSettings.from_dict(given(settings)))

    @classmethod
    def execute(cls, **settings) -> io.NodeOutput:
        # Optional inputs that older workflows lack arrive as None or not at all: their defaults apply.
        given = {name: value for name, value in settings.items() if value is not None}
        return io.NodeOutput(DualScopeSettings.from_dict(given).to_dict())
