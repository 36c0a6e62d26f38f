"""Clip parallelism on ComfyUI's own WanModel: equal to core KSampler on one worker, the same for any worker
count. Tiny random Wan 2.1 weights, real rank processes (gloo on CPU); ComfyUI is imported in the ranks only."""

from __future__ import annotations

import os
from collections.abc import Iterator

import numpy as np
import pytest

from distributed.models.wan.comfy_runtime import COMFY_ROOT_ENV
from support.comfy_tree import comfy_tree
from support.local_ranks import run_in_turn, run_on_local_ranks

from .wan_targets import (
    cancel_inside_a_step_then_sample,
    cast_fp8_export_round_trip,
    clip_parallel,
    core_and_clip_parallel,
    latent_job_across_machines,
    mixed_precision_export_round_trip,
    previews_and_latents,
    save_tiny_wan_target,
    scaled_fp8_export_round_trip,
    wan_memory_needs,
)

pytestmark = [pytest.mark.wan, pytest.mark.distributed]
FRAMES = 7  # latent frames: split unevenly over 2, 3 and 4 workers
LATENT = (1, 16, FRAMES, 8, 8)
FULL_WINDOW = {"local_window": FRAMES, "global_frames": 0, "phase_bias": False}
DUAL_SCOPE = {"local_window": 1, "global_frames": 2, "phase_threshold": 500.0}


@pytest.fixture(scope="module", autouse=True)
def comfy_root() -> Iterator[None]:
    """The rank processes import the embedded ComfyUI, as workers started by a ComfyUI server would."""
    before = os.environ.get(COMFY_ROOT_ENV)
    os.environ[COMFY_ROOT_ENV] = str(comfy_tree())
    yield
    if before is None:
        os.environ.pop(COMFY_ROOT_ENV)
    else:
        os.environ[COMFY_ROOT_ENV] = before


@pytest.fixture(scope="module")
def tiny_wan(comfy_root: None, tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("wan") / "tiny_wan_t2v.safetensors"
    return run_on_local_ranks(1, save_tiny_wan_target, {"path": str(path)})[0]


def sampling(name: str, steps: int = 3) -> dict:
    return {"sampler_name": name, "scheduler": "simple", "steps": steps, "cfg": 4.0, "seed": 11}


def relative(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).max() / np.abs(b).max())


EQUAL_TO_CORE = ["euler", "euler_ancestral", "dpmpp_2m", "uni_pc", "dpmpp_2m_sde"]
INVARIANT = ["euler", "euler_ancestral"]


def test_one_worker_with_a_full_window_equals_core_ksampler(tiny_wan: str) -> None:
    job = {"weights": tiny_wan, "latent_shape": LATENT, "settings": FULL_WINDOW}
    pairs = run_on_local_ranks(1, core_and_clip_parallel, dict(job, samplings=[sampling(n) for n in EQUAL_TO_CORE]))[0]
    for name, (core, ours) in zip(EQUAL_TO_CORE, pairs, strict=True):
        error = relative(ours, core)
        print(f"{name}: relative difference to core KSampler {error:.2e}")
        assert error < 1e-5, name


def test_dual_scope_is_the_same_for_1_2_3_4_workers(tiny_wan: str) -> None:
    job = {"weights": tiny_wan, "latent_shape": LATENT, "samplings": [sampling(n) for n in INVARIANT]}
    # Several workers attend to their own frames while the exchange travels (CPU has the fused kernel that
    # gives the normaliser); waiting for the exchange first is what devices without one run.
    splits = ((2, True), (3, True), (4, True), (3, False))
    # The exchange does the work: without it (independent clips) 3 workers give another video, and so does a
    # window over the whole video on one worker.
    others = [(3, dict(job, settings=dict(DUAL_SCOPE, mode="independent"))), (1, dict(job, settings=FULL_WINDOW))]
    runs = [(1, dict(job, settings=DUAL_SCOPE))]
    runs += [(workers, dict(job, settings=DUAL_SCOPE, overlap=overlap)) for workers, overlap in splits]
    (oracle,), *split_runs, (independent, *_), (full,) = run_in_turn(runs + others, clip_parallel)
    for (workers, overlap), (videos, *_) in zip(splits, split_runs, strict=True):
        for name, video, expected in zip(INVARIANT, videos, oracle, strict=True):
            error = relative(video, expected)
            print(f"{name} on {workers} workers (overlap {overlap}): relative difference to one worker {error:.2e}")
            assert error < (2e-5 if overlap else 1e-5), (name, workers, overlap)  # parts: fp32 rounding
    for video in (independent[0], full[0]):
        assert relative(video, oracle[0]) > 1e-3


@pytest.mark.parametrize(
    ("settings", "first_seen"),
    [  # the carried keys at three workers take both other paths' steps; those two run with --run-slow
        pytest.param(DUAL_SCOPE, 2, marks=pytest.mark.slow),
        (DUAL_SCOPE, 3),
        pytest.param(dict(DUAL_SCOPE, global_frames=0), 2, marks=pytest.mark.slow),
    ],
    ids=["global-at-checkpoint", "global-carried-by-keys", "local-only"],
)
def test_a_cancel_inside_a_step_stops_every_worker_there_and_the_group_stays_usable(
    tiny_wan: str, settings: dict, first_seen: int
) -> None:
    # The ranks agree at each attention's checkpoint; with global frames the flag also rides on the global
    # gather. Carried by the keys' gather, it stops the ranks with the values' exchange still travelling:
    # that one is settled at the end of the job, not left to meet the next job's collectives.
    job = {"weights": tiny_wan, "latent_shape": LATENT, "sampling": sampling("euler_ancestral"), "settings": settings}
    results = run_on_local_ranks(3, cancel_inside_a_step_then_sample, dict(job, first_seen=first_seen))
    assert [texts for texts, _ in results] == [["cancelled at denoising step 0", "0 in flight"]] * 3
    plain = {"weights": tiny_wan, "latent_shape": LATENT, "samplings": [job["sampling"]], "settings": settings}
    oracle = run_on_local_ranks(1, clip_parallel, plain)
    assert relative(results[0][1], oracle[0][0]) < 1e-5


def test_workers_on_machines_that_cannot_see_the_coordinators_files_receive_them_and_agree(tiny_wan, tmp_path) -> None:
    job = {"weights": tiny_wan, "latent_shape": LATENT, "sampling": sampling("euler"), "settings": DUAL_SCOPE}
    runs = [(1, dict(job, folder=str(tmp_path))), (3, dict(job, folder=str(tmp_path)))]
    (alone,), (spread, *_) = run_in_turn(runs, latent_job_across_machines)
    error = relative(spread, alone)
    print(f"3 workers, 2 of them on 'other machines': relative difference to one worker {error:.2e}")
    assert error < 1e-5
    for machine in (1, 2):  # each received the model and the job's inputs into its own folder
        received = tmp_path / f"machine-{machine}"
        assert len(list((received / "models").iterdir())) == 1 and len(list((received / "jobs").iterdir())) == 1


def test_a_wan_job_s_memory_admission_is_comfyui_s_own_estimate_on_the_frames_a_worker_holds(tiny_wan, tmp_path):
    """The estimate the engine admits a Wan job by is the minimum ComfyUI's sampler would load the model for,
    on the rank's own, halo and global frames; it grows with them, and the refusal names the worker's share."""
    latent = (1, 16, 9, 30, 52)  # 33 frames at 416x240
    holdings = [(3, 7), (3, 9), (5, 9)]
    needs = run_on_local_ranks(
        1,
        wan_memory_needs,
        {"weights": tiny_wan, "folder": str(tmp_path), "latent_shape": latent, "holdings": holdings},
    )[0]
    for (own, held), (needed, holding, comfy_minimum) in zip(holdings, needs, strict=True):
        assert needed == int(comfy_minimum) > 0, (own, held)
        assert holding == f"{own} latent frames (about {4 * own} video frames) per worker at 416x240"
    assert needs[1][0] > needs[0][0] and needs[1][0] == needs[2][0]  # more frames held, more memory


def test_scaled_fp8_weights_reach_the_workers_as_comfyui_holds_them_with_or_without_a_lora(tmp_path) -> None:
    # Before, the file lost its scaled-fp8 marker on the way: the workers read the fp8 numbers unscaled.
    found = run_on_local_ranks(1, scaled_fp8_export_round_trip, {"folder": str(tmp_path)})[0]
    assert found["alone"] == 0.0
    assert found["with_lora"] == 0.0  # merged and scaled back exactly as ComfyUI patches it
    assert found["lora_moved"] > 1e-2
    if found["held_as"] == "QuantizedTensor":  # newer ComfyUI loads the file as mixed-precision layers,
        assert found["reloaded_held_as"] == ["QuantizedTensor"] * 2  # which travel as written (the test below)
        return
    assert [found["held_as"]] * 2 == found["reloaded_held_as"] == ["torch.float8_e4m3fn"] * 2
    assert found["fp8_matmul_True"] == [True, True] and found["fp8_matmul_False"] == [False, False]


def test_mixed_precision_weights_reach_the_workers_as_comfyui_computes_with_them(tmp_path) -> None:
    # Before, a MODEL with quantized layers was refused (and, on newer ComfyUI, where scaled-fp8 files load as
    # quantized layers too, its export failed inside ComfyUI). Now they travel as ComfyUI writes such a layer
    # (ComfyUI 0.4 on: fp8 numbers, scale, format record) or dequantized (0.3.75, whose layers write no format
    # record); a LoRA is merged and quantized back as ComfyUI patches it.
    found = run_on_local_ranks(1, mixed_precision_export_round_trip, {"folder": str(tmp_path)})[0]
    assert found["held_as"] == "QuantizedTensor"
    if found["as_written"]:
        assert found["reloaded_held_as"] == ["QuantizedTensor"] * 2 and found["in_file"] == "F8_E4M3"
    else:
        assert found["reloaded_held_as"] == ["torch.float32"] * 2 and found["in_file"] == "F32"
    assert found["exported"] == "fp32"
    assert found["alone"] == 0.0 and found["with_lora"] == 0.0
    assert found["lora_moved"] > 1e-2


def test_weights_unetloader_casts_to_fp8_travel_in_fp8_and_load_as_the_graph_holds_them(tmp_path) -> None:
    # Before, a MODEL loaded with UNETLoader's weight_dtype fp8_* was refused; now its fp8 numbers travel as
    # they are (no second rounding) and the workers load them with the same weight_dtype.
    found = run_on_local_ranks(1, cast_fp8_export_round_trip, {"folder": str(tmp_path)})[0]
    held = {
        "fp8_e4m3fn": "torch.float8_e4m3fn",
        "fp8_e4m3fn_fast": "torch.float8_e4m3fn",
        "fp8_e5m2": "torch.float8_e5m2",
    }
    for weight_dtype, dtype in held.items():
        case = found[weight_dtype]
        assert case["exported_as"] == weight_dtype
        assert [case["held_as"], *case["reloaded_held_as"]] == [dtype] * 3, weight_dtype
        assert case["fast"] == [weight_dtype.endswith("_fast")] * 3, weight_dtype
        assert case["alone"] == 0.0 and case["with_lora"] == 0.0, weight_dtype
        assert case["lora_moved"] > 1e-2, weight_dtype
        assert case["bytes"] < 0.3 * found["fp32_bytes"], weight_dtype  # 1 byte per weight, not 4


def test_the_first_worker_previews_each_step_and_the_last_preview_is_the_result(tiny_wan: str) -> None:
    job = {"weights": tiny_wan, "latent_shape": LATENT, "sampling": sampling("euler"), "settings": DUAL_SCOPE}
    root, other = run_on_local_ranks(2, previews_and_latents, job)
    assert other["previews"] == [], "only the rank holding the first frame previews"
    previews = root["previews"]
    assert [(step, total) for step, total, _ in previews] == [(1, 3), (2, 3), (3, 3)]
    assert all(latent.shape == (1, 16, 1, 8, 8) for *_, latent in previews)
    # Euler's last step lands on its clean estimate, so the last preview is the result's first frame, in the
    # model's latent space as core KSampler's previews are.
    np.testing.assert_allclose(previews[-1][2], root["first_in_model_space"], rtol=1e-5, atol=1e-5)
