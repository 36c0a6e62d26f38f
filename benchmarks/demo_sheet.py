"""The default demo's video across its worker borders, as a picture: docs/images/demo-borders.png.

Runs the job of workflows/api/text_to_video.json (the settings `bash scripts/demo.sh` queues) on 2 CPU
workers, then draws 8 frames around every border (a red bar marks it) and tracks colour, shape and
direction on each worker's clip.

    .venv/bin/python -m benchmarks.demo_sheet [--workers 2] [--model assets/tiny-shapes-t2v] [--out docs/images/demo-borders.png]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from benchmarks.quality import contact_sheet
from distributed.engine.job import JobSpec, ModelSpec
from distributed.engine.layout import FrameLayout
from distributed.pool import PoolConfig, WorkerPool
from training import shapes_data as shapes

REPO = Path(__file__).resolve().parents[1]
WORKFLOW = REPO / "workflows" / "api" / "text_to_video.json"


def demo_job(workflow: Path, model: Path) -> JobSpec:
    nodes = json.loads(workflow.read_text())
    by_type = {node["class_type"]: node["inputs"] for node in nodes.values()}
    sampler = by_type["VideoInfinityClipParallelSampler"]
    attention = {k: v for k, v in by_type["VideoInfinityDualScopeAttention"].items() if not isinstance(v, list)}
    settings = {k: sampler[k] for k in ("width", "height", "steps", "cfg", "sampler", "seed", "fps", "negative_prompt")}
    return JobSpec.build(
        ModelSpec(base=str(model)), sampler["prompt"], sampler["frames"], attention=attention, **settings
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--workflow", type=Path, default=WORKFLOW, help="an API-format workflow")
    parser.add_argument("--model", type=Path, default=REPO / "assets" / "tiny-shapes-t2v")
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "images" / "demo-borders.png")
    args = parser.parse_args()
    job = demo_job(args.workflow, args.model)
    with WorkerPool(PoolConfig(devices=f"cpu:{args.workers}")) as pool:
        video = pool.submit(job).result(1800)
    layout = FrameLayout(job.frames, args.workers)
    contact_sheet(video, list(layout.starts[1:]), args.out)
    print(f"{job.prompts[0].prompt!r}, {job.frames} frames on {args.workers} workers, seed {job.seed}: {args.out}")
    for rank in range(args.workers):
        start, end = layout.span(rank)
        track = shapes.track_clip(video[start:end])
        print(f"  worker {rank} (frames {start}-{end - 1}): {track.colour} {track.shape} moving {track.direction}")


if __name__ == "__main__":
    main()
