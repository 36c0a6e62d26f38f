"""GPU-count invariance and the cost model, on real gloo process groups (CPU processes stand in for GPUs)."""

from __future__ import annotations

import numpy as np
import pytest
from diffusers import UNet3DConditionModel
from diffusers.models.resnet import TemporalConvLayer
from diffusers.models.transformers.transformer_temporal import TransformerTemporalModel

from distributed.engine.layout import global_indices_exact
from support.local_ranks import run_in_turn, run_job, run_on_local_ranks
from support.tiny_models import build_tiny_pipeline

from .dist_targets import (
    exchanges_posted_together,
    groupnorm_statistics,
    settle_after_a_cancel,
    temporal_conv_call,
    unet_call,
)

pytestmark = pytest.mark.distributed

SETTINGS = {"local_window": 3, "global_frames": 4, "phase_threshold": 500.0}
STAGES_PER_CONV = 4  # a TemporalConvLayer: four (GroupNorm, SiLU, Conv3d over frames) stages


def job(model, **overrides):
    spec = {
        "model": {"base": str(model)},
        "prompts": [{"start": 0, "end": 9, "prompt": "a red ball"}, {"start": 10, "end": 18, "prompt": "ball"}],
        "blend": 2,
        "frames": 19,
        "height": 32,
        "width": 32,
        "steps": 3,
        "cfg": 5.0,
        "sampler": "sde_dpmpp",
        "seed": 7,
        "attention": dict(SETTINGS),
    }
    spec.update(overrides)
    return spec


def whole_video(parts, axis):
    return np.concatenate([part["out"] for part in parts], axis=axis)


@pytest.mark.parametrize("dtype,tolerance", [("float64", 1e-12), pytest.param("float32", 1e-5, marks=pytest.mark.slow)])
def test_one_unet_call_is_the_same_for_1_2_3_4_ranks(dtype, tolerance):
    # 19 frames split unevenly; with 4 ranks a clip (4-5 frames) is shorter than the conv halo plus the
    # attention window, so halos span several ranks. float64 shows the algorithm itself is exact.
    kwargs = {"frames": 19, "settings": SETTINGS, "timestep": 600.0, "dtype": dtype}
    oracle, *splits = run_in_turn([(world_size, kwargs) for world_size in (1, 2, 3, 4)], unet_call)
    oracle = oracle[0]["out"]
    for world_size, parts in zip((2, 3, 4), splits, strict=True):
        video = whole_video(parts, axis=2)
        error = np.abs(video - oracle).max()
        print(f"{dtype} N={world_size}: max |difference| {error:.2e} (output max {np.abs(oracle).max():.2f})")
        assert error < tolerance


@pytest.mark.parametrize("phase_timestep", [pytest.param(900.0, marks=pytest.mark.slow), 100.0])
def test_phase_bias_changes_output_and_stays_exact(phase_timestep):
    kwargs = {"frames": 12, "settings": SETTINGS, "timestep": phase_timestep, "dtype": "float64"}
    plain = dict(kwargs, settings=dict(SETTINGS, phase_bias=False))
    oracle, parts, without_bias = run_in_turn([(1, kwargs), (3, kwargs), (1, plain)], unet_call)
    assert np.abs(whole_video(parts, axis=2) - oracle[0]["out"]).max() < 1e-12
    assert np.abs(without_bias[0]["out"] - oracle[0]["out"]).max() > 1e-6


def test_temporal_conv_and_groupnorm_are_exact_across_rank_borders():
    exact, reference = {"frames": 10, "mode": "exact"}, {"frames": 10, "mode": "reference"}
    oracle, parts, reference = run_in_turn([(1, exact), (3, exact), (3, reference)], temporal_conv_call)
    oracle = oracle[0]["out"]
    assert np.abs(whole_video(parts, axis=1) - oracle).max() < 1e-12
    assert all(part["bytes"] > 0 for part in parts)
    # Exact mode: each of the four stages convolves the own frames only (the halo frames are borrowed per
    # stage, not recomputed); reference mode runs the stages on 4 halo frames per side as well.
    assert [sum(part["convolved"]) for part in parts] == [4 * len(part["out"][0]) for part in parts]
    assert all(sum(part["convolved"]) > 4 * len(part["out"][0]) for part in reference)
    # Reference mode: per-clip statistics and zero frames at the ends give a different result.
    assert np.abs(whole_video(reference, axis=1) - oracle).max() > 1e-3


@pytest.mark.parametrize("ranks,window", [pytest.param(3, 4, marks=pytest.mark.slow), (4, 6)])
def test_sliding_window_groupnorm_is_exact_across_rank_borders(ranks, window):
    job = {"frames": 10, "mode": "exact", "norm_window": window}
    # 4 ranks: clips of 2 or 3 frames
    oracle, parts, whole = run_in_turn([(1, job), (ranks, job), (1, dict(job, norm_window=0))], temporal_conv_call)
    oracle = oracle[0]["out"]
    assert np.abs(whole_video(parts, axis=1) - oracle).max() < 1e-12
    assert np.abs(oracle - whole[0]["out"]).max() > 1e-3, "window statistics should differ from whole-video ones"


def test_a_norm_window_as_long_as_the_video_is_whole_video_statistics():
    runs = [(2, {"frames": 10, "mode": "exact", "norm_window": 12}), (1, {"frames": 10, "mode": "exact"})]
    window, whole = run_in_turn(runs, temporal_conv_call)
    assert np.abs(whole_video(window, axis=1) - whole[0]["out"]).max() < 1e-10


def test_groupnorm_statistics_of_uneven_clips_take_one_collective_and_agree_on_every_rank():
    parts = run_on_local_ranks(3, groupnorm_statistics, {"sizes": [5, 1, 7]})
    for part in parts:
        assert part["calls"] == 1
        # fp32 data with a large mean: the per-rank mean/M2 merge keeps the variance accurate.
        np.testing.assert_allclose(part["mean"], part["true_mean"], rtol=1e-6)
        np.testing.assert_allclose(part["var"], part["true_var"], rtol=1e-5)
        assert np.array_equal(part["mean"], parts[0]["mean"]) and np.array_equal(part["var"], parts[0]["var"])


@pytest.mark.parametrize(("world_size", "posted"), [(2, 1), pytest.param(3, 2, marks=pytest.mark.slow)])
def test_a_cancel_between_exchanges_posted_together_leaves_none_travelling_once_settled(world_size, posted):
    """The engine settles a cancelled job's exchanges (Engine.run): a Cancel asked on one rank stops every
    rank at the keys' all-gather, the values' exchange is still in flight (at two ranks one all-gather that
    carries the halo too; at three its all-gather and halo swap), and after settle() none is, and the next
    collective delivers its own values."""
    parts = run_on_local_ranks(world_size, settle_after_a_cancel, {"frames": 6})
    for part in parts:
        assert part["stopped_at"] == 3
        assert part["left_in_flight"] == posted
        assert part["settled"] == posted
        assert part["in_flight_after"] == 0
        assert part["next_exchange"] == [10.0 + rank for rank in range(world_size)]


def test_exchanges_posted_together_are_waited_for_once_and_each_delivers_its_own_frames():
    """A Wan attention posts its keys' and values' exchanges (each one all-gather at two ranks, the halo
    riding with the global frames) before waiting for either: two calls, one round; the next exchange
    alone is a round of its own."""
    parts = run_on_local_ranks(2, exchanges_posted_together, {"frames": 6})
    for rank, part in enumerate(parts):
        assert part["together"] == {"calls": 2, "rounds": 1}
        assert part["after_one_more"] == {"calls": 3, "rounds": 2}
        left, right = ([], [3.0]) if rank == 0 else ([2.0], [])
        assert part["halos"] == [left, right, left]
        expected = [float(frame) for frame in global_indices_exact(6, 2)]
        assert part["globals"] == [expected, expected]


def test_at_three_ranks_halos_go_point_to_point_beside_the_all_gather():
    """With more than two ranks an all-gather would bring a halo to ranks that do not need it, so each
    exchange is a halo swap and an all-gather posted together: four calls, one round; the middle rank gets
    frames from both sides."""
    parts = run_on_local_ranks(3, exchanges_posted_together, {"frames": 6})
    halos = [([], [2.0]), ([1.0], [4.0]), ([3.0], [])]
    for part, (left, right) in zip(parts, halos, strict=True):
        assert part["together"] == {"calls": 4, "rounds": 1}
        assert part["after_one_more"] == {"calls": 6, "rounds": 2}
        assert part["halos"] == [left, right, left]
        expected = [float(frame) for frame in global_indices_exact(6, 2)]
        assert part["globals"] == [expected, expected]


@pytest.mark.slow  # the split-by-shares test below samples on 1, 2 and 3 ranks too
def test_sampled_video_is_the_same_for_1_2_and_4_ranks(tiny_pipeline):
    (oracle, *_), *splits = run_in_turn([(size, {"job": job(tiny_pipeline)}) for size in (1, 2, 4)], run_job)
    assert oracle["bytes_sent_per_step"] == [0, 0, 0]
    scale = np.abs(oracle["latents"]).max()
    for world_size, (result, *_) in zip((2, 4), splits, strict=True):
        relative = np.abs(result["latents"] - oracle["latents"]).max() / scale
        print(f"sampled N={world_size}: max relative latent difference {relative:.2e}")
        assert relative < 1e-5
        assert result["frames"].shape == (19, 32, 32, 3)
        assert np.abs(result["frames"].astype(int) - oracle["frames"].astype(int)).max() <= 1


def test_frames_split_by_shares_over_mismatched_devices_give_the_same_video(tiny_pipeline):
    # A fast and a slow device: the split follows the shares, every rank keeps at least one frame, and the video
    # is the one a single rank makes (the engine is exact for any split, not only an even one).
    uneven = [(2, [1, 4]), (3, [8, 1, 1])]
    runs = [(1, {"job": job(tiny_pipeline)})] + [(n, {"job": job(tiny_pipeline, frame_shares=s)}) for n, s in uneven]
    (oracle,), *splits = run_in_turn(runs, run_job)
    scale = np.abs(oracle["latents"]).max()
    for (_, shares), (result, *_) in zip(uneven, splits, strict=True):
        relative = np.abs(result["latents"] - oracle["latents"]).max() / scale
        print(f"shares {shares}: frames per rank {result['frames_per_rank']}, relative difference {relative:.2e}")
        assert relative < 1e-5
    assert [result["frames_per_rank"] for (result, *_) in splits] == [(4, 15), (15, 2, 2)]


def test_the_demo_model_s_options_give_the_same_video_on_any_rank_count(tmp_path_factory):
    # The demo model's phase embedding: each rank must pass its frames' places in the whole video. Its caption
    # options (time embedding, position gain) act per frame, so they must not see the split either; their
    # zero-initialised weights are woken by build_tiny_pipeline, so they act here. Convolutions that wrap
    # around the picture must not reach across frames either.
    model = build_tiny_pipeline(
        tmp_path_factory.mktemp("phase") / "tiny-phase",
        seed=0,
        words=["red", "ball"],
        frame_phase_period=5,
        spatial_position=True,
        caption_position=True,
        caption_in_time_embedding=True,
        circular_padding=True,
    )
    (oracle,), (result, *_) = run_in_turn([(1, {"job": job(model)}), (3, {"job": job(model)})], run_job)
    relative = np.abs(result["latents"] - oracle["latents"]).max() / np.abs(oracle["latents"]).max()
    assert relative < 1e-5


def test_halo_exchanges_travel_with_an_all_gather_of_the_same_layer(tiny_pipeline):
    # Each temporal attention's halo moves with its global frames' all-gather, and each stage of a temporal
    # convolution borrows its kernel's frame with that stage's norm statistics: no wait of its own. At two
    # ranks the halo rides inside that all-gather (one call); at three it is a swap posted beside it.
    (two, *_), (three, *_) = run_in_turn([(2, {"job": job(tiny_pipeline)}), (3, {"job": job(tiny_pipeline)})], run_job)
    unet = UNet3DConditionModel.from_pretrained(tiny_pipeline / "unet")
    attentions = sum(
        1 + (block.attn2 is not None)
        for module in unet.modules()
        if isinstance(module, TransformerTemporalModel)
        for block in module.transformer_blocks
    )
    convs = sum(isinstance(module, TemporalConvLayer) for module in unet.modules())
    assert attentions > 0 and convs > 0
    for calls, rounds in zip(three["calls_per_step"], three["rounds_per_step"], strict=True):
        assert calls - rounds == attentions + STAGES_PER_CONV * convs
    assert two["rounds_per_step"] == three["rounds_per_step"]
    assert two["calls_per_step"] == two["rounds_per_step"]


def test_reference_mode_with_several_ranks_differs_from_exact(tiny_pipeline):
    reference = job(tiny_pipeline)
    reference["attention"] = dict(SETTINGS, mode="reference")
    (exact, _), (result, _) = run_in_turn([(2, {"job": job(tiny_pipeline)}), (2, {"job": reference})], run_job)
    assert np.abs(result["latents"] - exact["latents"]).max() > 1e-3


@pytest.mark.slow  # test_benchmarks checks the same on the traffic benchmark
def test_bytes_per_step_do_not_grow_with_frames_per_rank(tiny_pipeline):
    specs = {
        frames: job(
            tiny_pipeline,
            frames=frames,
            prompts=[{"start": 0, "end": frames - 1, "prompt": "red"}],
            sampler="ddim",
            steps=2,
        )
        for frames in (16, 32)
    }
    runs = run_in_turn([(2, {"job": spec}) for spec in specs.values()], run_job)
    sent = {frames: [r["bytes_sent_per_step"] for r in parts] for frames, parts in zip(specs, runs, strict=True)}
    for rank in range(2):
        assert sent[16][rank][0] > 0
        assert sent[32][rank] == sent[16][rank], "halo and global traffic must not depend on clip length"
