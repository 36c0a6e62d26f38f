"""The diffusers UNet3D family (ModelScope, Zeroscope) and VideoCrafter2's port of it.

VideoCrafter2's diffusers port is a `UNet3DConditionModel` with an extra fps embedding added to
the time embedding. `run_unet3d` replaces `UNet3DConditionModel.forward` so that every frame can
carry its own text conditioning (prompt schedules), which the stock forward cannot express.

The pack's own demo model has two options the real families do not have: a frame-phase embedding
(`frame_phase_period`), the frame's index in the whole video modulo a period, added per frame to the
time embedding (the UNet3D's temporal layers carry no frame position of their own); and a spatial
position embedding (`spatial_position`), periodic in x and y like the demo's wrapped canvas, added to the
first convolution's output (convolutions alone see position only near zero-padded borders); and a caption
embedding (`caption_in_time_embedding`), the mean of the text tokens added to the time embedding, so the
caption reaches every ResNet at every level, as the frame phase does, and not only the cross-attentions; and
(`caption_position`, with the spatial position embedding) a gain per position feature from the same token
mean, so the caption can say where in the picture something is, before any frame shows it; and
(`circular_padding`) spatial convolutions that wrap around the picture's edges instead of reading zeros
there, as the demo's canvas does: a shape crossing an edge is then one shape to every layer.
"""

from __future__ import annotations

import math

import torch
from diffusers import UNet3DConditionModel
from diffusers.configuration_utils import register_to_config
from diffusers.models.embeddings import TimestepEmbedding, Timesteps

VIDEOCRAFTER_CLASS_NAME = "UNet3DVideoCrafterConditionModel"
SUPPORTED_UNET_CLASSES = ("UNet3DConditionModel", VIDEOCRAFTER_CLASS_NAME)


class UNet3DVideoCrafterConditionModel(UNet3DConditionModel):
    """`UNet3DConditionModel` plus VideoCrafter2's optional fps conditioning."""

    @register_to_config
    def __init__(
        self,
        sample_size: int | None = None,
        in_channels: int = 4,
        out_channels: int = 4,
        down_block_types: tuple[str, ...] = (
            "CrossAttnDownBlock3D",
            "CrossAttnDownBlock3D",
            "CrossAttnDownBlock3D",
            "DownBlock3D",
        ),
        up_block_types: tuple[str, ...] = (
            "UpBlock3D",
            "CrossAttnUpBlock3D",
            "CrossAttnUpBlock3D",
            "CrossAttnUpBlock3D",
        ),
        block_out_channels: tuple[int, ...] = (320, 640, 1280, 1280),
        layers_per_block: int = 2,
        downsample_padding: int = 1,
        mid_block_scale_factor: float = 1,
        act_fn: str = "silu",
        norm_num_groups: int | None = 32,
        norm_eps: float = 1e-5,
        cross_attention_dim: int = 1024,
        attention_head_dim: int | tuple[int] = 64,
        num_attention_heads: int | tuple[int] | None = None,
        time_cond_proj_dim: int | None = None,
        fps_cond: bool = False,
        frame_phase_period: int | None = None,
        spatial_position: bool = False,
        caption_in_time_embedding: bool = False,
        caption_position: bool = False,
        circular_padding: bool = False,
    ):
        # The parent's config registration is skipped here: ours (with fps_cond) is the one saved.
        UNet3DConditionModel.__init__.__wrapped__(
            self,
            sample_size=sample_size,
            in_channels=in_channels,
            out_channels=out_channels,
            down_block_types=down_block_types,
            up_block_types=up_block_types,
            block_out_channels=block_out_channels,
            layers_per_block=layers_per_block,
            downsample_padding=downsample_padding,
            mid_block_scale_factor=mid_block_scale_factor,
            act_fn=act_fn,
            norm_num_groups=norm_num_groups,
            norm_eps=norm_eps,
            cross_attention_dim=cross_attention_dim,
            attention_head_dim=attention_head_dim,
            num_attention_heads=num_attention_heads,
            time_cond_proj_dim=time_cond_proj_dim,
        )
        self.fps_cond = fps_cond
        if fps_cond:
            channels = self.config.block_out_channels[0]
            self.fps_proj = Timesteps(channels, True, 0)
            self.fps_embedding = TimestepEmbedding(channels, channels * 4, act_fn=act_fn)
        self.frame_phase_period = frame_phase_period
        if frame_phase_period is not None:
            if frame_phase_period < 1:
                raise ValueError(f"frame_phase_period must be at least 1, got {frame_phase_period}")
            # Starts at zero, so adding it to a trained model leaves that model's outputs unchanged.
            self.phase_embedding = torch.nn.Linear(2 * PHASE_HARMONICS, block_out_channels[0] * 4)
            torch.nn.init.zeros_(self.phase_embedding.weight)
            torch.nn.init.zeros_(self.phase_embedding.bias)
        self.spatial_position = spatial_position
        if spatial_position:
            self.position_embedding = torch.nn.Linear(4 * PHASE_HARMONICS, block_out_channels[0])
            torch.nn.init.zeros_(self.position_embedding.weight)
            torch.nn.init.zeros_(self.position_embedding.bias)
        if caption_position and not spatial_position:
            raise ValueError("caption_position needs spatial_position: it scales the position features")
        self.caption_position = caption_position
        if caption_position:
            self.caption_position_gain = torch.nn.Linear(cross_attention_dim, 4 * PHASE_HARMONICS)
            torch.nn.init.zeros_(self.caption_position_gain.weight)
            torch.nn.init.zeros_(self.caption_position_gain.bias)
        self.caption_in_time_embedding = caption_in_time_embedding
        if caption_in_time_embedding:
            width = block_out_channels[0] * 4
            self.caption_embedding = torch.nn.Sequential(
                torch.nn.Linear(cross_attention_dim, width), torch.nn.SiLU(), torch.nn.Linear(width, width)
            )
            torch.nn.init.zeros_(self.caption_embedding[2].weight)
            torch.nn.init.zeros_(self.caption_embedding[2].bias)
        self.circular_padding = circular_padding
        if circular_padding:
            wrap_spatial_convolutions(self)


def wrap_spatial_convolutions(model: torch.nn.Module) -> None:
    """Every padded 2-D convolution of the model pads by wrapping around (a torus), not with zeros.

    Only the padding changes, so a model trained with zero padding loads unchanged (and then learns to use
    what lies across the edge). The temporal convolutions pad along frames and keep their zeros."""
    for module in model.modules():
        if isinstance(module, torch.nn.Conv2d) and any(pad > 0 for pad in module.padding):
            module.padding_mode = "circular"


PHASE_HARMONICS = 4


def position_features(height: int, width: int, device: torch.device) -> torch.Tensor:
    """(H, W, 4 * PHASE_HARMONICS): sines and cosines of each latent pixel's column and row, periodic over
    the image (a shape leaving one side of the demo's canvas comes back on the other)."""
    columns = phase_features(torch.arange(width, device=device), width)
    rows = phase_features(torch.arange(height, device=device), height)
    return torch.cat([columns[None].expand(height, -1, -1), rows[:, None].expand(-1, width, -1)], dim=-1)


def phase_features(frame_index: torch.Tensor, period: int) -> torch.Tensor:
    """(F, 2 * PHASE_HARMONICS) sines and cosines of each frame's phase in the period."""
    angle = frame_index.double()[:, None] * (2 * math.pi / period)
    harmonics = torch.arange(1, PHASE_HARMONICS + 1, dtype=torch.float64, device=frame_index.device)
    return torch.cat([torch.sin(angle * harmonics), torch.cos(angle * harmonics)], dim=1)


def run_unet3d(
    unet: UNet3DConditionModel,
    sample: torch.Tensor,
    timestep: torch.Tensor | float | int,
    frame_text: torch.Tensor,
    fps: float | None = None,
    frame_index: torch.Tensor | None = None,
) -> torch.Tensor:
    """Denoiser call with per-frame text conditioning.

    sample: (B, C, F, H, W). frame_text: (B, F, L, D), one text embedding per frame. frame_index: (F,) or
    (B, F), the frames' indices in the whole video (default 0 to F-1); only a model with a frame-phase
    embedding reads them. Returns the model output with the sample's shape.
    """
    batch, _, num_frames, height, width = sample.shape
    if frame_text.shape[:2] != (batch, num_frames):
        raise ValueError(
            f"frame_text has shape {tuple(frame_text.shape)}; expected (batch={batch}, frames={num_frames}, L, D)"
        )
    up_factor = 2**unet.num_upsamplers
    forward_upsample_size = height % up_factor != 0 or width % up_factor != 0

    timesteps = torch.as_tensor(timestep, device=sample.device)
    if timesteps.ndim == 0:
        timesteps = timesteps[None]
    timesteps = timesteps.expand(batch)
    emb = unet.time_embedding(unet.time_proj(timesteps).to(dtype=unet.dtype))
    if getattr(unet, "fps_cond", False):
        fps_value = torch.full((batch,), 24.0 if fps is None else float(fps), device=sample.device)
        emb = emb + unet.fps_embedding(unet.fps_proj(fps_value).to(dtype=unet.dtype))
    emb = emb.repeat_interleave(num_frames, dim=0)
    period = getattr(unet, "frame_phase_period", None)
    if period is not None:
        if frame_index is None:
            frame_index = torch.arange(num_frames, device=sample.device)
        index = frame_index.to(sample.device).expand(batch, num_frames).reshape(-1)
        emb = emb + unet.phase_embedding(phase_features(index, period).to(unet.dtype))
    text = frame_text.reshape(batch * num_frames, *frame_text.shape[2:]).to(unet.dtype)
    caption = text.mean(dim=1)  # the token mean that the demo model's caption options read
    if getattr(unet, "caption_in_time_embedding", False):
        emb = emb + unet.caption_embedding(caption)

    hidden = sample.permute(0, 2, 1, 3, 4).reshape(batch * num_frames, -1, height, width)
    hidden = unet.conv_in(hidden)
    if getattr(unet, "spatial_position", False):
        features = position_features(height, width, sample.device).to(unet.dtype)[None]  # (1, H, W, P)
        if getattr(unet, "caption_position", False):
            features = features * (1 + unet.caption_position_gain(caption))[:, None, None]
        hidden = hidden + unet.position_embedding(features).permute(0, 3, 1, 2)
    hidden = unet.transformer_in(hidden, num_frames=num_frames, return_dict=False)[0]

    skips: tuple[torch.Tensor, ...] = (hidden,)
    for block in unet.down_blocks:
        if getattr(block, "has_cross_attention", False):
            hidden, res = block(hidden_states=hidden, temb=emb, encoder_hidden_states=text, num_frames=num_frames)
        else:
            hidden, res = block(hidden_states=hidden, temb=emb, num_frames=num_frames)
        skips += res

    if unet.mid_block is not None:
        hidden = unet.mid_block(hidden, emb, encoder_hidden_states=text, num_frames=num_frames)

    upsample_size = None
    for index, block in enumerate(unet.up_blocks):
        res = skips[-len(block.resnets) :]
        skips = skips[: -len(block.resnets)]
        if index < len(unet.up_blocks) - 1 and forward_upsample_size:
            upsample_size = skips[-1].shape[2:]
        kwargs = dict(hidden_states=hidden, temb=emb, res_hidden_states_tuple=res, upsample_size=upsample_size)
        if getattr(block, "has_cross_attention", False):
            hidden = block(**kwargs, encoder_hidden_states=text, num_frames=num_frames)
        else:
            hidden = block(**kwargs, num_frames=num_frames)

    if unet.conv_norm_out is not None:
        hidden = unet.conv_act(unet.conv_norm_out(hidden))
    hidden = unet.conv_out(hidden)
    return hidden.reshape(batch, num_frames, *hidden.shape[1:]).permute(0, 2, 1, 3, 4)
