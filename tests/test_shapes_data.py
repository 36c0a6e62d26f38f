"""The demo model's training data and the tracker the quality measurements rely on."""

from __future__ import annotations

import numpy as np
import pytest

from training import shapes_data as shapes
from training.train_tiny_model import spoken_caption


@pytest.mark.parametrize("direction", list(shapes.DIRECTIONS))
def test_tracker_reads_colour_shape_and_direction_of_rendered_clips(direction: str) -> None:
    for colour in shapes.COLOURS:
        for shape in shapes.SHAPES:
            spec = shapes.ClipSpec(colour, shape, direction, x0=5, y0=60)  # starts across the wrap
            clip = (shapes.render_clip(spec, 16) * 255).round().astype(np.uint8)
            track = shapes.track_clip(clip)
            assert (track.colour, track.shape, track.direction) == (colour, shape, direction)
            assert track.found == 1.0
            dx, dy = shapes.DIRECTIONS[direction]
            assert track.velocity == pytest.approx((dx * shapes.SPEED, dy * shapes.SPEED), abs=0.3)


def test_streak_trails_behind_the_shape_and_is_not_counted_as_the_shape() -> None:
    frame = shapes.render_frame("green", "square", "right", 32, 32)
    background = np.asarray(shapes.BACKGROUND, np.float32)
    row = np.abs(frame[32] - background).sum(-1)
    half = shapes.SQUARE_SIDE / 2
    behind, ahead = row[int(32 - half) - 2], row[int(32 + half) + 2]
    assert behind > 0.1 and ahead < 1e-6, "the streak belongs on the left of a shape moving right"
    labels = shapes.classify_pixels(frame)
    assert labels[32, int(32 - half) - 2] == 0
    assert (labels == 1 + list(shapes.COLOURS).index("green")).sum() == pytest.approx(shapes.SQUARE_SIDE**2, rel=0.15)


def test_captions_may_leave_attributes_open() -> None:
    assert shapes.caption("red", "circle", "up") == "a red circle moving up"
    assert shapes.caption(None, "square", "left") == "a square moving left"
    assert shapes.caption("blue", None, None) == "a blue shape"
    assert shapes.parse_caption("a square moving left") == (None, "square", "left")
    assert shapes.parse_caption("A Red circle, moving UP") == ("red", "circle", "up")
    captions = shapes.open_captions()
    assert len(set(captions)) == 75 and set(shapes.all_captions()) <= set(captions)
    vocabulary = set(shapes.vocabulary())
    assert all(set(c.split()) <= vocabulary for c in captions)


def test_training_captions_drop_each_attribute_at_the_given_rate() -> None:
    rng = np.random.default_rng(0)
    spec = shapes.ClipSpec("yellow", "circle", "down", 0, 0)
    said = [shapes.parse_caption(spoken_caption(spec, rng, 0.25)) for _ in range(4000)]
    for index, value in enumerate(("yellow", "circle", "down")):
        kept = np.mean([s[index] == value for s in said])
        assert kept == pytest.approx(0.75, abs=0.03)
        assert all(s[index] in (value, None) for s in said)
    assert all(spoken_caption(spec, rng, 0.0) == spec.caption for _ in range(10))


def test_anchored_clips_follow_one_phase_locked_trajectory_per_direction() -> None:
    rng = np.random.default_rng(1)
    for _ in range(200):
        spec = shapes.sample_spec(rng, "anchored")
        dx, dy = shapes.DIRECTIONS[spec.direction]
        assert 0 <= spec.start < shapes.PERIOD
        # At every video frame that is a multiple of the period, the shape is back in the anchor band.
        first_whole_period = (shapes.PERIOD - spec.start) % shapes.PERIOD
        x, y = spec.position(first_whole_period)
        along = x if dx else y
        assert 0 <= along < shapes.ANCHOR_SPREAD
        assert spec.position(first_whole_period + shapes.PERIOD) == (x, y)
    # Unanchored clips start anywhere, at video frame 0.
    starts = {shapes.sample_spec(rng).start for _ in range(50)}
    assert starts == {0}


def test_lane_clips_travel_along_their_direction_s_lane() -> None:
    rng = np.random.default_rng(2)
    seen: dict[str, set[int]] = {d: set() for d in shapes.DIRECTIONS}
    for _ in range(400):
        spec = shapes.sample_spec(rng, "lanes")
        dx, _ = shapes.DIRECTIONS[spec.direction]
        for frame in range(0, 40, 7):
            x, y = spec.position(frame)
            across = y if dx else x
            assert abs(across - shapes.LANES[spec.direction]) <= shapes.LANE_WIDTH // 2
        seen[spec.direction].add(spec.x0 if dx else spec.y0)  # along the lane: anywhere
    assert all(len(starts) > 32 for starts in seen.values())
    with pytest.raises(ValueError, match="trajectories"):
        shapes.sample_spec(rng, "diagonal")
