"""Clip parallelism on ComfyUI's own LTX-Video model: equal to core KSampler on one worker, the same for any
worker count, text-to-video and image-to-video. Tiny random LTX-Video weights, real rank processes (gloo on
CPU); ComfyUI is imported in the ranks only."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from support.local_ranks import run_in_turn, run_on_local_ranks

from .ltxv_targets import gpu_check_section_on_cpu, graph_job_through_the_engine
from .test_wan_engine import comfy_root, relative, sampling  # noqa: F401 - comfy_root: the ranks import ComfyUI
from .wan_targets import clip_parallel, core_and_clip_parallel, save_tiny_ltxv_target

pytestmark = [pytest.mark.ltxv, pytest.mark.distributed]
FRAMES = 7  # latent frames (49 video frames): split unevenly over 2, 3 and 4 workers
LATENT = (1, 128, FRAMES, 4, 4)  # LTX-Video: 128 channels per 32x32 pixels
FULL_WINDOW = {"local_window": FRAMES, "global_frames": 0, "phase_bias": False}
DUAL_SCOPE = {"local_window": 1, "global_frames": 2, "phase_threshold": 500.0}
EQUAL_TO_CORE = ["euler", "euler_ancestral", "dpmpp_2m", "uni_pc"]
INVARIANT = ["euler", "euler_ancestral"]
KEEP_FIRST = (False, True)  # text-to-video, image-to-video


@pytest.fixture(scope="module")
def tiny_ltxv(comfy_root: None, tmp_path_factory: pytest.TempPathFactory) -> str:  # noqa: F811
    path = tmp_path_factory.mktemp("ltxv") / "tiny_ltxv.safetensors"
    return run_on_local_ranks(1, save_tiny_ltxv_target, {"path": str(path)})[0]


def test_one_worker_with_a_full_window_equals_core_ksampler(tiny_ltxv: str) -> None:
    """Text-to-video and image-to-video, in one rank process (starting one costs more than the tiny model)."""
    job = {"weights": tiny_ltxv, "latent_shape": LATENT, "settings": FULL_WINDOW}
    job["samplings"] = [sampling(n) for n in EQUAL_TO_CORE]
    runs = [(1, dict(job, keep_first=keep_first)) for keep_first in KEEP_FIRST]
    for keep_first, (pairs,) in zip(KEEP_FIRST, run_in_turn(runs, core_and_clip_parallel), strict=True):
        for name, (core, ours) in zip(EQUAL_TO_CORE, pairs, strict=True):
            error = relative(ours, core)
            print(f"{name}, keep_first {keep_first}: relative difference to core KSampler {error:.2e}")
            assert error < 1e-5, (name, keep_first)
            if keep_first:  # the start image's latent frame is kept, as core keeps it
                np.testing.assert_array_equal(ours[:, :, 0], core[:, :, 0])


def test_dual_scope_is_the_same_for_1_2_3_4_workers(tiny_ltxv: str) -> None:
    """Text-to-video and image-to-video, each on 1, 2, 3 and 4 workers, on one set of rank processes."""
    splits = (2, 3, 4)
    runs = []
    for keep_first in KEEP_FIRST:
        job = {"weights": tiny_ltxv, "latent_shape": LATENT, "samplings": [sampling(n) for n in INVARIANT]}
        job["keep_first"] = keep_first
        # Without the exchange (independent clips) 3 workers give another video, and so does a window over the
        # whole video: the dual-scope attention and the exchange do the work.
        others = [(3, dict(job, settings=dict(DUAL_SCOPE, mode="independent"))), (1, dict(job, settings=FULL_WINDOW))]
        runs += [(workers, dict(job, settings=DUAL_SCOPE)) for workers in (1, *splits)] + others
    results = run_in_turn(runs, clip_parallel)
    per_case = len(results) // len(KEEP_FIRST)
    for case, keep_first in enumerate(KEEP_FIRST):
        (oracle,), *split_runs, (independent, *_), (full,) = results[case * per_case : (case + 1) * per_case]
        for workers, (videos, *_) in zip(splits, split_runs, strict=True):
            for name, video, expected in zip(INVARIANT, videos, oracle, strict=True):
                error = relative(video, expected)
                print(f"{name}, keep_first {keep_first}, {workers} workers: relative difference to one {error:.2e}")
                assert error < 2e-5, (name, keep_first, workers)
        for video in (independent[0], full[0]):
            assert relative(video, oracle[0]) > 1e-3


def test_the_graph_s_model_sampling_frame_rate_and_text_mask_reach_the_workers(tiny_ltxv: str, tmp_path: Path):
    """ModelSamplingLTXV's shift (a flux sampling, not Wan's), LTXVConditioning's frame rate and the text's
    attention mask travel with the job: 2 workers through the engine, with a window over the whole video, give
    core KSampler's latents on the graph's MODEL and conditioning, with an even or an uneven split."""
    job = {"weights": tiny_ltxv, "latent_shape": LATENT, "sampling": sampling("euler"), "settings": FULL_WINDOW}
    cases = ((False, ()), (True, ()), (False, (1, 3)))  # (1, 3): 2 and 5 latent frames
    runs = [
        (2, dict(job, folder=str(tmp_path / f"case-{i}"), keep_first=keep_first, frame_shares=shares))
        for i, (keep_first, shares) in enumerate(cases)
    ]
    for (keep_first, shares), (result, _) in zip(cases, run_in_turn(runs, graph_job_through_the_engine), strict=True):
        assert result["sampling"].kind == "flux" and result["sampling"].shift != 2.37  # ModelSamplingLTXV's shift
        error = relative(result["latents"], result["core"])
        print(f"keep_first {keep_first}, shares {shares}: 2 workers through the engine vs core KSampler {error:.2e}")
        assert error < 1e-5


def test_the_gpu_check_s_ltx_video_section_runs(comfy_root: None) -> None:  # noqa: F811
    """The section a GPU session runs at LTX-Video 2B's size, here at a small size on the CPU."""
    result = run_on_local_ranks(1, gpu_check_section_on_cpu, {})[0]
    assert result["output"] == "finite" and result["seconds_per_step (first steps included)"] > 0
