"""The shipped tiny model makes the video it is asked for (a short version of benchmarks/quality.py)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from distributed.engine.choices import recommended_settings
from distributed.engine.comm import Communicator
from distributed.engine.job import JobSpec
from distributed.engine.runner import Engine
from training import shapes_data as shapes
from training.word_use import denoising_errors, load_model, trained_trajectories

pytestmark = pytest.mark.quality

MODEL = Path(__file__).resolve().parent.parent / "assets" / "tiny-shapes-t2v"


_made: dict[tuple[str, int], np.ndarray] = {}


def generate(engine: Engine, prompt: str, seed: int) -> np.ndarray:
    """A 16-frame clip with the model's recommended settings; made once per prompt and seed, as several
    checks read the same clips."""
    if (prompt, seed) in _made:
        return _made[prompt, seed]
    job = {
        "model": {"base": str(MODEL)},
        "prompt": prompt,
        "frames": 16,
        "height": shapes.SIZE,
        "width": shapes.SIZE,
        "steps": 25,
        "cfg": recommended_settings(MODEL)["cfg"],
        "sampler": "ddim",
        "seed": seed,
        "fps": shapes.FPS,
    }
    _made[prompt, seed] = engine.run(JobSpec.from_dict(job)).frames
    return _made[prompt, seed]


@pytest.fixture(scope="module")
def engine() -> Engine:
    if not (MODEL / "unet").is_dir():
        pytest.fail(f"the shipped model is missing: {MODEL} (python -m training.train_tiny_model)")
    return Engine(Communicator.single("cpu"))


# One prompt per colour and per direction, each shape twice: the colour and direction checks read the
# same four clips.
NAMED_PROMPTS = [
    "a red square moving right",
    "a green circle moving left",
    "a blue square moving up",
    "a yellow circle moving down",
]
NAMED_SEED = 3


def test_generates_the_prompted_colours(engine: Engine) -> None:
    # One prompt per colour, so a model that always draws the same thing (or noise) gets at most one
    # right. One miss is allowed: red sits next to orange and yellow, and which side a clip lands on can
    # change with the floating-point summation order of the machine.
    misses = []
    for prompt in NAMED_PROMPTS:
        video = generate(engine, prompt, NAMED_SEED)
        assert video.shape == (16, shapes.SIZE, shapes.SIZE, 3) and video.dtype == np.uint8
        colour = shapes.parse_caption(prompt)[0]
        track = shapes.track_clip(video)
        if track.colour != colour or track.found < 0.5:
            misses.append(f"{prompt!r}: {track.colour} in {track.found:.0%} of the frames")
    assert len(misses) <= 1, "; ".join(misses)


def test_frames_are_not_noise(engine: Engine) -> None:
    video = generate(engine, NAMED_PROMPTS[1], NAMED_SEED).astype(np.float32)
    # A plain background dominates every frame: most pixels sit near the background colour, and
    # neighbouring pixels agree (noise would make them differ by tens of levels).
    background = np.asarray(shapes.BACKGROUND, np.float32) * 255
    near = (np.abs(video - background).max(axis=-1) < 40).mean()
    assert near > 0.6, f"only {near:.0%} of the pixels look like background"
    roughness = np.abs(np.diff(video, axis=2)).mean()
    assert roughness < 12.0, f"neighbouring pixels differ by {roughness:.1f} levels on average"


def test_the_shape_moves_at_about_the_trained_speed(engine: Engine) -> None:
    # A model that draws a still shape, or one that jumps about, fails this.
    track = shapes.track_clip(generate(engine, NAMED_PROMPTS[0], NAMED_SEED))
    speed = float(np.hypot(*track.velocity))
    assert 0.5 * shapes.SPEED <= speed <= 1.5 * shapes.SPEED, f"mean velocity {track.velocity} px/frame"


def test_a_prompt_may_leave_the_colour_open(engine: Engine) -> None:
    track = shapes.track_clip(generate(engine, "a circle moving up", seed=0))
    assert track.colour is not None and track.found >= 0.5, "no shape of one colour found"


@pytest.mark.slow  # six clips; the full quality benchmark measures the same over more seeds
def test_a_colour_the_prompt_leaves_open_holds_over_the_clip(engine: Engine) -> None:
    # Only the frames themselves can keep an unnamed colour; a model without that memory lets it change
    # part-way (the previous weights turned a yellow shape green for 5 of 16 frames, seed 1, and a green
    # one blue for 7, seed 2).
    changed = []
    for prompt in ("a shape moving right", "a shape moving left"):
        for seed in range(3):
            colours = Counter(shapes.track_frame(frame).colour for frame in generate(engine, prompt, seed))
            colour, frames = colours.most_common(1)[0]
            if colour is None or frames < 14:
                changed.append(f"{prompt!r}, seed {seed}: {dict(colours)}")
    assert not changed, "; ".join(changed)


def test_the_shape_moves_the_prompted_way(engine: Engine) -> None:
    # One prompt per direction: a model that ignores the direction word moves the same way for a given
    # noise whatever the word, and gets about one of four right (three or more by chance: 5 %).
    tracked = {p: shapes.track_clip(generate(engine, p, NAMED_SEED)).direction for p in NAMED_PROMPTS}
    wrong = [f"{p!r} moved {d}" for p, d in tracked.items() if d != shapes.parse_caption(p)[2]]
    assert len(wrong) <= 1, "; ".join(wrong)


def test_a_wrong_colour_shape_or_direction_word_makes_denoising_worse() -> None:
    # The word-use probe on real clips of the model's own training data: a model that ignores its text
    # (or a probe that scores every caption alike) leaves the error unchanged. Colour and shape matter
    # most at middle noise, the direction (which lane the shape travels) at high noise.
    model = load_model(MODEL)
    errors = denoising_errors(
        model, clips=8, seed=99, timesteps=(950, 650, 450), trajectories=trained_trajectories(MODEL, model)
    )
    for word, rows in (("other colour", (1, 2)), ("other shape", (1, 2)), ("opposite direction", (0,))):
        for row in rows:
            true = errors["true caption"][row]
            assert errors[word][row] > 1.1 * true, f"{word}: {errors[word][row]:.5f} vs {true:.5f}"
