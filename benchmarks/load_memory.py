"""Host memory of a Wan model's load on several ranks of one machine: what each rank keeps, what they share.

A random Wan 2.1 model of the 1.3B model's width (fewer blocks, `--layers`) is saved in fp16 and loaded by
the engine's Wan family on N local CPU ranks at once. Each rank samples its own resident memory every 5 ms,
split as the kernel splits it: anonymous pages (the rank's own; the model's parameters) and file pages
(the weights file, read through a memory map, so one page-cache copy serves every rank and the kernel
can drop it under pressure). The machine's available memory is sampled beside them.

    python -m benchmarks.load_memory
    python -m benchmarks.load_memory --ranks 4 --layers 10
"""

from __future__ import annotations

import argparse
import os
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import psutil

from distributed.engine.comm import Communicator
from distributed.engine.job import ModelSpec
from distributed.engine.runner import Engine
from distributed.models.wan.comfy_runtime import COMFY_ROOT_ENV
from support.comfy_tree import comfy_tree
from support.local_ranks import run_on_local_ranks

from .common import human_bytes, machine_line, markdown_table

WAN_1_3B_WIDTH = {"dim": 1536, "ffn_dim": 8960, "num_heads": 12}  # Wan 2.1 T2V 1.3B (30 blocks)
KINDS = ("RssAnon", "RssFile")


def resident() -> dict[str, int]:
    """This process's anonymous and file-backed resident bytes (/proc/self/status), and the machine's memory in
    use (total less available)."""
    memory = psutil.virtual_memory()
    found = {"machine": memory.total - memory.available}
    with open("/proc/self/status") as status:
        for line in status:
            key = line.split(":")[0]
            if key in KINDS:
                found[key] = int(line.split()[1]) * 1024
    return found


class Peaks:
    """The largest value of each of `sample()`'s keys, sampled every 5 ms on a thread of its own."""

    def __init__(self, sample: Any) -> None:
        self.sample = sample
        self.peak = dict(sample())
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def __enter__(self) -> Peaks:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _watch(self) -> None:
        while not self._stop.is_set():
            for key, value in self.sample().items():
                self.peak[key] = max(self.peak[key], value)
            time.sleep(0.005)


def load_on_rank(comm: Communicator, weights: str) -> dict[str, Any]:
    """Loads the model on this rank; its resident memory before, at the peak and after."""
    from distributed.models.wan.comfy_runtime import import_comfy

    import_comfy(on_cpu=True)  # ComfyUI's own import is not the load's memory
    engine = Engine(comm)
    comm.failed_anywhere(False)  # every rank starts its load at the same moment
    before = resident()
    with Peaks(resident) as watch:
        engine.model(ModelSpec(base=weights, dtype="fp16", family="wan"))
    return {"before": before, "peak": watch.peak, "after": resident()}


def save_model(path: Path, layers: int) -> None:
    import torch
    from safetensors.torch import save_file

    from distributed.models.wan.comfy_runtime import import_comfy
    from support.tiny_wan import tiny_wan_state_dict

    import_comfy(on_cpu=True)
    state = tiny_wan_state_dict(num_layers=layers, **WAN_1_3B_WIDTH)
    save_file({name: tensor.to(torch.float16) for name, tensor in state.items()}, str(path))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ranks", type=int, default=4)
    parser.add_argument("--layers", type=int, default=10, help="Wan blocks (the 1.3B model has 30)")
    args = parser.parse_args()
    os.environ.setdefault(COMFY_ROOT_ENV, str(comfy_tree()))
    print(machine_line())
    with tempfile.TemporaryDirectory() as folder:
        weights = Path(folder) / "wan.safetensors"
        save_model(weights, args.layers)
        size = weights.stat().st_size
        print(f"weights: {human_bytes(size)} in fp16 ({args.layers} blocks of Wan 2.1 1.3B's width)")
        ranks = run_on_local_ranks(args.ranks, load_on_rank, {"weights": str(weights)}, timeout=900)
    rows = []
    for rank, seen in enumerate(ranks):
        row = [str(rank)]
        for kind in KINDS:
            grew = seen["peak"][kind] - seen["before"][kind]
            kept = seen["after"][kind] - seen["before"][kind]
            row += [f"{human_bytes(grew)} ({grew / size:.2f})", f"{human_bytes(kept)} ({kept / size:.2f})"]
        rows.append(row)
    print(f"\n{args.ranks} ranks loading at once; in brackets, per byte of the weights file\n")
    headers = ["rank", "anonymous, peak rise", "anonymous, kept", "file pages, peak rise", "file pages, kept"]
    print(markdown_table(headers, rows))
    grew = max(seen["peak"]["machine"] for seen in ranks) - min(seen["before"]["machine"] for seen in ranks)
    print(
        f"\nthe machine's memory in use (total less available) rose by at most {human_bytes(grew)} ({grew / size:.2f})"
    )


if __name__ == "__main__":
    main()
