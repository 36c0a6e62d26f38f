"""The shipped tiny model makes the video it is asked for (a short version of benchmarks/quality.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from distributed.engine.comm import Communicator
from distributed.engine.job import JobSpec
from distributed.engine.runner import Engine
from training import shapes_data as shapes
from training.word_use import denoising_errors, load_model

pytestmark = pytest.mark.quality

MODEL = Path(__file__).resolve().parent.parent / "assets" / "tiny-shapes-t2v"


def generate(engine: Engine, prompt: str, seed: int) -> np.ndarray:
    job = {
        "model": {"base": str(MODEL)},
        "prompt": prompt,
        "frames": 16,
        "height": shapes.SIZE,
        "width": shapes.SIZE,
        "steps": 25,
        "cfg": 12.0,
        "sampler": "ddim",
        "seed": seed,
        "fps": shapes.FPS,
    }
    return engine.run(JobSpec.from_dict(job)).frames


@pytest.fixture(scope="module")
def engine() -> Engine:
    if not (MODEL / "unet").is_dir():
        pytest.fail(f"the shipped model is missing: {MODEL} (python -m training.train_tiny_model)")
    return Engine(Communicator.single("cpu"))


COLOUR_PROMPTS = [
    "a red square moving right",
    "a green square moving left",
    "a blue circle moving up",
    "a yellow circle moving down",
]


def test_generates_the_prompted_colours(engine: Engine) -> None:
    # One prompt per colour, so a model that always draws the same thing (or noise) gets at most one
    # right. One miss is allowed: red sits next to orange and yellow, and which side a clip lands on can
    # change with the floating-point summation order of the machine.
    misses = []
    for prompt in COLOUR_PROMPTS:
        video = generate(engine, prompt, seed=0)
        assert video.shape == (16, shapes.SIZE, shapes.SIZE, 3) and video.dtype == np.uint8
        colour = shapes.parse_caption(prompt)[0]
        track = shapes.track_clip(video)
        if track.colour != colour or track.found < 0.5:
            misses.append(f"{prompt!r}: {track.colour} in {track.found:.0%} of the frames")
    assert len(misses) <= 1, "; ".join(misses)


def test_frames_are_not_noise(engine: Engine) -> None:
    video = generate(engine, "a green square moving left", seed=2).astype(np.float32)
    # A plain background dominates every frame: most pixels sit near the background colour, and
    # neighbouring pixels agree (noise would make them differ by tens of levels).
    background = np.asarray(shapes.BACKGROUND, np.float32) * 255
    near = (np.abs(video - background).max(axis=-1) < 40).mean()
    assert near > 0.6, f"only {near:.0%} of the pixels look like background"
    roughness = np.abs(np.diff(video, axis=2)).mean()
    assert roughness < 12.0, f"neighbouring pixels differ by {roughness:.1f} levels on average"


def test_the_shape_moves_at_about_the_trained_speed(engine: Engine) -> None:
    # A model that draws a still shape, or one that jumps about, fails this.
    track = shapes.track_clip(generate(engine, "a red square moving left", seed=1))
    speed = float(np.hypot(*track.velocity))
    assert 0.5 * shapes.SPEED <= speed <= 1.5 * shapes.SPEED, f"mean velocity {track.velocity} px/frame"


def test_a_prompt_may_leave_the_colour_open(engine: Engine) -> None:
    track = shapes.track_clip(generate(engine, "a circle moving up", seed=0))
    assert track.colour is not None and track.found >= 0.5, "no shape of one colour found"


def test_a_wrong_colour_or_shape_word_makes_denoising_worse() -> None:
    # The word-use probe on real clips: a model that ignores its text (or a probe that scores every
    # caption alike) leaves the error unchanged.
    errors = denoising_errors(load_model(MODEL), clips=8, seed=99, timesteps=(650, 450), trajectories="free")
    for word in ("other colour", "other shape"):
        for row, true in enumerate(errors["true caption"]):
            assert errors[word][row] > 1.1 * true, f"{word}: {errors[word][row]:.5f} vs {true:.5f}"
