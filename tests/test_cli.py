"""The standalone CLI, run as a real command (gloo/CPU workers, the tiny random model)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import av
import pytest

from distributed.cli.main import _job_from_args, _parser
from distributed.engine.choices import MODEL_SETTINGS_FILE, TOKEN_ENV, recommended_attention
from distributed.engine.errors import InvalidSettingsError

pytestmark = [pytest.mark.pool, pytest.mark.timeout(240)]
REPO = Path(__file__).resolve().parents[1]


def cli(*args: str, timeout: float = 200) -> subprocess.CompletedProcess[str]:
    env = {name: value for name, value in os.environ.items() if name != TOKEN_ENV}  # only what the test gives
    return subprocess.run(
        [sys.executable, "-m", "distributed.cli", *args], cwd=REPO, capture_output=True, text=True, timeout=timeout,
        env=env,
    )  # fmt: skip


def test_generate_writes_an_mp4_with_the_requested_frames(tiny_pipeline: Path, tmp_path: Path) -> None:
    schedule = tmp_path / "schedule.txt"
    schedule.write_text("0-3: a red ball\n4-5: a ball\n")
    out = tmp_path / "out" / "video.mp4"
    done = cli(
        "generate", "--model", str(tiny_pipeline), "--schedule", str(schedule), "--frames", "6",
        "--width", "32", "--height", "32", "--steps", "2", "--cfg", "7", "--sampler", "ddim", "--seed", "3",
        "--global-frames", "4", "--local-window", "2", "--workers", "2", "--out", str(out), "--fps", "8",
        "--frame-shares", "1,2",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert "denoising 2/2" in done.stderr and f"wrote 6 frames (32x32) to {out}" in done.stderr
    assert "(frames per worker: 2/4)" in done.stderr
    with av.open(str(out)) as container:
        stream = container.streams.video[0]
        assert float(stream.average_rate) == pytest.approx(8)
        frames = [frame.to_ndarray(format="rgb24") for frame in container.decode(stream)]
        made_by = json.loads(container.metadata["video_infinity_job"])  # the job travels in the file
    assert len(frames) == 6
    assert frames[0].shape == (32, 32, 3)
    assert (made_by["seed"], made_by["frames"], made_by["prompts"][1]["prompt"]) == (3, 6, "a ball")
    assert made_by["frame_shares"] == [1.0, 2.0]
    data = out.read_bytes()
    assert data.index(b"moov") < data.index(b"mdat"), "the index must lead the file (browsers, metadata readers)"


def test_generate_takes_unset_settings_from_the_model_folder(tmp_path: Path) -> None:
    out = tmp_path / "circle.mp4"
    done = cli(
        "generate", "--model", str(REPO / "assets" / "tiny-shapes-t2v"), "--prompt", "a red circle moving right",
        "--frames", "2", "--global-frames", "2", "--steps", "1", "--devices", "cpu:1", "--out", str(out),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    # The demo model's video_infinity.json recommends 64x64 with ddim; --steps given here wins over its 25.
    assert "generating 2 frames at 64x64, ddim 1 steps, cfg 5.0, 8.0 fps, seed 0, on cpu" in done.stderr
    assert out.stat().st_size > 0


def test_attention_settings_not_given_come_from_the_model_s_measured_best(tmp_path: Path) -> None:
    demo = REPO / "assets" / "tiny-shapes-t2v"
    recommended = recommended_attention(demo)
    assert recommended, "the demo model recommends the attention settings measured best for it"
    command = ["generate", "--model", str(demo), "--prompt", "a red circle", "--frames", "32"]
    command += ["--out", str(tmp_path / "v.mp4")]
    job = _job_from_args(_parser().parse_args(command))
    assert {name: job.attention.to_dict()[name] for name in recommended} == recommended
    given = _job_from_args(_parser().parse_args([*command, "--global-frames", "4"]))
    assert given.attention.global_frames == 4  # a flag given wins
    assert {name: given.attention.to_dict()[name] for name in recommended} == recommended
    broken = tmp_path / "model"
    broken.mkdir()
    (broken / MODEL_SETTINGS_FILE).write_text('{"recommended": {"attention": {"phase_treshold": 0}}}')
    with pytest.raises(InvalidSettingsError, match=r"video_infinity.json, recommended attention: unknown .*phase_tr"):
        recommended_attention(broken)


def test_the_example_workflow_uses_the_demo_model_s_measured_best_attention() -> None:
    recommended = recommended_attention(REPO / "assets" / "tiny-shapes-t2v")
    api = json.loads((REPO / "workflows" / "api" / "text_to_video.json").read_text())
    (inputs,) = [node["inputs"] for node in api.values() if node["class_type"] == "VideoInfinityDualScopeAttention"]
    ui = json.loads((REPO / "workflows" / "text_to_video.json").read_text())
    (widgets,) = [node["widgets_values"] for node in ui["nodes"] if node["type"] == "VideoInfinityDualScopeAttention"]
    order = ["local_window", "global_frames", "conv_halo", "phase_bias", "phase_threshold", "global_bias"]
    by_name = dict(zip(order, widgets, strict=False))  # the node's inputs in the order the editor stores them
    for name, value in recommended.items():
        assert inputs[name] == value and by_name[name] == value, name
    assert inputs["phase_bias"] is True and by_name["phase_bias"] is True


def test_generate_reports_a_bad_setting_without_starting_workers(tiny_pipeline: Path, tmp_path: Path) -> None:
    done = cli(
        "generate", "--model", str(tiny_pipeline), "--prompt", "a red ball", "--frames", "4", "--width", "30",
        "--height", "32", "--out", str(tmp_path / "v.mp4"), "--devices", "cpu:1",
    )  # fmt: skip
    assert done.returncode == 1
    assert "error: width is 30; it must be a multiple of 8" in done.stderr
    assert not (tmp_path / "v.mp4").exists()


@pytest.mark.parametrize(
    ("shares", "message"),
    [("1,1,1", "frame_shares gives 3 share(s) but the pool has 2 workers"), ("1;2", "frame_shares is '1;2'")],
)
def test_frame_shares_that_do_not_fit_the_pool_are_refused_before_workers_start(
    tiny_pipeline: Path, tmp_path: Path, shares: str, message: str
) -> None:
    done = cli(
        "generate", "--model", str(tiny_pipeline), "--prompt", "a red ball", "--frames", "4", "--width", "32",
        "--height", "32", "--out", str(tmp_path / "v.mp4"), "--devices", "cpu:2", "--frame-shares", shares,
    )  # fmt: skip
    assert done.returncode == 1 and message in done.stderr, done.stderr[-2000:]
    assert "starting workers" not in done.stderr


def test_join_without_a_token_is_refused() -> None:
    done = cli("join", "127.0.0.1:1", "--devices", "cpu:1", timeout=60)
    assert done.returncode == 2 and "token" in done.stderr


def test_the_wait_for_node_agents_is_set_from_the_command_line(tiny_pipeline: Path, tmp_path: Path) -> None:
    done = cli(
        "generate", "--model", str(tiny_pipeline), "--prompt", "a red ball", "--frames", "4", "--width", "32",
        "--height", "32", "--devices", "cpu:1", "--remote-workers", "1", "--token", "t", "--start-timeout", "3",
        "--out", str(tmp_path / "v.mp4"),
    )  # fmt: skip
    assert done.returncode != 0
    assert "only 0 joined in time" in done.stderr, done.stderr[-2000:]
