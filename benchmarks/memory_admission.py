"""The engine's memory estimate for a job against the memory the job really takes, on the demo model.

Each size runs in a fresh process (one rank, one thread): the model is loaded, then one job of two
steps runs, and its peak resident memory above the loaded model is read from the kernel.

    python -m benchmarks.memory_admission                  # three sizes (about a minute)
    python -m benchmarks.memory_admission 64x64 1024x64    # frames x size, as many as given
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from distributed.engine.comm import Communicator
from support.local_ranks import run_on_local_ranks

from .common import machine_line, markdown_table, verdict

DEMO_MODEL = Path(__file__).resolve().parent.parent / "assets" / "tiny-shapes-t2v"
SIZES = ((64, 64), (1024, 64), (32, 256))  # frames, width = height
TOLERANCE = 0.3
MIB = 2**20


def measure_target(comm: Communicator, frames: int, size: int) -> dict[str, Any]:
    """Runs in a fresh rank process: estimate and measured peak of one job above the loaded model."""
    from distributed.engine.job import JobSpec
    from distributed.engine.runner import Engine

    from .bench_targets import _release_freed_memory
    from .common import peak_rss_bytes, reset_peak_rss, rss_bytes

    engine = Engine(comm)
    prompt = [{"start": 0, "end": frames - 1, "prompt": "a red circle moving right"}]
    job = JobSpec.from_dict(
        {"model": {"base": str(DEMO_MODEL)}, "prompts": prompt, "frames": frames, "height": size, "width": size}
        | {"steps": 2, "seed": 1}
    )
    loaded = engine.model(job.model)
    assert engine._family is not None
    estimate = engine._family.peak_bytes(loaded, job, frames, frames).bytes
    _release_freed_memory()
    before = rss_bytes()
    if not reset_peak_rss():
        raise RuntimeError("this kernel cannot reset the peak RSS (/proc/self/clear_refs); nothing to measure")
    engine.run(job)
    return {"frames": frames, "size": size, "estimate": estimate, "measured": peak_rss_bytes() - before}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sizes", nargs="*", help="FRAMESxSIZE, e.g. 256x64 (default: 64x64 1024x64 32x256)")
    args = parser.parse_args()
    sizes = [tuple(int(part) for part in text.split("x")) for text in args.sizes] or list(SIZES)
    print(f"machine: {machine_line()}", flush=True)
    rows = []
    for frames, size in sizes:
        result = run_on_local_ranks(1, measure_target, {"frames": frames, "size": size}, timeout=900)[0]
        error = result["estimate"] / result["measured"] - 1
        rows.append(
            (
                f"{frames} frames at {size}x{size}",
                f"{result['estimate'] / MIB:.0f}",
                f"{result['measured'] / MIB:.0f}",
                f"{error:+.0%}",
                verdict(abs(error) <= TOLERANCE),
            )
        )
        print(f"  {rows[-1][0]}: estimate {rows[-1][1]} MiB, measured {rows[-1][2]} MiB ({rows[-1][3]})", flush=True)
    headers = ["job (one rank, 2 steps)", "estimate (MiB)", "measured (MiB)", "error", f"within {TOLERANCE:.0%}"]
    print()
    print(markdown_table(headers, rows))


if __name__ == "__main__":
    main()
