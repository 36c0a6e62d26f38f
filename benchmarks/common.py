"""Helpers shared by the benchmark scripts: peak memory, sliding-window schedules, temporal-layer
shapes and the traffic model of docs/algorithm.md section 8 (ours and the reference scheme's)."""

from __future__ import annotations

import os
import platform
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from diffusers.models.resnet import TemporalConvLayer
from diffusers.models.transformers.transformer_temporal import TransformerTemporalModel
from torch import nn

from distributed.engine.layout import FrameLayout, global_indices_exact, global_indices_reference
from distributed.models.unet3d.model import run_unet3d

MIB = 1024 * 1024


# ----------------------------------------------------------------------------------------------------------
# Memory: Linux keeps a high-water mark of the resident set (VmHWM) that writing "5" to clear_refs resets,
# so the peak of one measured region can be read without a sampling thread that could miss a spike.


def _status_kib(key: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{key} not found in /proc/self/status")


def rss_bytes() -> int:
    return _status_kib("VmRSS") * 1024


def peak_rss_bytes() -> int:
    return _status_kib("VmHWM") * 1024


def reset_peak_rss() -> bool:
    """Resets VmHWM to the current RSS; False where the kernel does not allow it (peak is then since start)."""
    try:
        with open("/proc/self/clear_refs", "w") as refs:
            refs.write("5")
        return True
    except OSError:
        return False


def machine_line() -> str:
    load = ", ".join(f"{value:.2f}" for value in os.getloadavg())
    return (
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores, torch {torch.__version__}, "
        f"load average (1/5/15 min) {load}"
    )


# ----------------------------------------------------------------------------------------------------------
# Sliding context windows, the peer method (ComfyUI core "Context Windows", AnimateDiff-Evolved context
# options, FreeNoise): fixed-length windows one after another, outputs fused with pyramid weights.


def window_starts(frames: int, length: int, stride: int) -> list[int]:
    """Start frames of the windows; the last window is shifted back so it ends on the last frame."""
    if frames <= length:
        return [0]
    starts = list(range(0, frames - length + 1, stride))
    if starts[-1] + length < frames:
        starts.append(frames - length)
    return starts


def pyramid_weights(length: int) -> torch.Tensor:
    """1, 2, ..., peak, ..., 2, 1: a frame counts more in the windows where it sits near the middle."""
    return torch.tensor([min(i + 1, length - i) for i in range(length)], dtype=torch.float32)


def window_evaluations(frames: int, length: int, stride: int) -> int:
    return len(window_starts(frames, length, stride)) * min(frames, length)


def frame_range(frames: slice) -> torch.Tensor:
    """The video frame indices of a window, for models that embed each frame's place in the video."""
    return torch.arange(frames.start, frames.stop)


@torch.no_grad()
def sliding_window_step(
    unet: nn.Module, sample: torch.Tensor, timestep: float, text: torch.Tensor, length: int, stride: int
) -> torch.Tensor:
    """One denoiser evaluation of the whole video by overlapping windows (B, C, F, H, W)."""
    frames = sample.shape[2]
    length = min(length, frames)
    weights = pyramid_weights(length).to(sample.dtype).view(1, 1, length, 1, 1)
    total = torch.zeros_like(sample)
    norm = torch.zeros((1, 1, frames, 1, 1), dtype=sample.dtype)
    for start in window_starts(frames, length, stride):
        window = slice(start, start + length)
        out = run_unet3d(unet, sample[:, :, window], timestep, text[:, window], None, frame_range(window))
        total[:, :, window] += out * weights
        norm[:, :, window] += weights
    return total / norm


@torch.no_grad()
def independent_clips_step(
    unet: nn.Module, sample: torch.Tensor, timestep: float, text: torch.Tensor, length: int
) -> torch.Tensor:
    """Every clip of `length` frames denoised on its own, one after another (no context across clips)."""
    out = torch.empty_like(sample)
    for start in range(0, sample.shape[2], length):
        clip = slice(start, min(start + length, sample.shape[2]))
        out[:, :, clip] = run_unet3d(unet, sample[:, :, clip], timestep, text[:, clip], None, frame_range(clip))
    return out


# ----------------------------------------------------------------------------------------------------------
# Shapes of the temporal layers, captured from one forward pass (the meta device works: nothing is computed).


@dataclass
class TemporalShapes:
    """Elements per frame that cross a rank border, summed over the UNet's temporal layers."""

    attention_inputs: list[int] = field(default_factory=list)  # B*H*W*C per temporal self-attention
    conv_inputs: list[int] = field(default_factory=list)  # B*C*H*W per TemporalConvLayer
    frame_norm_groups: list[int] = field(default_factory=list)  # B*groups per GroupNorm across frames

    @property
    def attention_elements(self) -> int:
        return sum(self.attention_inputs)

    @property
    def conv_elements(self) -> int:
        return sum(self.conv_inputs)


def capture_temporal_shapes(
    unet: nn.Module, batch: int, height: int, width: int, text_shape: tuple[int, int]
) -> TemporalShapes:
    """Runs the unpatched UNet once on 2 frames and records what each temporal layer sees per frame."""
    shapes = TemporalShapes()
    frames = 2
    handles = []

    def on_attention(module: nn.Module, args: tuple, kwargs: dict) -> None:
        hidden = args[0] if args else kwargs["hidden_states"]
        tokens, _, channels = hidden.shape  # (B*H*W, F, C)
        shapes.attention_inputs.append(tokens * channels)

    def on_conv(module: nn.Module, args: tuple, kwargs: dict) -> None:
        hidden = args[0] if args else kwargs["hidden_states"]
        per_frame = hidden.numel() // frames
        shapes.conv_inputs.append(per_frame)

    def on_norm(module: nn.GroupNorm, args: tuple) -> None:
        shapes.frame_norm_groups.append(args[0].shape[0] * module.num_groups)

    for module in unet.modules():
        if isinstance(module, TransformerTemporalModel):
            if isinstance(module.norm, nn.GroupNorm):
                handles.append(module.norm.register_forward_pre_hook(on_norm))
            for block in module.transformer_blocks:
                for attn in (block.attn1, block.attn2):
                    if attn is not None:
                        handles.append(attn.register_forward_pre_hook(on_attention, with_kwargs=True))
        elif isinstance(module, TemporalConvLayer):
            handles.append(module.register_forward_pre_hook(on_conv, with_kwargs=True))
            for stage in (module.conv1, module.conv2, module.conv3, module.conv4):
                handles.append(stage[0].register_forward_pre_hook(on_norm))
    device = next(unet.parameters()).device
    dtype = next(unet.parameters()).dtype
    try:
        with torch.no_grad():
            sample = torch.zeros(batch, unet.config.in_channels, frames, height, width, device=device, dtype=dtype)
            text = torch.zeros(batch, frames, *text_shape, device=device, dtype=dtype)
            run_unet3d(unet, sample, torch.tensor(500.0, device=device), text)
    finally:
        for handle in handles:
            handle.remove()
    return shapes


# ----------------------------------------------------------------------------------------------------------
# Traffic per rank per denoising step (one UNet call), from the layer shapes and the frame layout.


@dataclass(frozen=True)
class Traffic:
    attention_halo: int
    attention_global: int
    conv_halo: int
    norm_stats: int

    @property
    def total(self) -> int:
        return self.attention_halo + self.attention_global + self.conv_halo + self.norm_stats


def _halo_frames(layout: FrameLayout, rank: int, width: int) -> tuple[int, int]:
    """(frames this rank sends, frames it receives) for a halo of `width` on each side."""
    if layout.world_size == 1 or width == 0:
        return 0, 0
    sent = received = 0
    for sender, receiver, lo, hi in layout.transfers(width):
        if sender == rank:
            sent += hi - lo
        if receiver == rank:
            received += hi - lo
    return sent, received


def _widest_share(layout: FrameLayout, indices: Sequence[int]) -> int:
    shares = [
        sum(1 for frame in indices if start <= frame < start + count)
        for start, count in zip(layout.starts, layout.counts, strict=True)
    ]
    return max(shares) if shares else 0


def traffic_model(
    shapes: TemporalShapes,
    layout: FrameLayout,
    rank: int,
    local_window: int,
    global_frames: int,
    conv_halo: int,
    element_size: int,
    scheme: str,
) -> tuple[Traffic, Traffic]:
    """(sent, received) bytes for one UNet call on `rank`.

    scheme "ours": the attention *input* of halo and global frames travels (one tensor of C channels);
    globals by an all-gather of equally sized pieces (the widest share of global frames per rank);
    GroupNorm statistics by one all-gather per norm (float64). scheme "reference": K and V travel (two tensors),
    global K/V likewise gathered, per-rank GroupNorm statistics (nothing sent), the reference's per-rank
    global frame rule. Both: conv halos of `conv_halo` frames of each TemporalConvLayer's input.
    Collectives are counted as rings, as distributed.engine.comm counts them.
    """
    if scheme not in ("ours", "reference"):
        raise ValueError(f"unknown scheme {scheme!r}")
    world = layout.world_size
    copies = 1 if scheme == "ours" else 2  # the attention input, or K and V
    attn_sent, attn_recv = _halo_frames(layout, rank, local_window)
    conv_sent, conv_recv = _halo_frames(layout, rank, conv_halo)
    glb = 0
    if world > 1 and global_frames > 0:
        if scheme == "ours":
            indices = global_indices_exact(layout.total, global_frames)
        else:
            indices = global_indices_reference(layout, global_frames)
        glb = (world - 1) * _widest_share(layout, indices) * copies * shapes.attention_elements * element_size
    norm = 0
    if scheme == "ours" and world > 1:
        # One all-gather per norm of (count, mean, M2) per group, float64: N-1 pieces each way.
        norm = sum((world - 1) * 3 * groups * 8 for groups in shapes.frame_norm_groups)
    attn_bytes = copies * shapes.attention_elements * element_size
    conv_bytes = shapes.conv_elements * element_size
    sent = Traffic(attn_sent * attn_bytes, glb, conv_sent * conv_bytes, norm)
    received = Traffic(attn_recv * attn_bytes, glb, conv_recv * conv_bytes, norm)
    return sent, received


# ----------------------------------------------------------------------------------------------------------
# Output


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    cells = [[str(cell) for cell in row] for row in rows]
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in cells]
    return "\n".join(lines)


def human_bytes(count: float) -> str:
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if abs(count) >= size:
            return f"{count / size:.2f} {unit}"
    return f"{count:.0f} B"


def verdict(ok: bool | None) -> str:
    return "info" if ok is None else "PASS" if ok else "MISS"
