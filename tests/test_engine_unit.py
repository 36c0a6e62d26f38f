"""Single-process checks of the engine's pieces: semantics, reference rules, layout and input errors."""

from __future__ import annotations

import copy
import json
import math
import shutil
from functools import partial
from pathlib import Path

import pytest
import torch
from diffusers import DDIMScheduler, UNet3DConditionModel

from distributed.engine import banded as banded_module
from distributed.engine.admission import check_fits, free_bytes, largest_fitting
from distributed.engine.banded import (
    BandSpec,
    attention_with_lse,
    attention_with_lse_unfused,
    band_plan,
    banded_attention,
    banded_attention_in_parts,
    part_plans,
)
from distributed.engine.comm import Communicator
from distributed.engine.context import TemporalContext
from distributed.engine.errors import InsufficientMemoryError, InvalidSettingsError, JobCancelled, ModelLoadError
from distributed.engine.family import MemoryNeed, family
from distributed.engine.job import JobSpec
from distributed.engine.layout import FrameLayout, global_indices_exact, global_indices_reference, parse_shares
from distributed.engine.runner import Engine
from distributed.engine.settings import DualScopeSettings
from distributed.models.unet3d.chunked import ChunkedFeedForward, FrameChunked
from distributed.models.unet3d.model import UNet3DVideoCrafterConditionModel, run_unet3d
from distributed.models.unet3d.patch import patch_unet
from distributed.models.unet3d.temporal_conv import HaloTemporalConv, own_moments
from support.tiny_models import tiny_text_encoder, tiny_unet_config

from .dist_targets import random_unet


def test_real_videocrafter_config_patches_every_temporal_layer():
    with torch.device("meta"):
        unet = UNet3DConditionModel()  # the full-size ModelScope / VideoCrafter2 layout, no memory used
    report = patch_unet(unet, TemporalContext(Communicator.single()))
    assert (report.temporal_transformers, report.temporal_attentions, report.temporal_convs) == (17, 34, 22)
    assert report.frame_groupnorms == 17 + 4 * 22
    assert report.chunked_feed_forwards == 16 + 17  # every spatial and temporal transformer block
    # every ResNet block, spatial transformer, down- and upsampler, and the input and output layers
    assert report.chunked_frame_layers == 22 + 16 + 3 + 3 + 3
    assert report.chunked_token_layers == 17 * (2 + 3)  # each temporal transformer's projections and norms


def test_chunked_feed_forward_and_frame_convolutions_change_no_result():
    """Per-frame layers and temporal convolution stages one frame at a time, feed-forwards in chunks of 7
    values (one token each), the convolutions as 2-D convolutions: the unpatched model's output in fp64.
    A single rank, so no halo is involved."""
    unet = random_unet(0, torch.float64, fps_cond=False)
    plain = copy.deepcopy(unet)
    ctx = TemporalContext(Communicator.single())
    patch_unet(unet, ctx)
    kinds = (ChunkedFeedForward, FrameChunked, HaloTemporalConv)
    chunked = [module for module in unet.modules() if isinstance(module, kinds)]
    assert {type(module) for module in chunked} == set(kinds)
    for module in chunked:
        module.elements = 7
    frames = 6
    sample = torch.randn(2, 4, frames, 8, 8, dtype=torch.float64)
    text = torch.randn(2, 7, 32, dtype=torch.float64)
    with torch.no_grad():
        expected = plain(sample, 500, text).sample
        ctx.begin_job(FrameLayout(frames, 1), DualScopeSettings(local_window=frames, global_frames=0, phase_bias=False))
        got = run_unet3d(unet, sample, 500, text[:, None].expand(2, frames, 7, 32))
    assert (got - expected).abs().max().item() < 1e-12


def test_full_window_without_globals_equals_the_unpatched_model():
    unet = random_unet(0, torch.float64, fps_cond=False)  # the stock forward knows no fps embedding
    plain = copy.deepcopy(unet)
    ctx = TemporalContext(Communicator.single())
    patch_unet(unet, ctx)
    frames = 10
    sample = torch.randn(2, 4, frames, 8, 8, dtype=torch.float64)
    text = torch.randn(2, 7, 32, dtype=torch.float64)
    with torch.no_grad():
        expected = plain(sample, 500, text).sample  # the stock diffusers forward
        ctx.begin_job(FrameLayout(frames, 1), DualScopeSettings(local_window=frames, global_frames=0, phase_bias=False))
        ctx.timestep = 500.0
        got = run_unet3d(unet, sample, 500, text[:, None].expand(2, frames, 7, 32))
    assert (got - expected).abs().max().item() < 1e-12
    ctx.begin_job(FrameLayout(frames, 1), DualScopeSettings(local_window=2, global_frames=0, phase_bias=False))
    with torch.no_grad():
        banded = run_unet3d(unet, sample, 500, text[:, None].expand(2, frames, 7, 32))
    assert (banded - expected).abs().max().item() > 1e-4  # a narrow window really is local


@pytest.mark.parametrize("circular", [True, False])
def test_wrapping_convolutions_make_the_unet_see_the_picture_as_a_torus(circular: bool):
    # Rolled by a multiple of the deepest downsampling (2 here), a picture on a torus gives the rolled output:
    # the layers without position (convolutions, per-frame norms, attention over tokens) then commute with
    # the roll. With zero padding the edges are walls and the output changes.
    torch.manual_seed(0)
    unet = UNet3DVideoCrafterConditionModel(**tiny_unet_config(circular_padding=circular)).double().eval()
    sample = torch.randn(1, 4, 3, 8, 8, dtype=torch.float64)
    text = torch.randn(1, 3, 7, 32, dtype=torch.float64)
    with torch.no_grad():
        out = run_unet3d(unet, sample, 500, text, 8)
        rolled = run_unet3d(unet, sample.roll((2, 4), dims=(3, 4)), 500, text, 8)
    gap = (rolled - out.roll((2, 4), dims=(3, 4))).abs().max().item()
    assert gap < 1e-12 if circular else gap > 1e-3
    temporal = [m for m in unet.modules() if isinstance(m, torch.nn.Conv3d)]
    assert temporal and all(m.padding_mode == "zeros" for m in temporal)  # frames are not a circle


def test_the_frame_phase_embedding_reads_video_frame_indices_modulo_its_period():
    torch.manual_seed(0)
    unet = UNet3DVideoCrafterConditionModel(**tiny_unet_config(frame_phase_period=4)).double().eval()
    sample = torch.randn(2, 4, 6, 8, 8, dtype=torch.float64)
    text = torch.randn(2, 6, 7, 32, dtype=torch.float64)

    def call(index: torch.Tensor | None) -> torch.Tensor:
        with torch.no_grad():
            return run_unet3d(unet, sample, 500, text, 8, index)

    untrained = call(torch.arange(3, 9))
    assert torch.equal(untrained, call(None)), "a new phase embedding starts at zero: no change"
    with torch.no_grad():
        unet.phase_embedding.weight.normal_(0.0, 0.5)
    shifted = call(torch.arange(3, 9))
    assert (shifted - call(None)).abs().max() > 1e-3
    assert (shifted - call(torch.arange(7, 13))).abs().max() < 1e-12  # one period later
    per_clip = call(torch.arange(3, 9).expand(2, 6))
    assert (per_clip - shifted).abs().max() < 1e-12


def test_the_spatial_position_embedding_starts_at_zero_and_then_marks_each_latent_pixel():
    torch.manual_seed(0)
    unet = UNet3DVideoCrafterConditionModel(**tiny_unet_config(spatial_position=True)).double().eval()
    plain = UNet3DVideoCrafterConditionModel(**tiny_unet_config()).double().eval()
    plain.load_state_dict(unet.state_dict(), strict=False)
    sample = torch.randn(1, 4, 3, 8, 8, dtype=torch.float64)
    text = torch.randn(1, 3, 7, 32, dtype=torch.float64)
    with torch.no_grad():
        assert torch.equal(run_unet3d(unet, sample, 500, text, 8), run_unet3d(plain, sample, 500, text, 8))
        unet.position_embedding.weight.normal_(0.0, 0.5)
        assert (run_unet3d(unet, sample, 500, text, 8) - run_unet3d(plain, sample, 500, text, 8)).abs().max() > 1e-3
        # Any latent size works: the features are periodic over the image, not a table of one size.
        assert run_unet3d(unet, sample[..., :4, :6], 500, text, 8).shape == (1, 4, 3, 4, 6)


def test_the_caption_time_embedding_starts_at_zero_and_then_follows_the_caption():
    torch.manual_seed(0)
    unet = UNet3DVideoCrafterConditionModel(**tiny_unet_config(caption_in_time_embedding=True)).double().eval()
    plain = UNet3DVideoCrafterConditionModel(**tiny_unet_config()).double().eval()
    plain.load_state_dict(unet.state_dict(), strict=False)
    sample = torch.randn(1, 4, 3, 8, 8, dtype=torch.float64)
    text = torch.randn(1, 3, 7, 32, dtype=torch.float64)
    other = text.clone()
    other[:, :, 4] += 1.0  # one token of the caption differs
    with torch.no_grad():
        assert torch.equal(run_unet3d(unet, sample, 500, text, 8), run_unet3d(plain, sample, 500, text, 8))
        unet.caption_embedding[2].weight.normal_(0.0, 0.5)
        # The caption now also changes the output through the time embedding, beyond the cross-attention.
        through_time = run_unet3d(unet, sample, 500, other, 8) - run_unet3d(unet, sample, 500, text, 8)
        through_attention = run_unet3d(plain, sample, 500, other, 8) - run_unet3d(plain, sample, 500, text, 8)
        assert (through_time - through_attention).abs().max() > 1e-3


def test_the_caption_position_gain_starts_at_one_and_then_moves_the_position_features():
    torch.manual_seed(0)
    config = tiny_unet_config(spatial_position=True)
    unet = UNet3DVideoCrafterConditionModel(**config, caption_position=True).double().eval()
    plain = UNet3DVideoCrafterConditionModel(**config).double().eval()
    plain.load_state_dict(unet.state_dict(), strict=False)
    sample = torch.randn(1, 4, 3, 8, 8, dtype=torch.float64)
    text = torch.randn(1, 3, 7, 32, dtype=torch.float64)
    with torch.no_grad():
        unet.position_embedding.weight.normal_(0.0, 0.5)
        plain.position_embedding.weight.copy_(unet.position_embedding.weight)
        assert torch.equal(run_unet3d(unet, sample, 500, text, 8), run_unet3d(plain, sample, 500, text, 8))
        unet.caption_position_gain.weight.normal_(0.0, 0.5)
        assert (run_unet3d(unet, sample, 500, text, 8) - run_unet3d(plain, sample, 500, text, 8)).abs().max() > 1e-3
    with pytest.raises(ValueError, match="caption_position needs spatial_position"):
        UNet3DVideoCrafterConditionModel(**tiny_unet_config(caption_position=True))


def test_exact_global_frames_are_spread_over_the_timeline_independent_of_ranks():
    assert global_indices_exact(64, 4) == [8, 24, 40, 56]
    assert global_indices_exact(5, 5) == [0, 1, 2, 3, 4]


def test_reference_global_frames_follow_the_per_rank_rule():
    # N=2, G=4: m=2 per rank, stride 8//2=4: local 0,4 on each rank.
    assert global_indices_reference(FrameLayout(16, 2), 4) == [0, 4, 8, 12]
    # N=3 does not divide G=16: m=5, F=11,11,10 -> strides 2,2,2 -> 6,6,5 frames, cut to 16.
    indices = global_indices_reference(FrameLayout(32, 3), 16)
    assert indices == [0, 2, 4, 6, 8, 10, 11, 13, 15, 17, 19, 21, 22, 24, 26, 28]
    # m = 0 (more ranks than global frames): only local index 0 of each rank.
    assert global_indices_reference(FrameLayout(12, 4), 2) == [0, 3]


def plan(mode_exact: bool, timestep_global: bool, start: int = 0, frames: int = 6, total: int = 12):
    spec = BandSpec(
        frames,
        start,
        total,
        width=2,
        globals_count=3,
        mask_ends=mode_exact,
        local_bonus=0.0 if timestep_global else 10.0,
        global_bonus=10.0 if timestep_global else 0.0,
    )
    return band_plan(spec, torch.device("cpu"), torch.float64)


def visible_local_frames(p, frames: int, start: int, query: int) -> list[int]:
    block, row = divmod(query, p.block)
    local = p.bias[block, row, : p.block + 2 * p.width]
    return [start - p.width + block * p.block + w for w in range(local.shape[0]) if local[w] > float("-inf")]


def test_visibility_is_the_window_of_half_width_p_and_ends_are_masked_in_exact_mode():
    p = plan(mode_exact=True, timestep_global=True)
    assert visible_local_frames(p, 6, 0, 0) == [0, 1, 2]  # frames -2, -1 do not exist: masked
    assert visible_local_frames(p, 6, 0, 3) == [1, 2, 3, 4, 5]
    assert visible_local_frames(p, 6, 0, 5) == [3, 4, 5, 6, 7]  # 6, 7 come from the right neighbour


def test_reference_mode_leaves_missing_end_frames_visible():
    p = plan(mode_exact=False, timestep_global=True)
    assert visible_local_frames(p, 6, 0, 0) == [-2, -1, 0, 1, 2]


def test_phase_bias_favours_global_keys_early_and_local_keys_late():
    early = plan(True, timestep_global=True)
    late = plan(True, timestep_global=False)
    block_len = early.block + 2 * early.width
    assert torch.all(early.bias[0, 0, block_len:] == 10.0)
    assert torch.all(late.bias[0, 0, block_len:] == 0.0)
    finite = late.bias[0, 0, :block_len][late.bias[0, 0, :block_len] > float("-inf")]
    assert torch.all(finite == 10.0)


def test_uneven_layout_and_multi_rank_halos():
    layout = FrameLayout(10, 4)
    assert layout.counts == (3, 3, 2, 2)
    assert layout.halo(3, 4) == ((4, 8), (10, 10))
    senders = {(s, lo, hi) for s, r, lo, hi in layout.transfers(4) if r == 3}
    assert senders == {(1, 4, 6), (2, 6, 8)}  # the halo spans two ranks


@pytest.mark.parametrize("frames", [4, 5, 19, 64, 1000])
@pytest.mark.parametrize(
    "shares", [(1.0, 1.0, 1.0, 1.0), (3, 1, 1, 1), (100, 1, 1, 1), (1, 2, 3, 4), (0.5, 0.25, 1, 2)]
)
def test_frames_split_by_shares_cover_the_video_give_each_rank_a_frame_and_follow_the_shares(frames, shares):
    counts = FrameLayout(frames, 4, shares).counts
    assert sum(counts) == frames and min(counts) >= 1
    ideal = [frames * share / sum(shares) for share in shares]
    # Each rank is within a frame of its share, unless the one-frame minimum lifted it (and others paid for it).
    lifted = sum(1 - value for value in ideal if value < 1)
    assert all(abs(count - value) < 1 + lifted for count, value in zip(counts, ideal, strict=True)), counts
    if len(set(shares)) == 1:  # even shares split as no shares do
        assert counts == FrameLayout(frames, 4).counts


def test_frame_shares_read_from_text_and_bad_ones_name_the_fix():
    assert parse_shares("3,1") == (3.0, 1.0) and parse_shares(" 2, 1.5 ") == (2.0, 1.5) and parse_shares("") == ()
    with pytest.raises(InvalidSettingsError, match="give one number per worker separated by commas, such as 3,1"):
        parse_shares("fast,slow")
    with pytest.raises(InvalidSettingsError, match="frame_shares has 0.0; every share must be a number greater"):
        parse_shares("1,0")
    with pytest.raises(InvalidSettingsError, match="gives 3 share"):
        JobSpec.from_dict({"model": {"base": "/x"}, "prompt": "a", "frames": 8, "frame_shares": [1, 1, 2]}).validate(2)


BAD_JOBS = [
    ({"frames": 2, "attention": {"global_frames": 0}}, "every worker needs at least one frame"),
    ({"attention": {"local_window": -1}}, "local_window"),
    ({"attention": {"global_frames": 2000}}, "global_frames is 2000; it must be at most 1024"),
    ({"attention": {"local_window": 10**6}}, "local_window is 1000000; it must be at most 256"),
    ({"frames": 10**9}, "frames is 1000000000; it must be at most 100000"),
    ({"width": 8192}, "width is 8192; it must be at most 4096"),
    ({"steps": 5000}, "steps is 5000; it must be at most 1000"),
    ({"cfg": 1e6}, "cfg is 1000000.0; it must be at most 100.0"),
    ({"height": 60}, "multiple of 8"),
    ({"steps": 0}, "steps is 0"),
    ({"prompts": [{"start": 0, "end": 9, "prompt": "a"}, {"start": 8, "end": 15, "prompt": "b"}]}, "overlaps"),
    ({"prompts": [{"start": 0, "end": 5, "prompt": "a"}, {"start": 8, "end": 15, "prompt": "b"}]}, "without a prompt"),
    ({"sampler": "euler"}, "sampler"),
    ({"model": {"base": "/x", "dtype": "fp8"}}, "dtype"),
]


@pytest.mark.parametrize("change,message", BAD_JOBS)
def test_bad_jobs_name_the_problem(change, message):
    job = {"model": {"base": "/x"}, "prompt": "a ball", "frames": 16}
    job.update(change)
    if "prompts" in change:
        job.pop("prompt")
    with pytest.raises(InvalidSettingsError, match=message):
        JobSpec.from_dict(job).validate(world_size=4)


def run_engine(base, **job):
    spec = {"model": {"base": str(base)}, "prompt": "a red ball", "frames": 16, "height": 16, "width": 16, "steps": 1}
    spec.update(job)
    return Engine(Communicator.single()).run(JobSpec.from_dict(spec)).frames


def test_unknown_model_folder(tmp_path):
    with pytest.raises(ModelLoadError, match="does not exist"):
        run_engine(tmp_path / "nope")
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "unet").mkdir()
    with pytest.raises(ModelLoadError, match="lacks vae/, text_encoder/"):
        run_engine(tmp_path / "half")


def test_corrupt_safetensors_names_the_file(tiny_pipeline, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(tiny_pipeline, broken)
    weights = broken / "unet" / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-1000])
    with pytest.raises(ModelLoadError, match=r"diffusion_pytorch_model.safetensors is truncated: its header describes"):
        run_engine(broken)
    override = tmp_path / "override.safetensors"
    override.write_bytes(b"not a safetensors file")
    with pytest.raises(ModelLoadError, match="override.safetensors is not a safetensors file, or it is cut off"):
        run_engine(tiny_pipeline, model={"base": str(tiny_pipeline), "unet": str(override)})


def test_mismatched_unet_and_text_encoder(tiny_pipeline, tmp_path):
    mixed = tmp_path / "mixed"
    shutil.copytree(tiny_pipeline, mixed)
    vocab_size = json.loads((mixed / "text_encoder" / "config.json").read_text())["vocab_size"]
    shutil.rmtree(mixed / "text_encoder")
    tiny_text_encoder(vocab_size, hidden_size=48).save_pretrained(mixed / "text_encoder")  # another model's
    with pytest.raises(ModelLoadError, match="different models"):
        run_engine(mixed)


def test_single_file_unet_override_with_fps_weights(tiny_pipeline, tmp_path):
    from safetensors.torch import load_file, save_file

    state = load_file(str(tiny_pipeline / "unet" / "diffusion_pytorch_model.safetensors"))
    assert any(key.startswith("fps_embedding.") for key in state)
    save_file(state, str(tmp_path / "videocrafter2.safetensors"))
    engine = Engine(Communicator.single())
    job = {
        "model": {"base": str(tiny_pipeline), "unet": str(tmp_path / "videocrafter2.safetensors")},
        "prompt": "red",
        "frames": 16,
        "height": 16,
        "width": 16,
        "steps": 1,
        "sampler": "ddim",
    }
    spec = JobSpec.from_dict(job)
    frames = engine.run(spec).frames
    assert frames.shape == (16, 16, 16, 3)
    assert engine.model(spec.model).unet.fps_cond
    engine.run(spec)
    assert engine.loads == 1  # warm: same files, same dtype


def test_an_unknown_model_family_names_the_supported_ones():
    with pytest.raises(
        InvalidSettingsError, match=r"model family 'hunyuan' is not supported; supported: \['unet3d', 'wan'\]"
    ):
        family("hunyuan")


def test_the_engine_core_imports_neither_the_pool_nor_an_entry_point_nor_a_family():
    core = Path(__file__).resolve().parents[1] / "distributed" / "engine"
    for module in core.glob("*.py"):
        text = module.read_text()
        for layer in ("..pool", "..cli", "..models", "nodes", "comfy"):
            assert f"from {layer}" not in text and f"import {layer}" not in text, f"{module.name} imports {layer}"


@pytest.mark.parametrize("mode", ["exact", "reference"])
def test_more_global_frames_than_the_video_means_every_frame(mode):
    # G is "up to G": a video shorter than G attends to all of its frames, once each.
    ctx = TemporalContext(Communicator(0, 1, torch.device("cpu")))
    ctx.begin_job(FrameLayout(6, 1), DualScopeSettings(global_frames=40, mode=mode))
    assert sorted(ctx.global_indices) == list(range(6))
    JobSpec.from_dict({"model": {"base": "/x"}, "prompt": "a", "frames": 6, "attention": {"global_frames": 40}})


@pytest.mark.parametrize(
    ("shape", "span"),
    [
        ((1, 4, 300, 40, 64), (0, 300)),  # 3.1 M values: several chunks, an odd last one
        ((1, 4, 301, 40, 64), (123, 301)),
        ((2, 3, 97, 13, 11), (5, 41)),  # sizes that are not multiples of 16 anywhere
        ((1, 4, 8, 8, 8), (2, 6)),  # small: one call
    ],
)
def test_noise_drawn_in_chunks_is_the_whole_tensor_sliced(shape, span):
    from distributed.engine import sampling

    whole = torch.randn(shape, generator=torch.Generator().manual_seed(11))
    for chunk in (sampling.RANDN_CHUNK, 16 * 1000):
        sampling.RANDN_CHUNK, original = chunk, sampling.RANDN_CHUNK
        try:
            part = sampling.frames_of_randn(torch.Generator().manual_seed(11), shape, *span)
        finally:
            sampling.RANDN_CHUNK = original
        assert torch.equal(part, whole[:, :, span[0] : span[1]])


def test_long_noise_is_drawn_with_checkpoints_that_can_stop_it():
    """A Cancel while a long video's noise is drawn: the checkpoint runs every CHUNKS_PER_CHECKPOINT chunks
    (the same number of times for every slice, so ranks stay in step) and its exception ends the draw."""
    from distributed.engine import sampling

    shape = (1, 4, 300, 40, 64)  # 3.1 M values
    calls: list[int] = []
    for span in ((0, 10), (290, 300)):
        with_calls: list[int] = []
        sampling.RANDN_CHUNK, original = 16 * 1000, sampling.RANDN_CHUNK
        try:
            sampling.frames_of_randn(torch.Generator().manual_seed(1), shape, *span, partial(with_calls.append, 1))
        finally:
            sampling.RANDN_CHUNK = original
        calls.append(len(with_calls))
    expected = (math.prod(shape) // (16 * 1000) - 1) // sampling.CHUNKS_PER_CHECKPOINT
    assert calls == [expected, expected] and expected > 10

    def cancel() -> None:
        raise JobCancelled(0)

    sampling.RANDN_CHUNK, original = 16 * 1000, sampling.RANDN_CHUNK
    try:
        with pytest.raises(JobCancelled):
            sampling.frames_of_randn(torch.Generator().manual_seed(1), shape, 0, 10, cancel)
    finally:
        sampling.RANDN_CHUNK = original


@pytest.mark.parametrize("frame_major", [False, True])
def test_own_moments_match_torch_in_both_memory_layouts(frame_major):
    """The GroupNorm moments of a rank's own frames, for inputs laid out frames-first (after a temporal
    permute) and channels-first (a convolution's output), with halo frames that must not count."""
    natural = torch.randn(2, 6, 9, 3, 4, dtype=torch.float64) * 2 + 5
    x = natural.transpose(1, 2).contiguous().transpose(1, 2) if frame_major else natural
    assert x.transpose(1, 2).is_contiguous() == frame_major
    count, mean, m2 = own_moments(x, groups=3, own=(2, 7))
    own = natural[:, :, 2:7].reshape(2, 3, -1)
    var, expected_mean = torch.var_mean(own, dim=-1, correction=0)
    assert count == own.shape[-1]
    assert torch.allclose(mean, expected_mean, rtol=1e-13, atol=0)
    assert torch.allclose(m2 / count, var, rtol=1e-12, atol=0)


@pytest.mark.parametrize(
    "frames, start, total, width, count, mask_ends, local_bonus, global_bonus, token_num_scale",
    [
        (21, 0, 64, 3, 4, True, 0.0, 2.0, False),  # video start: the left halo is masked
        (21, 30, 64, 3, 4, True, 10.0, 0.0, True),  # interior, local phase, per-row scale
        (16, 48, 64, 8, 16, True, 0.0, 10.0, False),  # video end, the demo's P and G
        (5, 10, 40, 8, 0, True, 10.0, 0.0, False),  # a clip shorter than P: rows see both halos; G = 0
        (12, 0, 36, 4, 6, False, 0.0, 0.0, False),  # reference mode: zero-padded ends stay visible
        (9, 9, 27, 0, 3, True, 0.0, 0.0, False),  # P = 0: globals only
        (9, 9, 27, 2, 0, True, 0.0, 0.0, False),  # middle rows see no key of the rest
    ],
)
@pytest.mark.parametrize("one_item_per_chunk", [False, True])
def test_attention_in_two_parts_equals_the_one_pass_banded_attention(
    frames,
    start,
    total,
    width,
    count,
    mask_ends,
    local_bonus,
    global_bonus,
    token_num_scale,
    one_item_per_chunk,
    monkeypatch,
):
    """The own band first, then halo and global keys merged by their normalisers: the same result to fp64
    rounding, including rows that see none of the rest and clips shorter than the halo, whether the batch
    is one chunk or each item its own (halo rows padded and rest keys merged chunk by chunk)."""
    if one_item_per_chunk:
        monkeypatch.setattr(banded_module, "chunk_elements", lambda device: 1)
    heads, dim = 2, 5
    generator = torch.Generator().manual_seed(5)
    query = torch.randn(3, heads, frames, dim, generator=generator, dtype=torch.float64)
    key, value = (
        torch.randn(3, heads, frames + 2 * width + count, dim, generator=generator, dtype=torch.float64) * 2
        for _ in range(2)
    )
    spec = BandSpec(frames, start, total, width, count, mask_ends, local_bonus, global_bonus, 1.0, token_num_scale)
    cpu = (torch.device("cpu"), torch.float64)
    expected = banded_attention(query, key, value, band_plan(spec, *cpu), dim**-0.5)
    own = slice(width, width + frames)
    rest = [torch.cat([x[:, :, :width], x[:, :, width + frames :]], dim=2) for x in (key, value)]
    got = banded_attention_in_parts(
        query, key[:, :, own], value[:, :, own], lambda: tuple(rest), part_plans(spec, *cpu), dim**-0.5
    )
    assert (got - expected).abs().max().item() < 1e-12


def test_the_attention_with_normalisers_of_other_devices_matches_the_cpu_kernel():
    # The fused kernel with normalisers exists on CPU only; GPUs take the plain version, checked here on CPU.
    generator = torch.Generator().manual_seed(7)
    query, key, value = (torch.randn(2, 3, 6, 4, generator=generator, dtype=torch.float64) for _ in range(3))
    bias = torch.zeros(6, 6, dtype=torch.float64)
    bias[0, 3:] = float("-inf")
    bias[4, :2] = 10.0
    fused = attention_with_lse(query, key, value, bias, 0.5)
    plain = attention_with_lse_unfused(query, key, value, bias, 0.5)
    for a, b in zip(fused, plain, strict=True):
        assert (a - b).abs().max().item() < 1e-12


@pytest.mark.parametrize("frames, start, token_num_scale", [(21, 0, False), (21, 30, True), (16, 4, False)])
def test_banded_attention_equals_dense_attention_over_the_window_and_globals(frames, start, token_num_scale):
    """Blocked attention against one explicit softmax per query over its 2P+1 window (clipped to the video)
    and the G global keys, with a partial last block (21 frames, blocks of 8) and per-row scaling."""
    width, count, total, heads, dim = 3, 4, 64, 2, 5
    generator = torch.Generator().manual_seed(3)
    query = torch.randn(2, heads, frames, dim, generator=generator, dtype=torch.float64)
    key, value = (
        torch.randn(2, heads, frames + 2 * width + count, dim, generator=generator, dtype=torch.float64)
        for _ in range(2)
    )
    spec = BandSpec(frames, start, total, width, count, global_bonus=2.0, token_num_scale=token_num_scale)
    p = band_plan(spec, torch.device("cpu"), torch.float64)
    got = banded_attention(query, key, value, p, dim**-0.5)
    expected = torch.empty_like(query)
    for i in range(frames):
        window = [e for e in range(i, i + 2 * width + 1) if 0 <= start - width + e < total]
        columns = window + list(range(frames + 2 * width, frames + 2 * width + count))
        bonus = torch.tensor([0.0] * len(window) + [2.0] * count, dtype=torch.float64)
        factor = math.log(len(columns)) / math.log(16) if token_num_scale else 1.0
        scores = (query[:, :, i : i + 1] * factor) @ key[:, :, columns].transpose(-1, -2) * dim**-0.5 + bonus
        expected[:, :, i] = (scores.softmax(-1) @ value[:, :, columns])[:, :, 0]
    assert (got - expected).abs().max().item() < 1e-12


@pytest.mark.parametrize("inside", ["first temporal layer", "feed-forward chunks"])
def test_a_cancel_asked_inside_a_step_stops_a_lone_rank_in_that_step(tiny_pipeline, inside):
    """The request arrives while step 0's UNet runs (set by a hook, so the timing is exact): the step stops
    at its next checkpoint, a temporal layer or a chunk, instead of running on to the step's end."""
    engine = Engine(Communicator.single())
    job = {"model": {"base": str(tiny_pipeline)}, "prompt": "a red ball", "frames": 512, "height": 32, "width": 32}
    engine.run(JobSpec.from_dict(job | {"frames": 16, "steps": 1}))  # loads and patches the model, quickly
    job = JobSpec.from_dict(job)
    unet = engine._loaded.unet
    asked = {"now": False, "calls": 0}
    if inside == "first temporal layer":
        start = unet.conv_in
    else:  # deep inside a layer: its chunks must look for the request too
        start = next(m for m in unet.modules() if type(m).__name__ == "ChunkedFeedForward").inner
        asked["calls"] = -1  # the first chunk's call runs; the second chunk must not

    def flip(*_: object) -> None:
        asked["calls"] += 1
        asked["now"] = asked["calls"] > 0 or inside == "first temporal layer"

    hook = start.register_forward_hook(flip)
    try:
        with pytest.raises(JobCancelled, match="cancelled at denoising step 0"):
            engine.run(job, should_cancel=lambda: asked["now"])
    finally:
        hook.remove()
    assert asked["calls"] <= 1, "the layer's remaining chunks ran after the request"


def test_a_need_beyond_the_free_memory_is_refused_naming_the_estimate_the_share_and_the_fix():
    cpu = torch.device("cpu")
    free = free_bytes(cpu)
    check_fits(MemoryNeed(free // 8, "4 frames per worker at 64x64"), cpu, sharing=2)  # a quarter of it: admitted
    holding = "21 latent frames (about 84 video frames) per worker at 832x480"
    with pytest.raises(InsufficientMemoryError) as refused:
        check_fits(MemoryNeed(free // 2 + 2**30, holding), cpu, sharing=2)
    message = str(refused.value)
    assert f"per worker ({holding}; 2 workers share this memory" in message
    assert "GiB is free on cpu. Use more workers so each holds fewer frames" in message


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_the_preview_estimate_is_ddims_own_prediction_of_the_clean_latents(prediction_type):
    from distributed.engine.sampling import denoised_estimate
    from support.tiny_models import default_scheduler

    scheduler = DDIMScheduler.from_config(default_scheduler().config, prediction_type=prediction_type)
    scheduler.set_timesteps(10)
    generator = torch.Generator().manual_seed(0)
    sample, prediction = (
        torch.randn(1, 4, 3, 8, 8, generator=generator),
        torch.randn(1, 4, 3, 8, 8, generator=generator),
    )
    for timestep in scheduler.timesteps[[0, 5, 9]]:
        expected = scheduler.step(prediction, timestep, sample).pred_original_sample
        torch.testing.assert_close(denoised_estimate(scheduler, sample, prediction, timestep), expected)


def test_a_job_previews_the_first_frame_after_every_step(tiny_pipeline):
    previews = []
    spec = {"model": {"base": str(tiny_pipeline)}, "prompt": "a red ball", "frames": 8, "height": 32, "width": 32}
    spec.update(steps=4, sampler="ddim")
    result = Engine(Communicator.single()).run(
        JobSpec.from_dict(spec), on_preview=lambda step, total, latent: previews.append((step, total, latent))
    )
    assert [(step, total) for step, total, _ in previews] == [(1, 4), (2, 4), (3, 4), (4, 4)]
    assert all(latent.shape == (1, 4, 1, 4, 4) and latent.dtype == torch.float32 for *_, latent in previews)
    # DDIM's last step lands next to its clean estimate: the last preview is the video's first frame.
    first_frame = result.latents[:, :, :1]
    assert (previews[-1][2] - first_frame).abs().max() < 0.05 * first_frame.abs().max()
    assert (previews[0][2] - first_frame).abs().max() > (previews[-1][2] - first_frame).abs().max()


def test_a_pixel_preview_is_the_frame_decoded_by_the_model_s_own_vae(tiny_pipeline):
    previews = []
    spec = {"model": {"base": str(tiny_pipeline)}, "prompt": "a red ball", "frames": 8, "height": 32, "width": 32}
    spec.update(steps=3, sampler="ddim")
    result = Engine(Communicator.single()).run(
        JobSpec.from_dict(spec),
        on_preview=lambda step, total, frame: previews.append(frame),
        preview_pixels=True,
    )
    assert len(previews) == 3 and all(frame.shape == (1, 3, 1, 32, 32) for frame in previews)
    assert all(frame.abs().max() <= 1 for frame in previews)
    # The last step's estimate decodes to about the video's first frame.
    first = torch.from_numpy(result.frames[0]).float().permute(2, 0, 1) / 127.5 - 1
    assert (previews[-1][0, :, 0] - first).abs().mean() < 0.05


def test_the_frames_that_fit_are_found_by_bisection_and_an_unknown_estimate_gives_none() -> None:
    cpu = torch.device("cpu")
    step = free_bytes(cpu) // 100  # a frame costs a hundredth of what is free; two workers share it

    def needs(frames: int) -> MemoryNeed:
        return MemoryNeed(frames * step, f"{frames} frames")

    assert 45 <= largest_fitting(needs, 10_000, cpu, sharing=2) <= 50  # the free memory moves a little
    assert largest_fitting(needs, 10, cpu, sharing=2) == 10  # never more than the job has
    assert largest_fitting(lambda frames: None, 10, cpu, sharing=1) == 0
    assert largest_fitting(lambda frames: MemoryNeed(2**62, "huge"), 10, cpu, sharing=1) == 0
