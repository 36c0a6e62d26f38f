"""Clip parallelism on ComfyUI's own WanModel: equal to core KSampler on one worker, the same for any worker
count. Tiny random Wan 2.1 weights, real rank processes (gloo on CPU); ComfyUI is imported in the ranks only."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from distributed.models.wan.comfy_runtime import COMFY_ROOT_ENV
from support.local_ranks import run_on_local_ranks

from .wan_targets import clip_parallel, core_ksampler, save_tiny_wan_target

pytestmark = [pytest.mark.wan, pytest.mark.distributed]
REPO = Path(__file__).resolve().parents[1]
FRAMES = 7  # latent frames: split unevenly over 2, 3 and 4 workers
LATENT = (1, 16, FRAMES, 8, 8)
FULL_WINDOW = {"local_window": FRAMES, "global_frames": 0, "phase_bias": False}
DUAL_SCOPE = {"local_window": 1, "global_frames": 2, "phase_threshold": 500.0}


@pytest.fixture(scope="module")
def tiny_wan(tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("wan") / "tiny_wan_t2v.safetensors"
    return run_on_local_ranks(1, save_tiny_wan_target, {"path": str(path)})[0]


@pytest.fixture(autouse=True)
def comfy_root(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(COMFY_ROOT_ENV, str(REPO / ".host" / "comfyui"))


def sampling(name: str, steps: int = 3) -> dict:
    return {"sampler_name": name, "scheduler": "simple", "steps": steps, "cfg": 4.0, "seed": 11}


def relative(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).max() / np.abs(b).max())


@pytest.mark.parametrize("sampler", ["euler", "euler_ancestral", "dpmpp_2m", "uni_pc", "dpmpp_2m_sde"])
def test_one_worker_with_a_full_window_equals_core_ksampler(tiny_wan: str, sampler: str) -> None:
    job = {"weights": tiny_wan, "latent_shape": LATENT, "sampling": sampling(sampler)}
    core = run_on_local_ranks(1, core_ksampler, job)[0]
    ours = run_on_local_ranks(1, clip_parallel, dict(job, settings=FULL_WINDOW))[0]
    error = relative(ours, core)
    print(f"{sampler}: relative difference to core KSampler {error:.2e}")
    assert error < 1e-5


@pytest.mark.parametrize("sampler", ["euler", "euler_ancestral"])
def test_dual_scope_is_the_same_for_1_2_3_4_workers(tiny_wan: str, sampler: str) -> None:
    job = {"weights": tiny_wan, "latent_shape": LATENT, "sampling": sampling(sampler), "settings": DUAL_SCOPE}
    oracle = run_on_local_ranks(1, clip_parallel, job)[0]
    for workers in (2, 3, 4):
        error = relative(run_on_local_ranks(workers, clip_parallel, job)[0], oracle)
        print(f"{sampler} on {workers} workers: relative difference to one worker {error:.2e}")
        assert error < 1e-5
    full = run_on_local_ranks(1, clip_parallel, dict(job, settings=FULL_WINDOW))[0]
    assert relative(oracle, full) > 1e-3, "the dual-scope window should change the result of a 7-frame video"
