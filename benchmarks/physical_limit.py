"""Physical limit of Video-Infinity for the real VideoCrafter2 UNet config (nothing is run on a GPU).

FLOPs per frame per denoising step are counted with torch's FlopCounterMode on the meta device (the
model is built there: no weights, no memory, no arithmetic). Traffic per step per interior rank comes
from the shapes of the temporal layers (captured on the meta device too) and the frame layout, for
our scheme (attention input travels) and the reference scheme (K and V travel). From them: the ideal
time per step on a given GPU peak and the scaling-efficiency bound for NVLink and PCIe links.

    python -m benchmarks.physical_limit
    python -m benchmarks.physical_limit --ranks 8 --frames-per-rank 288 --peak-tflops 989 --mfu 0.5
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from distributed.engine.comm import Communicator
from distributed.engine.context import TemporalContext
from distributed.engine.layout import FrameLayout
from distributed.engine.settings import DualScopeSettings
from distributed.models.unet3d.model import UNet3DVideoCrafterConditionModel, run_unet3d
from distributed.models.unet3d.patch import patch_unet

from .common import TemporalShapes, Traffic, capture_temporal_shapes, human_bytes, markdown_table, traffic_model

OUT = Path(__file__).resolve().parent.parent / "artifacts" / "bench"
TEXT = (77, 1024)  # OpenCLIP ViT-H text states, as VideoCrafter2 uses
LINKS = (("NVLink (H100 SXM)", 450.0), ("PCIe 5.0 x16", 50.0), ("PCIe 4.0 x16", 25.0))
TEMPORAL_NAMES = ("temp_attentions", "temp_convs", "transformer_in")


def videocrafter2_unet() -> UNet3DVideoCrafterConditionModel:
    """UNet3DConditionModel's defaults are the ModelScope / VideoCrafter2 layout (320-640-1280-1280,
    cross-attention 1024); VideoCrafter2 adds the fps embedding."""
    with torch.device("meta"):
        return UNet3DVideoCrafterConditionModel(fps_cond=True).eval()


@dataclass(frozen=True)
class FlopCount:
    frames: int
    total: float
    temporal: float

    @property
    def per_frame(self) -> float:
        return self.total / self.frames


def count_flops(
    unet: torch.nn.Module, frames: int, height: int, width: int, patched_ctx: TemporalContext | None = None
) -> FlopCount:
    """FLOPs of one CFG-batched (batch 2) UNet call on `frames` frames, and the share of temporal layers."""
    sample = torch.zeros(2, 4, frames, height, width, device="meta")
    text = torch.zeros(2, frames, *TEXT, device="meta")
    if patched_ctx is not None:
        patched_ctx.begin_job(FrameLayout(frames, 1), DualScopeSettings())
        patched_ctx.timestep = 500.0
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        run_unet3d(unet, sample, torch.tensor(500.0, device="meta"), text, fps=24)
    if patched_ctx is not None:
        patched_ctx.end_job()
    counts = counter.get_flop_counts()
    # Module names are nested paths; keep the outermost temporal ones so nothing is counted twice.
    temporal_keys = [
        name
        for name in counts
        if any(part in name.split(".") for part in TEMPORAL_NAMES)
        and not any(
            other != name and name.startswith(other + ".")
            for other in counts
            if any(p in other.split(".") for p in TEMPORAL_NAMES)
        )
    ]
    temporal = float(sum(sum(counts[name].values()) for name in temporal_keys))
    return FlopCount(frames, float(counter.get_total_flops()), temporal)


def interior_traffic(
    shapes: TemporalShapes,
    ranks: int,
    frames_per_rank: int,
    settings: DualScopeSettings,
    element_size: int,
    scheme: str,
) -> tuple[Traffic, Traffic]:
    layout = FrameLayout(ranks * frames_per_rank, ranks)
    rank = ranks // 2 if ranks > 2 else 0  # an interior rank: neighbours on both sides
    return traffic_model(
        shapes, layout, rank, settings.local_window, settings.global_frames, settings.conv_halo, element_size, scheme
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ranks", type=int, default=8)
    parser.add_argument("--frames-per-rank", type=int, default=288, help="288 = the paper's 2300 frames over 8 GPUs")
    parser.add_argument("--height", type=int, default=320)
    parser.add_argument("--width", type=int, default=512)
    parser.add_argument("--peak-tflops", type=float, default=989.0, help="dense bf16/fp16 peak (H100 SXM: 989)")
    parser.add_argument("--mfu", type=float, default=1.0, help="share of the peak the model reaches (1 = ideal)")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    began = time.perf_counter()
    settings = DualScopeSettings()
    latent_h, latent_w = args.height // 8, args.width // 8
    element_size = 2  # fp16 / bf16

    unet = videocrafter2_unet()
    params = sum(p.numel() for p in unet.parameters())
    shapes = capture_temporal_shapes(unet, 2, latent_h, latent_w, TEXT)
    plain16 = count_flops(unet, 16, latent_h, latent_w)
    plain_long = count_flops(unet, args.frames_per_rank, latent_h, latent_w)
    ctx = TemporalContext(Communicator.single("meta"))
    patch_unet(unet, ctx)
    banded_long = count_flops(unet, args.frames_per_rank, latent_h, latent_w, ctx)

    lines = [
        f"VideoCrafter2 UNet config ({params / 1e9:.2f} B parameters), {args.height}x{args.width} -> {latent_h}x{latent_w} latents, "
        f"CFG batch 2, P={settings.local_window}, G={settings.global_frames}, conv halo {settings.conv_halo}, fp16 traffic; "
        f"{args.ranks} ranks x {args.frames_per_rank} frames.",
        "",
        "FLOPs of one denoising step (one CFG-batched UNet call), counted with FlopCounterMode on the meta device:",
        "",
        markdown_table(
            ["model", "frames in the call", "TFLOP / frame-step", "temporal layers' share"],
            [
                [
                    "unpatched (the model's native 16-frame clip)",
                    plain16.frames,
                    f"{plain16.per_frame / 1e12:.3f}",
                    f"{plain16.temporal / plain16.total:.1%}",
                ],
                [
                    "unpatched, dense temporal attention over the clip",
                    plain_long.frames,
                    f"{plain_long.per_frame / 1e12:.3f}",
                    f"{plain_long.temporal / plain_long.total:.1%}",
                ],
                [
                    "patched (banded dual-scope attention, 1 rank)",
                    banded_long.frames,
                    f"{banded_long.per_frame / 1e12:.3f}",
                    f"{banded_long.temporal / banded_long.total:.1%}",
                ],
            ],
        ),
    ]

    ours_sent, ours_recv = interior_traffic(shapes, args.ranks, args.frames_per_rank, settings, element_size, "ours")
    ref_sent, ref_recv = interior_traffic(shapes, args.ranks, args.frames_per_rank, settings, element_size, "reference")
    traffic_rows = []
    for name, ours, ref in (
        ("attention halos (2P frames)", ours_sent.attention_halo, ref_sent.attention_halo),
        ("global frames (all-gather)", ours_sent.attention_global, ref_sent.attention_global),
        ("temporal-conv halos (8 frames)", ours_sent.conv_halo, ref_sent.conv_halo),
        ("GroupNorm statistics (all-gather)", ours_sent.norm_stats, ref_sent.norm_stats),
        ("total sent", ours_sent.total, ref_sent.total),
        ("total received", ours_recv.total, ref_recv.total),
    ):
        traffic_rows.append([name, human_bytes(ours), human_bytes(ref), f"{ours / ref:.3f}" if ref else "-"])
    lines += [
        "",
        "Traffic per denoising step of an interior rank (sent; received is the same for an interior rank). "
        "Reference scheme: K and V halos, K/V global gather, conv halos; docs/algorithm.md section 8 quotes about 4.3 GB "
        "(2.2 GB halos, 1.9 GB globals, 0.24 GB conv):",
        "",
        markdown_table(["part", "ours", "reference scheme", "ours / reference"], traffic_rows),
        "",
        f"Temporal layers: {len(shapes.attention_inputs)} temporal attentions ({shapes.attention_elements * element_size / 1e6:.1f} MB of input per frame), "
        f"{len(shapes.conv_inputs)} temporal convs ({shapes.conv_elements * element_size / 1e6:.1f} MB per frame), "
        f"{len(shapes.frame_norm_groups)} GroupNorms across frames.",
    ]

    flops_step = banded_long.per_frame * args.frames_per_rank
    compute_s = flops_step / (args.peak_tflops * 1e12 * args.mfu)
    rows = []
    for link, bandwidth in LINKS:
        for scheme, sent, recv in (("ours", ours_sent, ours_recv), ("reference", ref_sent, ref_recv)):
            comm_s = max(sent.total, recv.total) / (bandwidth * 1e9)
            rows.append(
                [
                    link,
                    scheme,
                    f"{1000 * compute_s:.0f}",
                    f"{1000 * comm_s:.1f}",
                    f"{compute_s / (compute_s + comm_s):.1%}",
                    f"{min(1.0, compute_s / comm_s):.1%}",
                    f"{args.steps * (compute_s + comm_s):.1f}",
                ]
            )
    lines += [
        "",
        f"Ideal time per step and scaling-efficiency bound: {args.frames_per_rank} frames per rank, "
        f"{flops_step / 1e12:.0f} TFLOP per rank per step, peak {args.peak_tflops:.0f} TFLOP/s x MFU {args.mfu:.2f}; "
        "link bandwidth per direction; efficiency = compute / (compute + transfer) without overlap, "
        "compute / max(compute, transfer) with perfect overlap:",
        "",
        markdown_table(
            [
                "link",
                "scheme",
                "compute ms / step",
                "transfer ms / step",
                "efficiency, no overlap",
                "efficiency, full overlap",
                f"{args.steps} steps, no overlap (s)",
            ],
            rows,
        ),
        "",
        f"Counted in {time.perf_counter() - began:.1f} s (meta device, CPU only).",
    ]
    body = "\n".join(lines)
    print(body)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "physical_limit.md").write_text(body + "\n")


if __name__ == "__main__":
    main()
