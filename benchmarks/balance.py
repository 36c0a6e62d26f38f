"""Frame shares "auto" on mismatched devices: job times with an even split and with the measured split.

Two gloo/CPU workers run the real engine on the tiny random pipeline; rank 1 computes three times slower
(tests/pool_slow_device_engine.py stands in for a slower GPU, which this machine does not have). The
script runs jobs on an even split, then jobs split as frame_shares "auto" splits them, and prints each
job's split, every rank's compute time and the job's wall time.

    python -m benchmarks.balance                      # 32 frames of 128 x 128, 4 steps, 4 jobs of each
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from distributed.engine.job import JobSpec
from distributed.pool import PoolConfig, WorkerPool
from support.tiny_models import build_tiny_pipeline

SLOW_ENGINE = f"{Path(__file__).resolve().parents[1] / 'tests' / 'pool_slow_device_engine.py'}:make_engine"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=32)
    parser.add_argument("--size", type=int, default=128, help="width and height in pixels")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--jobs", type=int, default=4, help="jobs of each kind")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as folder:
        model = build_tiny_pipeline(Path(folder) / "tiny", words=["red", "ball"])

        def job(shares: tuple[float, ...]) -> JobSpec:
            return JobSpec.from_dict(
                {
                    "model": {"base": str(model), "unet": None, "dtype": "fp32"},
                    "prompt": "a red ball",
                    "frames": args.frames,
                    "height": args.size,
                    "width": args.size,
                    "steps": args.steps,
                    "seed": 0,
                    "attention": {"local_window": 4, "global_frames": 8},
                    "frame_shares": list(shares),
                }
            )

        with WorkerPool(PoolConfig(devices="cpu:2", engine_factory=SLOW_ENGINE)) as pool:
            pool.submit(job(())).result(600)  # loads the model; not counted
            walls: dict[str, list[float]] = {"even": [], "auto": []}
            print("| split | shares | frames per rank | compute s per rank | wall s |")
            print("|---|---|---|---|---|")
            for kind in ("even", "auto"):
                for _ in range(args.jobs):
                    shares = pool.balanced_shares(job(())) if kind == "auto" else ()
                    began = time.monotonic()
                    pool.submit(job(shares)).result(600)
                    walls[kind].append(time.monotonic() - began)
                    workers = pool.status()["workers"]
                    frames = ", ".join(str(worker["frames"]) for worker in workers)
                    seconds = ", ".join(f"{worker['compute_s']:.2f}" for worker in workers)
                    shown = ", ".join(map(str, shares)) or "-"
                    print(f"| {kind} | {shown} | {frames} | {seconds} | {walls[kind][-1]:.2f} |", flush=True)
    even, auto = statistics.median(walls["even"]), statistics.median(walls["auto"][1:] or walls["auto"])
    print(
        f"\nmedian wall per job: even split {even:.2f} s; auto, after its first job, {auto:.2f} s ({auto / even:.2f}x)"
    )


if __name__ == "__main__":
    main()
