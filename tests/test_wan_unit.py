"""The Wan family's pieces that need no ComfyUI: frame-window attention, job inputs, latent jobs."""

from __future__ import annotations

import pytest
import torch

from distributed.engine.errors import InvalidSettingsError
from distributed.engine.job import ModelSpec, job_from_dict
from distributed.engine.latent_job import ComfySampling, LatentJob
from distributed.engine.settings import DualScopeSettings
from distributed.models.wan.architectures import LTXV, WAN
from distributed.models.wan.attention import frame_window_attention, frame_window_attention_in_parts
from distributed.models.wan.export import ModelSampling
from distributed.models.wan.inputs import JobInputs, check_conditioning, read_inputs, write_inputs


def dense_reference(q, k, v, k_glb, v_glb, left, window, local_bonus, global_bonus):
    """Every query token against every key token, with a frame-level mask: the definition, computed plainly."""
    batch, heads, frames, tokens, dim = q.shape
    extended = k.shape[2]
    keys = torch.cat([k.flatten(2, 3), k_glb.flatten(2, 3)], dim=2)
    values = torch.cat([v.flatten(2, 3), v_glb.flatten(2, 3)], dim=2)
    bias = torch.full((frames * tokens, keys.shape[2]), float("-inf"), dtype=q.dtype)
    for frame in range(frames):
        rows = slice(frame * tokens, (frame + 1) * tokens)
        for key_frame in range(extended):
            if abs(key_frame - (frame + left)) <= window:
                bias[rows, key_frame * tokens : (key_frame + 1) * tokens] = local_bonus
        bias[rows, extended * tokens :] = global_bonus
    scores = q.flatten(2, 3) @ keys.transpose(-1, -2) / dim**0.5 + bias
    return (scores.softmax(-1) @ values).view(q.shape)


@pytest.mark.parametrize("block", [1, 2, None])
@pytest.mark.parametrize("left,right,window,globals_,bonus", [(0, 2, 2, 0, 0.0), (1, 1, 1, 3, 0.0), (2, 0, 3, 2, 4.0)])
def test_frame_window_attention_is_banded_attention_over_frame_blocks(left, right, window, globals_, bonus, block):
    generator = torch.Generator().manual_seed(0)
    frames, tokens = 5, 3

    def rand(*shape):
        return torch.randn(*shape, generator=generator, dtype=torch.float64)

    q = rand(1, 2, frames, tokens, 4)
    k, v = rand(1, 2, left + frames + right, tokens, 4), rand(1, 2, left + frames + right, tokens, 4)
    k_glb, v_glb = rand(1, 2, globals_, tokens, 4), rand(1, 2, globals_, tokens, 4)
    ours = frame_window_attention(
        q, k, v, k_glb, v_glb, left, window, local_bonus=bonus, global_bonus=-bonus, start=3, block_frames=block
    )
    expected = dense_reference(q, k, v, k_glb, v_glb, left, window, bonus, -bonus)
    assert torch.allclose(ours, expected, atol=1e-12)
    # The same from [left halo, own, right halo] as pieces that are never joined (what a worker passes).
    cuts = (slice(0, left), slice(left, left + frames), slice(left + frames, None))
    pieces = [[x[:, :, cut] for cut in cuts] for x in (k, v)]
    from_pieces = frame_window_attention(
        q, *pieces, k_glb, v_glb, left, window, local_bonus=bonus, global_bonus=-bonus, start=3, block_frames=block
    )
    assert torch.equal(from_pieces, ours)


@pytest.mark.parametrize(
    "left,right,frames,window,globals_,local_bonus,global_bonus",
    [
        (2, 2, 5, 2, 3, 0.0, 0.0),  # an interior clip: halos on both sides, global frames
        (0, 3, 5, 3, 2, 0.0, 4.0),  # the first clip, with a global bonus
        (3, 0, 6, 3, 0, -2.0, 0.0),  # the last clip, no global frames, a local bonus
        (2, 2, 2, 3, 1, 1.0, 0.0),  # a clip shorter than P: its frames see both halos
        (1, 2, 4, 3, 2, 0.0, 0.0),  # halos narrower than P (a neighbour at the video's end)
        (0, 0, 4, 1, 2, 0.0, -3.0),  # nothing to borrow: the own frames and the global frames
    ],
)
@pytest.mark.parametrize("block", [1, 2, None])
def test_frame_window_attention_in_parts_joins_own_halo_and_global_parts_exactly(
    left, right, frames, window, globals_, local_bonus, global_bonus, block
):
    """The parts (own windows first, then the exchanged frames, joined by their normalisers) against the
    dense definition, in fp64; `rest` is called once, after the own part."""
    generator = torch.Generator().manual_seed(1)
    tokens, dim = 3, 4

    def rand(*shape):
        return torch.randn(*shape, generator=generator, dtype=torch.float64)

    q = rand(2, 2, frames, tokens, dim)
    k, v = rand(2, 2, left + frames + right, tokens, dim), rand(2, 2, left + frames + right, tokens, dim)
    k_glb, v_glb = rand(2, 2, globals_, tokens, dim), rand(2, 2, globals_, tokens, dim)
    calls = []

    def rest():
        calls.append(True)
        own_end = left + frames
        return (k[:, :, :left], v[:, :, :left]), (k[:, :, own_end:], v[:, :, own_end:]), (k_glb, v_glb)

    own = (k[:, :, left : left + frames], v[:, :, left : left + frames])
    ours = frame_window_attention_in_parts(
        q, own, rest, window, local_bonus=local_bonus, global_bonus=global_bonus, start=5, block_frames=block
    )
    expected = dense_reference(q, k, v, k_glb, v_glb, left, window, local_bonus, global_bonus)
    assert calls == [True]
    assert torch.allclose(ours, expected, atol=1e-12)


def inputs(tmp_path, extras):
    latent = torch.randn(1, 16, 3, 4, 4)
    positive = [[torch.randn(1, 8, 32), extras]]
    negative = [[torch.randn(1, 8, 32), {}]]
    return JobInputs(
        latent, positive, negative, ModelSampling(shift=8.0, multiplier=1000.0)
    ), tmp_path / "job.safetensors"


class VisionOutput:  # stands in for comfy.clip_vision.Output, which is a plain attribute holder
    pass


def test_job_inputs_round_trip_tensors_numbers_and_clip_vision_output(tmp_path):
    vision = VisionOutput()
    vision.penultimate_hidden_states = torch.randn(1, 257, 32)
    extras = {"concat_latent_image": torch.randn(1, 16, 3, 4, 4), "strength": 0.5, "clip_vision_output": vision}
    original, path = inputs(tmp_path, extras)
    write_inputs(path, original)
    back = read_inputs(path, VisionOutput)
    assert torch.equal(back.latent, original.latent) and back.sampling == original.sampling
    assert torch.equal(back.positive[0][0], original.positive[0][0])
    assert torch.equal(back.positive[0][1]["concat_latent_image"], extras["concat_latent_image"])
    assert back.positive[0][1]["strength"] == 0.5
    assert torch.equal(
        back.positive[0][1]["clip_vision_output"].penultimate_hidden_states, vision.penultimate_hidden_states
    )
    assert back.negative[0][1] == {}


def test_job_inputs_refuse_values_that_cannot_travel(tmp_path):
    original, path = inputs(tmp_path, {"control": object()})
    with pytest.raises(InvalidSettingsError, match="carries 'control' \\(object\\), which cannot reach the workers"):
        write_inputs(path, original)


def test_job_inputs_round_trip_lists_of_tensors_and_of_numbers(tmp_path):
    frames, masks = [torch.randn(1, 32, 3, 4, 4), torch.randn(1, 32, 3, 4, 4)], [torch.rand(1, 64, 3, 4, 4)] * 2
    original, path = inputs(tmp_path, {"vace_frames": frames, "vace_mask": masks, "vace_strength": [1.0, 0.5]})
    write_inputs(path, original)
    back = read_inputs(path).positive[0][1]
    assert [torch.equal(a, b) for a, b in zip(back["vace_frames"], frames, strict=True)] == [True, True]
    assert torch.equal(back["vace_mask"][1], masks[1]) and back["vace_strength"] == [1.0, 0.5]


@pytest.mark.parametrize(
    ("key", "value"),
    [("time_dim_concat", torch.zeros(1, 16, 2, 4, 4)), ("keyframe_idxs", torch.zeros(1, 3, 32))],
    ids=["wan-time-dim-concat", "ltxv-add-guide"],
)
def test_conditioning_that_appends_frames_inside_the_model_is_refused(tmp_path, key, value):
    original, path = inputs(tmp_path, {key: value})
    with pytest.raises(InvalidSettingsError, match=f"'{key}', which appends frames to the video"):
        write_inputs(path, original)


def test_conditioning_of_another_model_is_refused_naming_both_widths():
    with pytest.raises(InvalidSettingsError, match=r"width 768 but the model takes 4096: .* \(Wan needs its umT5"):
        check_conditioning("positive", [[torch.zeros(1, 77, 768), {}]], 4096, WAN.text_encoder)


def test_ltx_video_conditioning_without_its_text_mask_is_refused_naming_the_encoder():
    text = torch.zeros(1, 8, 4096)
    with pytest.raises(InvalidSettingsError, match=r"carries no 'attention_mask'.*T5-XXL text encoder"):
        check_conditioning("negative", [[text, {}]], 4096, LTXV.text_encoder, LTXV.required_conditioning)
    mask = torch.ones(1, 8, dtype=torch.int64)
    check_conditioning(
        "negative", [[text, {"attention_mask": mask}]], 4096, LTXV.text_encoder, LTXV.required_conditioning
    )


def test_a_latent_job_crosses_the_process_boundary_as_plain_data():
    sampling = ComfySampling(
        "euler", "simple", steps=4, cfg=5.0, seed=3, end_at_step=2, return_with_leftover_noise=True
    )
    job = LatentJob(
        ModelSpec("weights.safetensors", family="wan", weight_dtype="fp8_e4m3fn_fast"),
        "inputs.safetensors",
        6,
        sampling,
        DualScopeSettings(2, 2),
    )
    assert job_from_dict(job.to_dict()) == job
    with pytest.raises(InvalidSettingsError, match=r"weight_dtype is 'fp8'; use one of \['default', 'fp8_e4m3fn'"):
        ModelSpec("weights.safetensors", family="wan", weight_dtype="fp8")
    with pytest.raises(InvalidSettingsError, match="every worker needs at least one latent frame"):
        job.validate(world_size=7)
    with pytest.raises(InvalidSettingsError, match="denoise is 1.5"):
        ComfySampling("euler", "simple", steps=4, cfg=5.0, seed=3, denoise=1.5)


def test_exported_models_on_disk_are_pruned_to_the_two_most_recent(tmp_path):
    import os

    from distributed.models.wan.export import KEEP_EXPORTS, _prune

    files = [tmp_path / f"wan-{index}.safetensors" for index in range(4)]
    for age, file in enumerate(files):
        file.write_bytes(b"x")
        os.utime(file, (1000 + age, 1000 + age))
    _prune(tmp_path, keep=files[0])  # just written (or used again): kept even though it is the oldest here
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([files[0].name, files[3].name])
    assert KEEP_EXPORTS == 2


def test_an_export_the_disk_cannot_hold_is_refused_naming_the_sizes_and_the_fix(tmp_path):
    import shutil

    from distributed.models.wan.export import ROOM_MARGIN, check_room

    free = shutil.disk_usage(tmp_path).free
    check_room(max(0, free // 2 - ROOM_MARGIN), tmp_path)  # fits, with the margin
    with pytest.raises(
        InvalidSettingsError, match=r"GB free\. Free space there, or start ComfyUI with --temp-directory"
    ):
        check_room(free + (1 << 30), tmp_path)  # more than this disk has free
