"""The demo model's training script: its long-video stage trains through the engine, and what it exports."""

from __future__ import annotations

import copy
import json

import pytest
import torch

from distributed.engine.choices import MODEL_SETTINGS_FILE, recommended_attention, recommended_settings
from distributed.engine.layout import FrameLayout
from distributed.engine.settings import DualScopeSettings
from distributed.models.unet3d.model import run_unet3d
from training import train_tiny_model as train

SHIPPED = train.DEFAULT_OUTPUT  # the shipped demo model


def _output(unet: torch.nn.Module, frames: int) -> torch.Tensor:
    """The UNet's output on a fixed batch of clips."""
    generator = torch.Generator().manual_seed(0)
    sample = torch.randn(2, 4, frames, 8, 8, generator=generator, dtype=torch.float64)
    text = torch.randn(2, 1, 8, 32, generator=generator, dtype=torch.float64).expand(-1, frames, -1, -1)
    return run_unet3d(unet, sample, torch.tensor([500, 950]), text, 8)


def _gradients(unet: torch.nn.Module, frames: int) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """The output and every parameter's gradient of one fixed loss on a fixed batch of clips."""
    out = _output(unet, frames)
    weights = torch.linspace(-1.0, 1.0, out.numel(), dtype=torch.float64).view_as(out)
    (out * weights).sum().backward()
    return out.detach(), [p.grad.clone() for p in unet.parameters() if p.grad is not None]


def test_gradients_through_the_engine_equal_the_plain_model_s_where_the_attention_sees_the_whole_clip() -> None:
    # A window wider than the clip, no global frames and no bias: the dual-scope attention is then the
    # plain one, so the patched model must give the same output and the same gradient, parameter by parameter.
    torch.manual_seed(0)
    # eval: the temporal convolutions' dropout would draw differently in the two models.
    plain = train.make_unet(spatial_position=True, caption_in_time=True, caption_position=True).double().eval()
    with torch.no_grad():  # the stage-added embeddings start at zero; give them something to carry
        for parameter in plain.parameters():
            parameter.add_(0.01 * torch.randn_like(parameter))
    patched = copy.deepcopy(plain)
    frames = 8
    train.through_engine(patched, DualScopeSettings(local_window=frames, global_frames=0, phase_bias=False), frames)
    out, grads = _gradients(plain, frames)
    patched_out, patched_grads = _gradients(patched, frames)
    assert len(grads) == len(patched_grads) == sum(1 for _ in plain.parameters())
    torch.testing.assert_close(patched_out, out, rtol=1e-10, atol=1e-12)
    for grad, patched_grad in zip(grads, patched_grads, strict=True):
        torch.testing.assert_close(patched_grad, grad, rtol=1e-9, atol=1e-12)
    # With the shipped attention settings, on a clip longer than the local window's 2P + 1 frames, the
    # training sees something else: a band of neighbours and the global frames (favoured by the bias).
    frames = 24
    recommended = copy.deepcopy(plain)
    train.through_engine(recommended, DualScopeSettings.from_dict(train.RECOMMENDED["attention"]), frames)
    with torch.no_grad():
        assert (_output(recommended, frames) - _output(plain, frames)).abs().max() > 1e-3


def test_a_patched_unet_set_to_another_clip_length_computes_as_one_patched_for_it() -> None:
    # The long stage may use several clip lengths in turn (--long-frames 64 128) on one patched UNet.
    torch.manual_seed(1)
    plain = train.make_unet().double().eval()
    settings = DualScopeSettings.from_dict(train.RECOMMENDED["attention"])
    switched, fresh = copy.deepcopy(plain), copy.deepcopy(plain)
    context = train.through_engine(switched, settings, 24)
    train.through_engine(fresh, settings, 40)
    with torch.no_grad():
        _output(switched, 24)
        context.begin_job(FrameLayout(40, 1), settings)
        torch.testing.assert_close(_output(switched, 40), _output(fresh, 40), rtol=0, atol=0)


def test_the_long_stage_refuses_attention_that_changes_with_the_noise_level() -> None:
    with pytest.raises(ValueError, match="same at every noise level"):
        train.through_engine(train.make_unet(), DualScopeSettings(phase_threshold=800.0), 32)


def test_the_long_stage_trains_with_the_attention_the_model_recommends() -> None:
    stage = train.long_stage(train.parse_args(["--long-steps", "10"]))
    assert stage.dual_scope == DualScopeSettings.from_dict(recommended_attention(SHIPPED))
    assert (stage.frames, stage.batch, stage.steps) == ((train.LONG_FRAMES,), train.LONG_BATCH, 10)
    assert train.long_stage(train.parse_args(["--long-frames", "64", "128"])).frames == (64, 128)
    assert not stage.circular_padding
    assert train.long_stage(train.parse_args(["--wrap-from", "long"])).circular_padding


def test_the_export_writes_the_settings_the_shipped_model_recommends() -> None:
    shipped = json.loads((SHIPPED / MODEL_SETTINGS_FILE).read_text())
    assert shipped == {"recommended": train.RECOMMENDED}
    assert recommended_settings(SHIPPED)["cfg"] == train.RECOMMENDED["cfg"]
