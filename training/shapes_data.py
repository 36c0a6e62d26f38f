"""Procedural "moving shapes" clips: the training data of the embedded tiny text-to-video model.

One coloured shape slides with constant velocity over a plain dark background and leaves a faint
motion streak behind it (what a camera's shutter records), so a single frame already shows which
way the shape moves. The canvas is a torus (a shape leaving on one side re-enters on the other), so
a clip of any length keeps showing the shape and long videos stay meaningful. Positions are whole
pixels and the speed is a whole number of pixels per frame, so every frame is one of
COLOURS x SHAPES x DIRECTIONS x SIZE x SIZE images; the trainer encodes each of them once and builds
clips by lookup.

Captions name colour, shape and direction; any of them may be left out ("a square moving left",
"a red shape"), in which case the model picks it. Such open attributes are what long videos need
global context for: nothing but the other frames tells a rank which colour the video has.

The same palette and a matching colour/centroid tracker are used by the quality benchmark.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

SIZE = 64  # pixels per side
BACKGROUND = (0.12, 0.12, 0.12)
COLOURS: dict[str, tuple[float, float, float]] = {
    "red": (0.90, 0.15, 0.15),
    "green": (0.15, 0.80, 0.25),
    "blue": (0.20, 0.35, 0.95),
    "yellow": (0.95, 0.85, 0.15),
}
SHAPES = ("square", "circle")
# Pixels per frame as (dx, dy); image rows grow downwards.
DIRECTIONS: dict[str, tuple[int, int]] = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}
SPEED = 4  # pixels per frame
# The streak: copies of the shape at these distances behind it (pixels), at these opacities. Kept
# faint enough that the tracker counts streak pixels as background.
STREAK_OFFSETS = (3.0, 6.0, 9.0)
STREAK_OPACITY = (0.35, 0.22, 0.1)
SQUARE_SIDE = 16.0
CIRCLE_DIAMETER = 18.0  # slightly larger than the square so both cover a similar area
FPS = 8  # the frame rate the clips represent (the model's fps condition)
# Anchored trajectories: a shape crosses the canvas once per PERIOD frames, and at every frame whose
# video index is a multiple of PERIOD its coordinate along the motion lies in [0, ANCHOR_SPREAD). So the
# direction word and the frame's place in the video together say where the shape is, which is what
# lets a model tie the word to the motion (docs/4-quality.md, "The direction probes").
PERIOD = SIZE // SPEED
ANCHOR_SPREAD = 16
# Lanes: each direction has its own lane, a band across the canvas that its shapes travel along, so the
# direction word alone says where the shape is, in every frame and for any number of workers, and the
# lane says which way the shape goes. The lane's centre across the motion, and its width (pixels).
LANES: dict[str, int] = {"right": 16, "left": 48, "down": 16, "up": 48}
LANE_WIDTH = 8
TRAJECTORIES = ("free", "anchored", "lanes")


@dataclass(frozen=True)
class ClipSpec:
    colour: str
    shape: str
    direction: str
    x0: int  # centre at video frame 0, pixels
    y0: int
    start: int = 0  # the video frame index of the clip's first frame

    @property
    def caption(self) -> str:
        return caption(self.colour, self.shape, self.direction)

    def position(self, frame: int) -> tuple[int, int]:
        """Centre at the clip's `frame` (counted from the clip's first frame)."""
        dx, dy = DIRECTIONS[self.direction]
        moved = SPEED * (self.start + frame)
        return (self.x0 + dx * moved) % SIZE, (self.y0 + dy * moved) % SIZE


def caption(colour: str | None, shape: str | None, direction: str | None) -> str:
    """The caption naming the given attributes; None leaves one out ("a red shape moving up")."""
    words = ["a", *([colour] if colour else []), shape or "shape"]
    if direction:
        words += ["moving", direction]
    return " ".join(words)


def all_captions() -> list[str]:
    """The 32 captions that name all three attributes."""
    return [caption(c, s, d) for c in COLOURS for s in SHAPES for d in DIRECTIONS]


def open_captions() -> list[str]:
    """Every caption form, with each attribute named or left out (5 x 3 x 5 = 75)."""
    return [caption(c, s, d) for c in (None, *COLOURS) for s in (None, *SHAPES) for d in (None, *DIRECTIONS)]


def vocabulary() -> list[str]:
    """Every whole word a caption can contain (for the word-level tokenizer)."""
    return sorted({"a", "shape", "moving", *COLOURS, *SHAPES, *DIRECTIONS})


def parse_caption(text: str) -> tuple[str | None, str | None, str | None]:
    """(colour, shape, direction) named in a prompt; None for each one it leaves open."""
    words = text.lower().replace(",", " ").split()
    found = [next((w for w in words if w in table), None) for table in (COLOURS, SHAPES, DIRECTIONS)]
    return found[0], found[1], found[2]


def sample_spec(rng: np.random.Generator, trajectories: str = "free") -> ClipSpec:
    """A random clip. Free: it starts anywhere. Anchored: the coordinate along the motion starts in
    [0, ANCHOR_SPREAD) at video frame 0 and the clip begins at a random frame of the period, so every
    phase is seen. Lanes: the coordinate across the motion lies in the direction's lane."""
    if trajectories not in TRAJECTORIES:
        raise ValueError(f"unknown trajectories {trajectories!r}; use one of {TRAJECTORIES}")
    spec = ClipSpec(
        colour=str(rng.choice(list(COLOURS))),
        shape=str(rng.choice(SHAPES)),
        direction=str(rng.choice(list(DIRECTIONS))),
        x0=int(rng.integers(SIZE)),
        y0=int(rng.integers(SIZE)),
    )
    horizontal = DIRECTIONS[spec.direction][0] != 0
    if trajectories == "free":
        return spec
    if trajectories == "lanes":
        across = LANES[spec.direction] - LANE_WIDTH // 2 + int(rng.integers(LANE_WIDTH))
        return replace(spec, y0=across) if horizontal else replace(spec, x0=across)
    along = int(rng.integers(ANCHOR_SPREAD))
    return replace(
        spec,
        x0=along if horizontal else spec.x0,
        y0=spec.y0 if horizontal else along,
        start=int(rng.integers(PERIOD)),
    )


def _wrapped_offsets(centre: float) -> np.ndarray:
    """Signed pixel-centre distance to `centre` on a circle of SIZE pixels, in (-SIZE/2, SIZE/2]."""
    coords = np.arange(SIZE, dtype=np.float32) + 0.5
    return (coords - (centre + 0.5) + SIZE / 2) % SIZE - SIZE / 2


def shape_mask(shape: str, x: float, y: float, area: float | None = None) -> np.ndarray:
    """Anti-aliased coverage in [0, 1], (SIZE, SIZE), of a shape centred at pixel (x, y) on the torus.

    `area` rescales the shape to that many pixels (the tracker's templates); default: the data's size.
    """
    dx = _wrapped_offsets(x)[None, :]
    dy = _wrapped_offsets(y)[:, None]
    if shape == "square":
        half = (SQUARE_SIDE if area is None else np.sqrt(area)) / 2
        edge = np.maximum(np.abs(dx), np.abs(dy)) - half
    elif shape == "circle":
        radius = CIRCLE_DIAMETER / 2 if area is None else np.sqrt(area / np.pi)
        edge = np.sqrt(dx * dx + dy * dy) - radius
    else:
        raise ValueError(f"unknown shape {shape!r}")
    return np.clip(0.5 - edge, 0.0, 1.0).astype(np.float32)


def render_frame(colour: str, shape: str, direction: str, x: float, y: float) -> np.ndarray:
    """(SIZE, SIZE, 3) float32 image in [0, 1]: the shape at (x, y) and its streak behind it."""
    dx, dy = DIRECTIONS[direction]
    coverage = shape_mask(shape, x, y)
    for offset, opacity in zip(STREAK_OFFSETS, STREAK_OPACITY, strict=True):
        ghost = shape_mask(shape, x - dx * offset, y - dy * offset) * opacity
        coverage = np.maximum(coverage, ghost)
    coverage = coverage[..., None]
    background = np.asarray(BACKGROUND, dtype=np.float32)
    return background * (1 - coverage) + np.asarray(COLOURS[colour], dtype=np.float32) * coverage


def render_clip(spec: ClipSpec, frames: int) -> np.ndarray:
    """(frames, SIZE, SIZE, 3) float32 clip in [0, 1]."""
    return np.stack([render_frame(spec.colour, spec.shape, spec.direction, *spec.position(t)) for t in range(frames)])


def sample_clips(seed: int, count: int, frames: int, trajectories: str = "free") -> tuple[list[ClipSpec], np.ndarray]:
    """`count` random clips, deterministic from `seed`: their specs and (count, frames, SIZE, SIZE, 3)."""
    rng = np.random.default_rng(seed)
    specs = [sample_spec(rng, trajectories) for _ in range(count)]
    return specs, np.stack([render_clip(spec, frames) for spec in specs])


# --- tracker -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class FrameTrack:
    colour: str | None  # the palette colour covering most pixels, None if nothing stands out
    area: float  # pixels of that colour
    x: float  # circular centroid, pixels (nan without a shape)
    y: float
    shape: str | None  # the template (square or circle of the blob's area) that overlaps the blob most


def classify_pixels(frame: np.ndarray) -> np.ndarray:
    """Index into [background, *COLOURS] of the nearest palette entry per pixel, (H, W)."""
    palette = np.asarray([BACKGROUND, *COLOURS.values()], dtype=np.float32)
    distances = ((frame[:, :, None, :] - palette[None, None]) ** 2).sum(-1)
    labels = distances.argmin(-1)
    # Pixels far from every palette entry (noise, blends) count as background.
    labels[distances.min(-1) > 0.12] = 0
    return labels


def _circular_mean(weights: np.ndarray) -> float:
    angles = (np.arange(weights.size) + 0.5) / weights.size * 2 * np.pi
    total = weights.sum()
    if total <= 0:
        return float("nan")
    angle = np.arctan2((weights * np.sin(angles)).sum(), (weights * np.cos(angles)).sum())
    return float((angle / (2 * np.pi) * weights.size - 0.5) % weights.size)


def track_frame(frame: np.ndarray, min_area: float = 20.0) -> FrameTrack:
    """Finds the dominant palette-coloured blob of one (H, W, 3) frame in [0, 1] (or uint8)."""
    if frame.dtype == np.uint8:
        frame = frame.astype(np.float32) / 255.0
    labels = classify_pixels(frame)
    counts = np.bincount(labels.ravel(), minlength=len(COLOURS) + 1)[1:]
    best = int(counts.argmax())
    if counts[best] < min_area:
        return FrameTrack(None, float(counts[best]), float("nan"), float("nan"), None)
    mask = labels == best + 1
    x = _circular_mean(mask.sum(0).astype(np.float64))
    y = _circular_mean(mask.sum(1).astype(np.float64))
    area = float(mask.sum())
    # Intersection over union with an ideal square and an ideal circle of the same area and centre.
    scores = {}
    for shape in SHAPES:
        template = shape_mask(shape, x, y, area)
        scores[shape] = np.minimum(template, mask).sum() / np.maximum(template, mask).sum()
    return FrameTrack(list(COLOURS)[best], area, x, y, max(scores, key=scores.get))


def wrapped_step(a: float, b: float) -> float:
    """Signed displacement from a to b on a circle of SIZE pixels."""
    return (b - a + SIZE / 2) % SIZE - SIZE / 2


@dataclass(frozen=True)
class ClipTrack:
    frames: list[FrameTrack]
    colour: str | None  # most common per-frame colour
    shape: str | None  # from the median fill ratio
    direction: str | None  # from the mean per-frame displacement
    velocity: tuple[float, float]  # mean (dx, dy) in pixels per frame
    found: float  # share of frames with a shape of `colour`


def track_clip(frames: np.ndarray) -> ClipTrack:
    """Tracks a (T, H, W, 3) clip: colour, shape kind and direction of motion."""
    return summarise_tracks([track_frame(frame) for frame in frames])


def summarise_tracks(tracks: list[FrameTrack]) -> ClipTrack:
    """Colour, shape kind and direction of motion of a clip from its frames' tracks."""
    colours = [t.colour for t in tracks if t.colour is not None]
    colour = max(set(colours), key=colours.count) if colours else None
    mine = [t for t in tracks if t.colour == colour and colour is not None]
    found = len(mine) / max(len(tracks), 1)
    kinds = [t.shape for t in mine]
    shape = max(set(kinds), key=kinds.count) if kinds else None
    steps = [
        (wrapped_step(a.x, b.x), wrapped_step(a.y, b.y))
        for a, b in zip(tracks[:-1], tracks[1:], strict=True)
        if a.colour == colour and b.colour == colour and colour is not None
    ]
    velocity = (float(np.mean([s[0] for s in steps])), float(np.mean([s[1] for s in steps]))) if steps else (0.0, 0.0)
    direction = None
    if max(abs(velocity[0]), abs(velocity[1])) >= 0.5:  # at least a quarter of the true speed
        if abs(velocity[0]) >= abs(velocity[1]):
            direction = "right" if velocity[0] > 0 else "left"
        else:
            direction = "down" if velocity[1] > 0 else "up"
    return ClipTrack(tracks, colour, shape, direction, velocity, found)
