"""Physical limit of clip-parallel Wan 2.1 (nothing is run): FLOPs, traffic and ideal step time per rank.

Counts from the published configs, layer by layer, per latent frame and denoising step (two model calls:
positive and negative prompt):
- self-attention: q, k, v, o projections (4 * 2 * T * d^2) and scores plus weighted sum against the
  window of 2P + 1 + G latent frames (2 * 2 * T * K * d, K = (2P + 1 + G) * T keys), T tokens per frame;
- cross-attention to 512 text tokens (q and o per token, 2 * 2 * T * d^2; scores 2 * 2 * T * 512 * d; the
  text's k and v once per call, negligible per frame);
- feed-forward (2 * 2 * T * d * ffn).
Traffic per interior rank and step: keys and values of 2P halo frames and of the G global frames per
self-attention, in bf16, twice (two model calls). Ideal step time = FLOPs of the rank's frames at the
given peak and utilisation, against the traffic at the link's bandwidth.

    python -m benchmarks.wan_limit
    python -m benchmarks.wan_limit --frames-per-rank 21 --peak-tflops 989 --mfu 0.5
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

from .common import human_bytes, markdown_table

TEXT_TOKENS = 512
BYTES = 2  # bf16
LINKS = (("NVLink (H100 SXM)", 450.0), ("PCIe 5.0 x16", 50.0))


@dataclass(frozen=True)
class WanConfig:
    name: str
    dim: int
    ffn: int
    layers: int


CONFIGS = (WanConfig("Wan 2.1 1.3B", 1536, 8960, 30), WanConfig("Wan 2.1 14B", 5120, 13824, 40))
RESOLUTIONS = (("480p (832x480)", 832, 480), ("720p (1280x720)", 1280, 720))


def tokens_per_frame(width: int, height: int) -> int:
    """8x VAE compression, then 2x2 patches."""
    return (width // 16) * (height // 16)


def flops_per_frame_step(config: WanConfig, tokens: int, window_frames: int) -> float:
    d, t = config.dim, tokens
    keys = window_frames * t
    self_attention = 4 * 2 * t * d * d + 2 * 2 * t * keys * d
    cross_attention = 2 * 2 * t * d * d + 2 * 2 * t * TEXT_TOKENS * d
    feed_forward = 2 * 2 * t * d * config.ffn
    return 2 * config.layers * (self_attention + cross_attention + feed_forward)  # two calls per step


def traffic_per_rank_step(config: WanConfig, tokens: int, halo: int, global_frames: int) -> float:
    frames = 2 * halo + global_frames
    return 2 * config.layers * frames * tokens * config.dim * 2 * BYTES  # k and v, two calls per step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--local-window", type=int, default=10, help="P, latent frames (default: Wan's)")
    parser.add_argument("--global-frames", type=int, default=16)
    parser.add_argument("--frames-per-rank", type=int, default=21, help="latent frames per rank (21 = 81 video frames)")
    parser.add_argument("--peak-tflops", type=float, default=989.0, help="dense bf16 peak (H100 SXM: 989)")
    parser.add_argument("--mfu", type=float, default=0.5, help="fraction of the peak reached")
    args = parser.parse_args()
    window = 2 * args.local_window + 1 + args.global_frames
    rows = []
    for config in CONFIGS:
        for label, width, height in RESOLUTIONS:
            tokens = tokens_per_frame(width, height)
            flops = flops_per_frame_step(config, tokens, window)
            compute_s = flops * args.frames_per_rank / (args.peak_tflops * 1e12 * args.mfu)
            traffic = traffic_per_rank_step(config, tokens, args.local_window, args.global_frames)
            row = [config.name, label, str(tokens), f"{flops / 1e12:.1f}", human_bytes(traffic), f"{compute_s:.2f}"]
            for _name, bandwidth in LINKS:
                link_s = traffic / (bandwidth * 1e9)
                row.append(f"{link_s:.2f} ({compute_s / (compute_s + link_s):.0%})")
            rows.append(row)
    header = ["model", "size", "tokens/frame", "TFLOP per frame-step", "traffic per rank-step", "compute s/step"]
    header += [f"{name} exchange s/step (efficiency)" for name, _ in LINKS]
    print(
        f"Wan clip parallelism: P={args.local_window}, G={args.global_frames} (a frame attends to {window} latent "
        f"frames), {args.frames_per_rank} latent frames per rank, {args.peak_tflops:.0f} TFLOP/s at {args.mfu:.0%}"
    )
    print(
        "(in brackets: scaling efficiency when the exchange is not hidden behind compute, compute / (compute + link))"
    )
    print(markdown_table(header, rows))


if __name__ == "__main__":
    main()
