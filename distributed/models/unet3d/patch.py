"""Installs dual-scope attention, halo temporal convolutions and frame GroupNorms into a UNet3D."""

from __future__ import annotations

from dataclasses import dataclass

from diffusers.models.attention import BasicTransformerBlock
from diffusers.models.downsampling import Downsample2D
from diffusers.models.resnet import ResnetBlock2D, TemporalConvLayer
from diffusers.models.transformers.transformer_2d import Transformer2DModel
from diffusers.models.transformers.transformer_temporal import TransformerTemporalModel
from diffusers.models.upsampling import Upsample2D
from torch import nn

from ...engine.context import TemporalContext
from .attention import DualScopeAttnProcessor
from .chunked import ChunkedFeedForward, FrameChunked, chunk_elements
from .temporal_conv import FrameGroupNorm, HaloTemporalConv


@dataclass(frozen=True)
class PatchReport:
    temporal_transformers: int
    temporal_attentions: int
    temporal_convs: int
    frame_groupnorms: int
    chunked_feed_forwards: int
    chunked_frame_layers: int
    chunked_token_layers: int


# Per-frame layers outside the ResNet blocks and spatial transformers; together with those and the
# temporal transformers' per-token layers below, no layer of a step runs over the whole clip at once, so
# a Cancel is looked for every few milliseconds however long the clip (chunked.py).
FRAME_LAYER_TYPES = (ResnetBlock2D, Transformer2DModel, Downsample2D, Upsample2D)
TOP_FRAME_LAYERS = ("conv_in", "conv_norm_out", "conv_out")


def patch_unet(unet: nn.Module, ctx: TemporalContext) -> PatchReport:
    """Patches in place. Behaviour is then driven by `ctx` (settings, layout, timestep), so one patched
    model serves every job; with ctx.layout None it computes exactly what the unpatched model does."""
    if getattr(unet, "_video_infinity_patched", False):
        raise RuntimeError("this UNet is already patched")
    transformers = attentions = convs = norms = feed_forwards = frame_layers = token_layers = 0
    elements = chunk_elements(ctx.comm.device)
    processor = DualScopeAttnProcessor(ctx)
    targets = list(unet.named_modules())
    for name, module in targets:
        if isinstance(module, TransformerTemporalModel):
            transformers += 1
            if isinstance(module.norm, nn.GroupNorm):
                module.norm = FrameGroupNorm(module.norm, ctx)
                norms += 1
            token_layers += _chunk_token_layers(module, ("proj_in", "proj_out"), elements, ctx)
            for block in module.transformer_blocks:
                token_layers += _chunk_token_layers(block, ("norm1", "norm2", "norm3"), elements, ctx)
                for attn in (block.attn1, block.attn2):
                    if attn is not None:
                        attn.set_processor(processor)
                        attentions += 1
        elif isinstance(module, TemporalConvLayer):
            wrapped = []
            for stage in (module.conv1, module.conv2, module.conv3, module.conv4):
                frame_norm = FrameGroupNorm(stage[0], ctx)
                stage[0] = frame_norm
                wrapped.append(frame_norm)
            norms += len(wrapped)
            _replace(unet, name, HaloTemporalConv(module, ctx, elements))
            convs += 1
        elif isinstance(module, BasicTransformerBlock) and module.ff is not None:
            module.ff = ChunkedFeedForward(module.ff, elements, ctx.comm.poll_cancel)
            feed_forwards += 1
        if isinstance(module, FRAME_LAYER_TYPES) or name in TOP_FRAME_LAYERS:
            _replace(unet, name, FrameChunked(module, elements, ctx.comm.poll_cancel))
            frame_layers += 1
    unet._video_infinity_patched = True
    return PatchReport(transformers, attentions, convs, norms, feed_forwards, frame_layers, token_layers)


def _chunk_token_layers(parent: nn.Module, names: tuple[str, ...], elements: int, ctx: TemporalContext) -> int:
    """Wraps the per-token layers (linear projections, layer norms) of a temporal transformer in chunks."""
    wrapped = 0
    for name in names:
        layer = getattr(parent, name, None)
        if isinstance(layer, (nn.Linear, nn.LayerNorm)):
            setattr(parent, name, ChunkedFeedForward(layer, elements, ctx.comm.poll_cancel))
            wrapped += 1
    return wrapped


def _replace(root: nn.Module, dotted: str, new: nn.Module) -> None:
    parent_name, _, child = dotted.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    if isinstance(parent, (nn.ModuleList, nn.Sequential)):
        parent[int(child)] = new
    else:
        setattr(parent, child, new)
