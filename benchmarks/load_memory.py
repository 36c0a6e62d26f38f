"""Host memory while several ranks of one machine load one Wan model: all at once against in turns.

A random Wan 2.1 model of the 1.3B model's width (fewer blocks, `--layers`) is saved in fp16, then loaded by
the engine's Wan family on N local ranks, once at once and once in turns (distributed/engine/load_turns.py).
The machine's peak is sampled from this process's children every 10 ms.

    python -m benchmarks.load_memory
    python -m benchmarks.load_memory --ranks 3 --layers 10
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

from distributed.engine.admission import placement
from distributed.engine.comm import Communicator
from distributed.engine.job import ModelSpec
from distributed.engine.load_turns import LOAD_PEAK_FACTOR, load_in_turns, weight_bytes
from distributed.engine.runner import Engine
from distributed.models.wan.comfy_runtime import COMFY_ROOT_ENV
from support.local_ranks import run_in_turn

from .common import human_bytes, machine_line, markdown_table

ROOT = Path(__file__).resolve().parent.parent
WAN_1_3B_WIDTH = {"dim": 1536, "ffn_dim": 8960, "num_heads": 12}  # Wan 2.1 T2V 1.3B (30 blocks)


def load_once(comm: Communicator, weights: str, in_turns: bool) -> dict[str, Any]:
    """Loads the model on this rank (at once or in turns with the others of this machine); its span."""
    engine = Engine(comm)
    where = placement(comm)
    spec = ModelSpec(base=weights, dtype="fp16", family="wan")
    began = time.time()
    load_in_turns(comm, where.host_index, in_turns, lambda: engine.model(spec))
    return {"began": began, "ended": time.time(), "rss": psutil.Process().memory_info().rss}


class ChildrenPeak:
    """The largest sum of resident memory over this process's children, sampled every 10 ms."""

    def __init__(self) -> None:
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def __enter__(self) -> ChildrenPeak:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _watch(self) -> None:
        me = psutil.Process()
        while not self._stop.is_set():
            total = 0
            for child in me.children(recursive=True):
                try:
                    total += child.memory_info().rss
                except psutil.Error:
                    pass
            self.peak = max(self.peak, total)
            time.sleep(0.01)


def save_model(path: Path, layers: int) -> None:
    import torch

    from distributed.models.wan.comfy_runtime import import_comfy
    from support.tiny_wan import tiny_wan_state_dict

    import_comfy(on_cpu=True)
    state = tiny_wan_state_dict(num_layers=layers, **WAN_1_3B_WIDTH)
    from safetensors.torch import save_file

    save_file({name: tensor.to(torch.float16) for name, tensor in state.items()}, str(path))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ranks", type=int, default=3)
    parser.add_argument("--layers", type=int, default=10, help="Wan blocks (the 1.3B model has 30)")
    args = parser.parse_args()
    os.environ.setdefault(COMFY_ROOT_ENV, str(ROOT / ".host" / "comfyui"))
    print(machine_line())
    with tempfile.TemporaryDirectory() as folder:
        weights = Path(folder) / "wan.safetensors"
        save_model(weights, args.layers)
        size = weight_bytes([str(weights)])
        print(f"weights: {human_bytes(size)} in fp16 ({args.layers} blocks of Wan 2.1 1.3B's width)")
        rows = []
        for in_turns in (False, True):
            with ChildrenPeak() as watch:
                began = time.time()
                (results,) = run_in_turn(
                    [(args.ranks, {"weights": str(weights), "in_turns": in_turns})], load_once, timeout=900
                )
                seconds = time.time() - began
            held = sum(r["rss"] for r in results)
            loading = max(r["ended"] for r in results) - min(r["began"] for r in results)
            rows.append(
                [
                    "in turns" if in_turns else "at once",
                    human_bytes(watch.peak),
                    f"{watch.peak / size:.2f}",
                    human_bytes(held),
                    f"{loading:.1f}",
                    f"{seconds:.1f}",
                ]
            )
    print(f"\n{args.ranks} ranks on this machine; a load's estimated peak: {LOAD_PEAK_FACTOR} x the weights\n")
    headers = ["loads", "peak, all ranks", "peak / weights", "held after", "loading s", "run s (with start-up)"]
    print(markdown_table(headers, rows))


if __name__ == "__main__":
    main()
