"""Peak memory of one temporal attention call: our banded dual-scope attention against dense masked
attention over [own frames ; halos ; globals], at the first UNet level of VideoCrafter2.

At 320x512 the first level has B*H*W = 2*40*64 = 5120 query rows of 5 heads x 64 channels; dense
masked attention over 288 frames per rank (the paper's 2300 frames over 8 GPUs) has about 4.7 GB of
fp16 scores there, more than a CPU benchmark should hold. The measured runs therefore use fewer rows
(64 for the frame sweep; 256 and 1024 at 288 frames to show how each method grows with rows), fp32.
The explicit dense path is linear in rows; ours is bounded by its chunk of rows; torch's fused SDPA
holds little beyond its output. Each method runs in a fresh process; the peak is the resident set's
high-water mark (VmHWM, reset before the call) minus the resident set before it, so inputs are not
counted (the output is, the same for every method).

    python -m benchmarks.attention_memory                 # 72, 144, 288, 576 frames per rank; 64, 256, 1024 rows
    python -m benchmarks.attention_memory --quick         # 288 frames per rank, 64 rows only
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from distributed.engine.banded import ACCELERATOR_CHUNK_ELEMENTS, BandSpec, band_plan, banded_attention, query_block
from support.local_ranks import run_on_local_ranks

from .common import MIB, human_bytes, machine_line, markdown_table, peak_rss_bytes, reset_peak_rss, rss_bytes

OUT = Path(__file__).resolve().parent.parent / "artifacts" / "bench"
REAL_TOKENS = 2 * 40 * 64  # CFG batch 2 x 40x64 latent positions at 320x512
HEADS, HEAD_DIM = 5, 64  # 320 channels at the first level, 64 per head
MATH_LIMIT = 1 << 30  # bytes of one dense score tensor the explicit path may hold
METHODS = {
    "banded": "banded dual-scope (ours)",
    "sdpa": "dense masked, torch SDPA",
    "math": "dense masked, explicit softmax(QK^T + mask) V",
}


def dense_mask(frames: int, start: int, total: int, width: int, globals_count: int) -> torch.Tensor:
    """The additive mask of dense attention over [left halo ; own ; right halo ; globals]: query i sees
    local key j iff |j - i| <= P and the frame exists; globals always."""
    query = torch.arange(frames).view(frames, 1)
    key = torch.arange(frames + 2 * width).view(1, -1) - width  # local key position relative to own frame 0
    frame = start + key
    visible = ((key - query).abs() <= width) & (frame >= 0) & (frame < total)
    local = torch.zeros(visible.shape).masked_fill(~visible, float("-inf"))
    return torch.cat([local, torch.zeros(frames, globals_count)], dim=1)


def attend(
    method: str,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    start: int,
    total: int,
    width: int,
    globals_count: int,
) -> torch.Tensor:
    frames = q.shape[2]
    scale = 1.0 / math.sqrt(q.shape[-1])
    if method == "banded":
        plan = band_plan(BandSpec(frames, start, total, width, globals_count), q.device, q.dtype)
        return banded_attention(q, k, v, plan, scale)
    mask = dense_mask(frames, start, total, width, globals_count)
    if method == "sdpa":
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)
    scores = (q @ k.transpose(-1, -2)) * scale + mask
    return scores.softmax(-1) @ v


def memory_target(
    comm: Any, method: str, cases: list[tuple[int, int]], width: int, globals_count: int
) -> list[dict[str, Any]]:
    """Runs in a fresh process: peak memory and time of one attention call per (rows, frames) case,
    smallest first (so memory a case leaves behind is less than the next one needs)."""
    import ctypes
    import gc

    results = []
    generator = torch.Generator().manual_seed(0)
    for index, (tokens, frames) in enumerate(sorted(cases, key=lambda case: case[0] * case[1])):
        start, total = frames, 3 * frames  # a middle rank: both halos are real frames
        q = torch.randn(tokens, HEADS, frames, HEAD_DIM, generator=generator)
        k = torch.randn(tokens, HEADS, frames + 2 * width + globals_count, HEAD_DIM, generator=generator)
        v = torch.randn(k.shape, generator=generator)
        if index == 0:  # lazy initialisation of kernels and thread pools is not the method's memory
            attend(
                method,
                q[:, :, :16],
                k[:, :, : 16 + 2 * width + globals_count],
                v[:, :, : 16 + 2 * width + globals_count],
                16,
                48,
                width,
                globals_count,
            )
        gc.collect()
        ctypes.CDLL("libc.so.6").malloc_trim(0)
        before = rss_bytes()
        reset_peak_rss()
        began = time.perf_counter()
        out = attend(method, q, k, v, start, total, width, globals_count)
        elapsed = time.perf_counter() - began
        peak = peak_rss_bytes() - before
        results.append(
            {
                "tokens": tokens,
                "frames": frames,
                "peak": peak,
                "time": elapsed,
                "output": out.numel() * out.element_size(),
                "checksum": float(out.double().sum()),
            }
        )
        del q, k, v, out
    return results


def score_counts(frames: int, width: int, globals_count: int) -> dict[str, int]:
    """Attention scores per head and query row set: dense, ours as blocked, and the ideal band."""
    block = query_block(frames, width)
    return {
        "dense": frames * (frames + 2 * width + globals_count),
        "ours": math.ceil(frames / block) * block * (block + 2 * width + globals_count),
        "ideal": frames * (2 * width + 1 + globals_count),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="288 frames per rank, 64 rows only")
    parser.add_argument("--frames", type=int, nargs="*", help="frames per rank (default 72 144 288 576)")
    parser.add_argument(
        "--tokens", type=int, default=64, help="query rows B*H*W of the frame sweep (5120 at 320x512, CFG batch 2)"
    )
    parser.add_argument(
        "--row-sweep", type=int, nargs="*", default=None, help="more row counts, at 288 frames (default 256 1024)"
    )
    parser.add_argument("--local-window", type=int, default=8)
    parser.add_argument("--global-frames", type=int, default=16)
    parser.add_argument("--out", type=Path, default=None, help="output folder (default artifacts/bench)")
    args = parser.parse_args()
    out_dir = args.out or (OUT / "quick" if args.quick else OUT)
    frame_counts = args.frames or ([288] if args.quick else [72, 144, 288, 576])
    row_sweep = [] if args.quick else (args.row_sweep if args.row_sweep is not None else [256, 1024])
    width, count = args.local_window, args.global_frames
    cases = [(args.tokens, frames) for frames in frame_counts] + [
        (rows, 288) for rows in row_sweep if rows != args.tokens
    ]
    began = time.perf_counter()
    measured: dict[str, dict[tuple[int, int], dict[str, Any]]] = {}
    for method in METHODS:
        # The explicit dense path holds several F x (F+2P+G) tensors: leave out cases that would not fit.
        allowed = [
            c for c in cases if method != "math" or c[0] * HEADS * c[1] * (c[1] + 2 * width + count) * 4 <= MATH_LIMIT
        ]
        kwargs = dict(method=method, cases=allowed, width=width, globals_count=count)
        rows = run_on_local_ranks(1, memory_target, kwargs, timeout=900)[0]
        measured[method] = {(row["tokens"], row["frames"]): row for row in rows}

    table = []
    for case in sorted(cases, key=lambda c: (c[0], c[1])):
        base = measured["banded"][case]
        for method, label in METHODS.items():
            row = measured[method].get(case)
            if row is None:
                table.append([case[0], case[1], label, "not run (too large)", "", "", "", ""])
                continue
            agrees = abs(row["checksum"] - base["checksum"]) <= 1e-3 * max(1.0, abs(base["checksum"]))
            table.append(
                [
                    case[0],
                    case[1],
                    label,
                    f"{row['peak'] / MIB:.1f}",
                    f"{row['output'] / MIB:.1f}",
                    f"{row['peak'] / max(1, base['peak']):.2f}",
                    f"{1000 * row['time']:.0f}",
                    "yes" if agrees else "NO",
                ]
            )
    lines = [
        f"One temporal attention call at the first UNet level of VideoCrafter2 (attention core: q, k, v given), "
        f"{HEADS} heads x {HEAD_DIM} channels, fp32, P={width}, G={count}, a middle rank (both halos real), one thread. "
        f"The real size has {REAL_TOKENS} query rows (CFG batch 2 x 40x64). Machine: {machine_line()}.",
        "",
        markdown_table(
            [
                "rows (B*H*W)",
                "frames / rank",
                "method",
                "peak above inputs (MiB)",
                "of which the output (MiB)",
                "vs ours",
                "time (ms)",
                "same output",
            ],
            table,
        ),
    ]

    analytic = []
    for frames in sorted(set(frame_counts) | {288, 2304}):
        counts = score_counts(frames, width, count)
        real = REAL_TOKENS * HEADS * 2  # fp16 bytes per score position at the real size
        analytic.append(
            [
                frames,
                f"{counts['dense']:,}",
                f"{counts['ours']:,}",
                f"{counts['ideal']:,}",
                f"{counts['dense'] / counts['ours']:.1f}x",
                human_bytes(counts["dense"] * real),
                human_bytes(counts["ours"] * real),
            ]
        )
    block = query_block(288, width)
    lines += [
        "",
        f"Scores per head and query row: dense F*(F+2P+G), ours (query blocks of {block}, each against its "
        f"{block}+2P local keys and the G globals) ceil(F/{block})*{block}*({block}+2P+G), the ideal band F*(2P+1+G). "
        f"Bytes: all scores of one call at {REAL_TOKENS} rows x {HEADS} heads in fp16, if materialised at once "
        f"(ours never is: it works in chunks of rows whose key/value windows hold at most {ACCELERATOR_CHUNK_ELEMENTS:,} elements on an accelerator; "
        "fused SDPA kernels never materialise them either, but still compute all of them):",
        "",
        markdown_table(
            [
                "frames / rank",
                "dense scores",
                "ours",
                "ideal band",
                "dense / ours",
                "dense, fp16 bytes",
                "ours, fp16 bytes",
            ],
            analytic,
        ),
        "",
        f"Run took {time.perf_counter() - began:.0f} s.",
    ]
    body = "\n".join(lines)
    print(body)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "attention_memory.md").write_text(body + "\n")


if __name__ == "__main__":
    main()
