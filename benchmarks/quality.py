"""Generation quality of the embedded tiny model (assets/tiny-shapes-t2v), measured with a shape tracker.

1. Prompt fidelity: 16-frame clips, one rank; the share whose tracked colour, shape kind and
   direction of motion match the prompt. The full run also scores the 42 prompts that leave colour or
   shape open, on the attributes they name.
2. Long videos split over several ranks (real gloo processes), for
   (a) independent clips, (b) local context only (G = 0), (c) full dual-scope attention (exact mode),
   (d) the same in reference mode, (e) (c) with GroupNorm statistics over 16-frame windows, (f) (c)
   without the phase bias, (g) (c) with the global keys favoured at every step:
   - seam ratio: median frame difference across rank borders / median frame difference elsewhere
     (1 = borders invisible); and, as the measure's own reach on the same video, the largest such ratio
     at the borders shifted by 1 .. F/N - 1 frames, where no rank border is. In exact mode the video is
     the same for any rank count, so its borders can show no more than these shifted positions do;
   - velocity jump: change of the tracked centroid velocity at borders vs elsewhere (pixels/frame);
   - colour drift: distance between the shape's mean colour in the first and the last frame (0-255 RGB);
   - colour spread over ranks: mean distance of each rank's shape colour from their mean (0-255 RGB),
     a continuous measure that also sees a red sliding to orange, which the palette tracker calls red;
   - on-prompt: share of frames where the tracker finds the prompted colour;
   - rank agreement, for prompts that leave colour, shape or direction open: the share of ranks whose
     clip shows the same colour / shape / direction as the first rank's. Only the other ranks' frames
     can make them agree, so this is what global context is for. `--open-frames` and `--open-ranks`
     make these videos longer and split them over more ranks than the named ones (e.g. 128 frames on
     8 ranks), so that local context alone has to carry a choice over more borders.

Writes a contact sheet (frames around every rank border) and an mp4 per case under
artifacts/quality/, and prints Markdown tables.

    python -m benchmarks.quality            # the full run (several minutes on 2 CPU cores)
    python -m benchmarks.quality --short    # the CI version
"""

from __future__ import annotations

import argparse
import json
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import imageio.v2 as imageio
import numpy as np
import torch

from distributed.engine.choices import DEFAULT_CFG, recommended_settings
from distributed.engine.comm import Communicator
from distributed.engine.job import JobSpec
from distributed.engine.layout import FrameLayout
from distributed.engine.runner import Engine
from distributed.engine.video_file import write_mp4
from support.local_ranks import run_on_local_ranks
from training import shapes_data as shapes

REPO = Path(__file__).resolve().parent.parent
MODEL = REPO / "assets" / "tiny-shapes-t2v"
OUT = REPO / "artifacts" / "quality"

# name -> attention settings on top of the defaults (P = 8, conv halo 4, phase bias on).
CASES: dict[str, dict[str, Any]] = {
    "a_independent": {"mode": "independent", "global_frames": 0},
    "b_local_only": {"mode": "exact", "global_frames": 0},
    "c_dual_scope": {"mode": "exact", "global_frames": 16},
    "d_reference": {"mode": "reference", "global_frames": 16},
    "e_norm_window": {"mode": "exact", "global_frames": 16, "norm_window": 16},
    # Without the phase bias both scopes share every step; with it, the global frames only act above
    # timestep 800, before this model settles a colour (it does so around 650 to 550).
    "f_no_phase_bias": {"mode": "exact", "global_frames": 16, "phase_bias": False},
    # The phase bias turned round for a model that settles colour late: global keys favoured (+3) at every
    # step, so the frames every rank sees weigh most while the colour is decided.
    "g_global_favoured": {"mode": "exact", "global_frames": 16, "phase_threshold": 0.0, "global_bias": 3.0},
}
CASE_LABELS = {
    "a_independent": "(a) independent clips",
    "b_local_only": "(b) local only, G=0",
    "c_dual_scope": "(c) dual-scope, exact",
    "d_reference": "(d) dual-scope, reference",
    "e_norm_window": "(e) dual-scope, exact, 16-frame GroupNorm window",
    "f_no_phase_bias": "(f) dual-scope, exact, no phase bias",
    "g_global_favoured": "(g) dual-scope, exact, global keys +3 at every step",
}


def make_job(model: Path, prompt: str, frames: int, seed: int, args: argparse.Namespace, **attention: Any) -> dict:
    return {
        "model": {"base": str(model), "unet": None, "dtype": "fp32"},
        "prompt": prompt,
        "frames": frames,
        "height": shapes.SIZE,
        "width": shapes.SIZE,
        "steps": args.steps,
        "cfg": args.cfg,
        "sampler": args.sampler,
        "seed": seed,
        "fps": shapes.FPS,
        "negative_prompt": "",
        "attention": attention,
    }


# --- prompt fidelity ---------------------------------------------------------------------------------


@dataclass
class FidelityResult:
    """Shares of clips whose tracked attribute is the one the prompt names, each over the clips whose prompt
    names it (nan when none does); all_named: every attribute the prompt names is right."""

    clips: int
    colour: float
    shape: float
    direction: float
    all_named: float
    seconds_per_clip: float
    # Over the clips whose prompt leaves the colour open: the share drawn in each colour (the tracker's
    # None: no colour found). A model that always picks one colour agrees with itself across ranks easily.
    open_colour_shares: dict[str, float]


def prompt_fidelity(model: Path, prompts: list[str], seeds: list[int], args: argparse.Namespace) -> FidelityResult:
    engine = Engine(Communicator.single("cpu"))
    hits, named = np.zeros(3), np.zeros(3)
    all_named = 0
    open_colours: Counter[str] = Counter()
    started = time.time()
    total = 0
    for seed in seeds:
        for prompt in prompts:
            video = engine.run(JobSpec.from_dict(make_job(model, prompt, 16, seed, args))).frames
            track = shapes.track_clip(video)
            want = shapes.parse_caption(prompt)
            got = (track.colour, track.shape, track.direction)
            asked = np.array([w is not None for w in want])
            matches = np.array([g == w for g, w in zip(got, want, strict=True)]) & asked
            hits += matches
            named += asked
            all_named += bool((matches == asked).all())
            if want[0] is None:
                open_colours[str(track.colour)] += 1
            total += 1
            if args.verbose:
                print(f"  seed {seed} {prompt!r}: tracked {got} v={track.velocity}", flush=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        rates = hits / named
    seconds = (time.time() - started) / max(total, 1)
    shares = colour_shares(open_colours)
    return FidelityResult(total, *rates.tolist(), all_named / max(total, 1), seconds, shares)


def colour_shares(counts: Counter[str]) -> dict[str, float]:
    """Every colour's share of the counted clips (colours never drawn included, at 0), most drawn first."""
    total = sum(counts.values())
    if not total:
        return {}
    shares = {colour: counts[colour] / total for colour in (*shapes.COLOURS, *counts)}
    return dict(sorted(shares.items(), key=lambda item: -item[1]))


def tracker_accuracy(count: int = 64) -> float:
    """The same measurement on real training clips: how often the tracker itself is right."""
    specs, clips = shapes.sample_clips(seed=123, count=count, frames=16)
    hits = 0
    for spec, clip in zip(specs, clips, strict=True):
        track = shapes.track_clip((clip * 255).round().astype(np.uint8))
        hits += (track.colour, track.shape, track.direction) == (spec.colour, spec.shape, spec.direction)
    return hits / count


# --- long videos ---------------------------------------------------------------------------------------


def run_jobs_on_rank(comm: Communicator, jobs: list[dict[str, Any]]) -> list[np.ndarray | None]:
    """Target for run_on_local_ranks: one engine per rank, every job in order; rank 0 gets the videos."""
    engine = Engine(comm)
    return [engine.run(JobSpec.from_dict(job)).frames for job in jobs]


def frame_differences(video: np.ndarray) -> np.ndarray:
    """Mean absolute difference between consecutive frames, (T-1,), in 0-255 units."""
    frames = video.astype(np.float32)
    return np.abs(frames[1:] - frames[:-1]).mean(axis=(1, 2, 3))


def shape_colour(frame: np.ndarray, track: shapes.FrameTrack) -> np.ndarray | None:
    """Mean RGB (0-255) of the pixels the tracker assigned to the shape."""
    if track.colour is None:
        return None
    labels = shapes.classify_pixels(frame.astype(np.float32) / 255.0)
    mask = labels == list(shapes.COLOURS).index(track.colour) + 1
    return frame[mask].astype(np.float32).mean(axis=0)


def clip_shape_colour(clip: np.ndarray, min_pixels: int = 20) -> np.ndarray | None:
    """Mean RGB (0-255) of the clearly coloured pixels of a (T, H, W, 3) uint8 clip, palette-free.

    A pixel counts when one channel is more than 115 levels off the background, which leaves out the
    faint motion streak and soft edges. None when no frame shows a shape.
    """
    background = np.asarray(shapes.BACKGROUND, np.float32) * 255
    colours = []
    for frame in clip.astype(np.float32):
        mask = np.abs(frame - background).max(axis=-1) > 115
        if mask.sum() >= min_pixels:
            colours.append(frame[mask].mean(axis=0))
    return np.mean(colours, axis=0) if colours else None


def rank_colour_spread(video: np.ndarray, layout: FrameLayout) -> float:
    """Mean distance (0-255 RGB) of each rank's shape colour from the mean over the ranks.

    A continuous measure of whether the ranks draw the same thing: the palette tracker calls orange
    "red" and so cannot see a colour that slides from red to orange along the video; this can.
    """
    spans = (layout.span(rank) for rank in range(layout.world_size))
    colours = [clip_shape_colour(video[a:b]) for a, b in spans]
    found = np.asarray([c for c in colours if c is not None])
    if len(found) < 2:
        return float("nan")
    return float(np.linalg.norm(found - found.mean(axis=0), axis=1).mean())


def rank_agreement(tracks: list[shapes.FrameTrack], layout: FrameLayout) -> dict[str, float]:
    """Share of ranks after the first whose clip has the first rank's colour, shape and direction.

    tracks: one per frame of the whole video.
    """
    spans = (layout.span(rank) for rank in range(layout.world_size))
    clips = [shapes.summarise_tracks(tracks[a:b]) for a, b in spans]
    first, rest = clips[0], clips[1:]
    return {
        f"agree_{name}": float(np.mean([getattr(t, name) == getattr(first, name) for t in rest]))
        for name in ("colour", "shape", "direction")
    }


def border_mask(differences: int, borders: list[int]) -> np.ndarray:
    """True at the frame difference across each border (between frames border - 1 and border)."""
    mask = np.zeros(differences, dtype=bool)
    mask[[border - 1 for border in borders]] = True
    return mask


def seam_ratio(diffs: np.ndarray, at_border: np.ndarray) -> float:
    return float(np.median(diffs[at_border]) / max(np.median(diffs[~at_border]), 1e-6))


def seam_metrics(
    video: np.ndarray, tracks: list[shapes.FrameTrack], borders: list[int], prompt: str
) -> dict[str, float]:
    """tracks: one per frame; borders: first global frame index of every rank after the first."""
    diffs = frame_differences(video)
    at_border = border_mask(len(diffs), borders)
    # An open colour is judged against the colour the video mostly shows.
    colour = shapes.parse_caption(prompt)[0] or shapes.summarise_tracks(tracks).colour
    velocities = np.array(
        [
            (shapes.wrapped_step(a.x, b.x), shapes.wrapped_step(a.y, b.y))
            if a.colour is not None and b.colour is not None
            else (np.nan, np.nan)
            for a, b in zip(tracks[:-1], tracks[1:], strict=True)
        ]
    )
    # jump[i] = |v[i+1] - v[i]|; a border step takes part in two of them.
    jumps = np.linalg.norm(velocities[1:] - velocities[:-1], axis=1)
    jump_at_border = np.zeros(len(jumps), dtype=bool)
    for border in borders:
        jump_at_border[max(border - 2, 0) : border] = True
    first = shape_colour(video[0], tracks[0])
    last = shape_colour(video[-1], tracks[-1])
    drift = float(np.linalg.norm(first - last)) if first is not None and last is not None else float("nan")
    gap = min(b - a for a, b in zip([0, *borders], [*borders, len(video)], strict=True))
    shifted = [
        seam_ratio(diffs, border_mask(len(diffs), [b + shift for b in borders if b + shift < len(video)]))
        for shift in range(1, gap)
    ]
    return {
        "seam_ratio": seam_ratio(diffs, at_border),
        "seam_ratio_shifted": max(shifted, default=float("nan")),
        "jump_border": float(np.nanmean(jumps[jump_at_border])) if np.isfinite(jumps[jump_at_border]).any() else np.nan,
        "jump_elsewhere": float(np.nanmean(jumps[~jump_at_border]))
        if np.isfinite(jumps[~jump_at_border]).any()
        else np.nan,
        "colour_drift": drift,
        "on_prompt": float(np.mean([t.colour == colour for t in tracks])),
        "speed": float(np.nanmedian(np.linalg.norm(velocities, axis=1))) if np.isfinite(velocities).any() else np.nan,
    }


def upscale(frame: np.ndarray, factor: int) -> np.ndarray:
    return frame.repeat(factor, axis=0).repeat(factor, axis=1)


def contact_sheet(video: np.ndarray, borders: list[int], path: Path, span: int = 4, factor: int = 2) -> None:
    """One row per rank border: `span` frames before it, a red bar, `span` frames after it."""
    size = video.shape[1] * factor
    gap, bar = 2, 4
    rows = []
    for border in borders:
        pieces: list[np.ndarray] = []
        for index in range(border - span, border + span):
            if index == border:
                pieces.append(np.tile(np.array([220, 30, 30], np.uint8), (size, bar, 1)))
            elif pieces:
                pieces.append(np.full((size, gap, 3), 255, np.uint8))
            pieces.append(upscale(video[index % len(video)], factor))
        rows.append(np.concatenate(pieces, axis=1))
        rows.append(np.full((gap * 2, rows[-1].shape[1], 3), 255, np.uint8))
    imageio.imwrite(path, np.concatenate(rows[:-1], axis=0))


def write_upscaled_mp4(video: np.ndarray, path: Path, fps: int = shapes.FPS, factor: int = 4) -> None:
    frames = [upscale(frame, factor) for frame in video]
    write_mp4(str(path), frames, frames[0].shape[1], frames[0].shape[0], fps)


@dataclass(frozen=True)
class VideoSplit:
    frames: int
    ranks: int

    def __str__(self) -> str:
        return f"{self.frames} frames on {self.ranks} ranks"


def long_videos(
    model: Path, prompts: list[tuple[str, int]], split: VideoSplit, args: argparse.Namespace
) -> tuple[dict[tuple[str, str, int], dict[str, float]], dict[tuple[str, str, int], np.ndarray], float]:
    """Every case on every (prompt, seed): metrics and video per (case, prompt, seed), seconds per video.

    With --exact-on-one-rank, exact-mode cases are made on one rank and read with the split's borders: the
    same videos (exact mode does not depend on the rank count, which --same-on-one-rank checks), in less
    time on a machine with fewer cores than ranks."""
    keys_by_ranks: dict[int, list[tuple[str, str, int]]] = {}
    for case in args.cases:
        ranks = 1 if args.exact_on_one_rank and CASES[case]["mode"] == "exact" else split.ranks
        keys_by_ranks.setdefault(ranks, []).extend((case, prompt, seed) for prompt, seed in prompts)
    started = time.time()
    by_key = {}
    for ranks, keys in keys_by_ranks.items():
        jobs = [make_job(model, prompt, split.frames, seed, args, **CASES[case]) for case, prompt, seed in keys]
        videos = run_on_local_ranks(ranks, run_jobs_on_rank, {"jobs": jobs}, timeout=7200.0)[0]
        by_key |= dict(zip(keys, videos, strict=True))
    seconds = (time.time() - started) / len(by_key)
    layout = FrameLayout(split.frames, split.ranks)
    borders = list(layout.starts[1:])
    metrics = {}
    for key, video in by_key.items():
        tracks = [shapes.track_frame(frame) for frame in video]
        metrics[key] = {
            **seam_metrics(video, tracks, borders, key[1]),
            **rank_agreement(tracks, layout),
            "colour_spread": rank_colour_spread(video, layout),
        }
    return metrics, by_key, seconds


def one_rank_gaps(
    model: Path,
    prompts: list[tuple[str, int]],
    split: VideoSplit,
    args: argparse.Namespace,
    videos: dict[tuple[str, str, int], np.ndarray],
) -> dict[str, float]:
    """Every exact-mode video of the split made again on one rank: the largest |pixel difference| per case.

    Exact mode computes the same video for any number of ranks, so what a rank border shows there (seam
    ratio, colour spread over ranks) is the content at those frames, not a seam the split made."""
    exact = [case for case in args.cases if CASES[case]["mode"] == "exact"]
    keys = [(case, prompt, seed) for case in exact for prompt, seed in prompts]
    jobs = [make_job(model, prompt, split.frames, seed, args, **CASES[case]) for case, prompt, seed in keys]
    if not jobs:
        return {}
    alone = run_on_local_ranks(1, run_jobs_on_rank, {"jobs": jobs}, timeout=7200.0)[0]
    gaps: dict[str, float] = {}
    for key, video in zip(keys, alone, strict=True):
        gap = float(np.abs(video.astype(np.int16) - videos[key]).max())
        gaps[key[0]] = max(gaps.get(key[0], 0.0), gap)
    return gaps


def pictures(
    by_key: dict[tuple[str, str, int], np.ndarray], prompts: list[tuple[str, int]], split: VideoSplit, out: Path
) -> float:
    """Contact sheets and mp4s of the first prompt per case; returns the mean exact-vs-reference gap."""
    cases = list(dict.fromkeys(c for c, _, _ in by_key))
    borders = list(FrameLayout(split.frames, split.ranks).starts[1:])
    first_prompt, first_seed = prompts[0]
    for case in cases:
        video = by_key[(case, first_prompt, first_seed)]
        contact_sheet(video, borders, out / f"{case}_border.png")
        write_upscaled_mp4(video, out / f"{case}.mp4")
    # Exact vs reference: how far the reference code's quirks move the very same job.
    gaps = [
        float(np.abs(by_key[("c_dual_scope", p, s)].astype(np.float32) - by_key[("d_reference", p, s)]).mean())
        for p, s in prompts
        if ("c_dual_scope", p, s) in by_key and ("d_reference", p, s) in by_key
    ]
    # All four cases at the first border, one under the other, for the README.
    first = borders[0]
    rows = [
        np.concatenate(
            [upscale(by_key[(c, first_prompt, first_seed)][i], 2) for i in range(first - 4, first + 4)], axis=1
        )
        for c in cases
    ]
    imageio.imwrite(out / "cases_first_border.png", np.concatenate(rows, axis=0))
    return float(np.mean(gaps)) if gaps else float("nan")


def summarise(
    metrics: dict[tuple[str, str, int], dict[str, float]], prompts: list[tuple[str, int]]
) -> dict[str, dict[str, float]]:
    """Mean of every metric per case over the given (prompt, seed) pairs, and the worst video's seam ratio
    (both kinds) and colour spread."""
    wanted = set(prompts)
    summary = {}
    for case in dict.fromkeys(c for c, _, _ in metrics):
        rows = [m for (c, p, s), m in metrics.items() if c == case and (p, s) in wanted]
        if not rows:
            continue
        summary[case] = {name: float(np.nanmean([r[name] for r in rows])) for name in rows[0]}
        for name in WORST_OF:
            summary[case][f"worst_{name}"] = float(np.nanmax([r[name] for r in rows]))
    return summary


WORST_NAMED = ("seam_ratio", "colour_spread")  # the metrics whose worst video is named (worst_videos)
WORST_OF = (*WORST_NAMED, "seam_ratio_shifted")


def worst_videos(metrics: dict[tuple[str, str, int], dict[str, float]]) -> dict[str, dict[str, tuple[str, int, float]]]:
    """Per case, the (prompt, seed, value) of the video with the highest seam ratio and colour spread: the
    consistency targets hold per video, so the one that misses is what to look at."""
    worst: dict[str, dict[str, tuple[str, int, float]]] = {}
    for (case, prompt, seed), m in metrics.items():
        for name in WORST_NAMED:
            value = m[name]
            held = worst.setdefault(case, {}).get(name)
            if np.isfinite(value) and (held is None or value > held[2]):
                worst[case][name] = (prompt, seed, value)
    return worst


class Variant(NamedTuple):
    """A case's settings with some changed: its name in CASES, its table label, its attention settings."""

    name: str
    label: str
    settings: dict[str, Any]


def parse_variant(text: str) -> Variant:
    """'BASE:key=value,key=value' -> BASE's settings with the overrides.

    A way to measure a setting without adding a case to CASES; the name and label carry the overrides."""
    base, _, overrides = text.partition(":")
    if base not in CASES or not overrides:
        raise ValueError(f"--variant {text!r}: write BASE:key=value[,key=value] with BASE one of {list(CASES)}")
    settings = dict(CASES[base])
    for item in overrides.split(","):
        key, _, value = item.partition("=")
        if not key or not value:
            raise ValueError(f"--variant {text!r}: {item!r} is not key=value")
        settings[key.strip()] = _setting_value(value.strip())
    letter = CASE_LABELS[base].partition(")")[0] + ")"
    return Variant(f"{base}+{overrides}", f"{letter} with {overrides}", settings)


def _setting_value(text: str) -> Any:
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


# --- report ----------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=str(MODEL))
    parser.add_argument("--out", default=str(OUT))
    parser.add_argument("--short", action="store_true", help="a quick version for CI")
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--cfg", type=float, default=None, help="guidance (default: the model's recommended)")
    parser.add_argument("--sampler", default="ddim", choices=["ddim", "dpmpp_2m", "sde_dpmpp"])
    parser.add_argument("--frames", type=int, default=None, help="long video length (default 64, short 32)")
    parser.add_argument("--ranks", type=int, default=4)
    parser.add_argument("--seeds", type=int, default=None, help="seeds per fidelity prompt (default 2, short 1)")
    parser.add_argument("--named-seeds", type=int, default=2, help="seeds per named long-video prompt")
    parser.add_argument("--first-seed", type=int, default=0, help="first seed of the long videos (others follow)")
    parser.add_argument("--skip-fidelity", action="store_true", help="long videos only")
    parser.add_argument("--open-seeds", type=int, default=2, help="seeds per open long-video prompt")
    parser.add_argument("--open-frames", type=int, default=None, help="open-prompt video length (default: --frames)")
    parser.add_argument("--open-ranks", type=int, default=None, help="ranks for open prompts (default: --ranks)")
    parser.add_argument("--cases", default=",".join(CASES), help=f"comma-separated subset of {list(CASES)}")
    parser.add_argument(
        "--same-on-one-rank",
        action="store_true",
        help="make every exact-mode long video again on one rank and report the largest pixel difference",
    )
    parser.add_argument(
        "--exact-on-one-rank",
        action="store_true",
        help="make exact-mode long videos on one rank (the same videos, faster where cores are few)",
    )
    parser.add_argument(
        "--variant",
        action="append",
        default=[],
        metavar="BASE:key=value,...",
        help="also run a case's settings with some changed, e.g. g_global_favoured:global_bias=5 (repeatable)",
    )
    parser.add_argument("--verbose", action="store_true")
    args = parser.parse_args(argv)
    args.cases = [case.strip() for case in args.cases.split(",") if case.strip()]
    for text in args.variant:
        try:
            variant = parse_variant(text)
        except ValueError as error:
            parser.error(str(error))
        CASES[variant.name], CASE_LABELS[variant.name] = variant.settings, variant.label
        args.cases.append(variant.name)
    unknown = sorted(set(args.cases) - set(CASES))
    if unknown or not args.cases:
        parser.error(f"unknown cases {unknown}; choose from {list(CASES)}")
    if args.exact_on_one_rank and args.same_on_one_rank:
        parser.error("--same-on-one-rank compares with the split's ranks; leave out --exact-on-one-rank")
    if args.frames is None:
        args.frames = 32 if args.short else 64
    if args.open_frames is None:
        args.open_frames = args.frames
    if args.open_ranks is None:
        args.open_ranks = args.ranks
    if args.seeds is None:
        args.seeds = 1 if args.short else 2
    if args.cfg is None:
        args.cfg = float(recommended_settings(args.model).get("cfg", DEFAULT_CFG))
    if args.short:
        args.steps = min(args.steps, 15)
    return args


def open_fidelity_prompts() -> list[str]:
    """Every caption that leaves colour or shape open but names at least one attribute (42)."""
    return [c for c in shapes.open_captions() if c not in shapes.all_captions() and any(shapes.parse_caption(c))]


def fidelity_prompts(short: bool) -> list[str]:
    captions = shapes.all_captions()
    if short:
        # One caption per colour, covering both shapes and all four directions.
        return [captions[i] for i in (0, 13, 18, 31)]
    return captions


# Prompts naming all three attributes: seams and motion.
NAMED_PROMPTS = ["a red square moving right", "a blue circle moving down", "a yellow circle moving left"]
# Prompts leaving attributes open: whether the ranks agree on them (several seeds each).
OPEN_PROMPTS = ["a shape moving right", "a circle moving down", "a red shape"]


def long_prompts(args: argparse.Namespace) -> tuple[list[tuple[str, int]], list[tuple[str, int]]]:
    if args.short:
        return [(NAMED_PROMPTS[0], 0)], [(OPEN_PROMPTS[0], 0)]
    first = args.first_seed
    named = [(p, seed) for p in NAMED_PROMPTS for seed in range(first, first + args.named_seeds)]
    return named, [(p, seed) for p in OPEN_PROMPTS for seed in range(first, first + args.open_seeds)]


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    torch.set_num_threads(1)
    model, out = Path(args.model), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.time()

    fidelity = (
        None
        if args.skip_fidelity
        else prompt_fidelity(model, fidelity_prompts(args.short), list(range(args.seeds)), args)
    )
    # Prompts that leave attributes open: does the model still follow the ones they name? (full run only)
    open_fidelity = (
        None if args.skip_fidelity or args.short else prompt_fidelity(model, open_fidelity_prompts(), [0], args)
    )
    named, open_ = long_prompts(args)
    named_split, open_split = VideoSplit(args.frames, args.ranks), VideoSplit(args.open_frames, args.open_ranks)
    # One set of rank processes per split: with the default, named and open prompts share one.
    prompts_by_split: dict[VideoSplit, list[tuple[str, int]]] = {}
    for split, prompts in ((named_split, named), (open_split, open_)):
        if prompts:  # --named-seeds 0 or --open-seeds 0 leave a kind out
            prompts_by_split.setdefault(split, []).extend(prompts)
    metrics, videos, seconds, gaps = {}, {}, {}, {}
    for split, prompts in prompts_by_split.items():
        split_metrics, split_videos, seconds[split] = long_videos(model, prompts, split, args)
        metrics |= split_metrics
        videos |= split_videos
        if args.same_on_one_rank and split.ranks > 1:
            gaps[split] = one_rank_gaps(model, prompts, split, args, split_videos)
    extra = {
        "exact_vs_reference_mean_abs": pictures(videos, named, named_split, out) if named else float("nan"),
        "seconds_per_video": seconds.get(named_split, float("nan")),
        "seconds_per_open_video": seconds.get(open_split, float("nan")),
        "tracker_accuracy": None if args.skip_fidelity else tracker_accuracy(32 if args.short else 64),
    }
    cases, open_cases = summarise(metrics, named), summarise(metrics, open_)

    settings = f"{args.sampler}, {args.steps} steps, cfg {args.cfg}, 64x64, fps {shapes.FPS}"
    if fidelity is not None:
        print(f"\n### Prompt fidelity (16-frame clips, 1 rank; {settings})\n")
        print("| prompts | clips | colour | shape | direction | all named | s/clip |")
        print("|---|---|---|---|---|---|---|")
        for label, result in (("naming all three", fidelity), ("leaving some open (seed 0)", open_fidelity)):
            if result is not None:
                print(
                    f"| {label} | {result.clips} | {result.colour:.2f} | {result.shape:.2f} "
                    f"| {result.direction:.2f} | {result.all_named:.2f} | {result.seconds_per_clip:.1f} |"
                )
        if open_fidelity is not None and open_fidelity.open_colour_shares:
            drawn = ", ".join(f"{c} {share:.2f}" for c, share in open_fidelity.open_colour_shares.items())
            print(f"\nColours drawn when the prompt leaves the colour open (seed 0): {drawn}.")
        print(
            f"\nThe tracker on {32 if args.short else 64} real training clips: "
            f"{extra['tracker_accuracy']:.2f} all three right."
        )
    print(f"\n### Long videos, named prompts ({named_split}, {len(named)} video(s))\n")
    print(
        "| case | seam ratio (worst) | at shifted positions (worst) | velocity jump at borders | elsewhere "
        "| colour drift | colour spread over ranks (worst) | on-prompt frames | speed px/frame |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for case, m in cases.items():
        print(
            f"| {CASE_LABELS[case]} | {m['seam_ratio']:.2f} ({m['worst_seam_ratio']:.2f}) "
            f"| {m['seam_ratio_shifted']:.2f} ({m['worst_seam_ratio_shifted']:.2f}) | {m['jump_border']:.2f} "
            f"| {m['jump_elsewhere']:.2f} | {m['colour_drift']:.1f} | {m['colour_spread']:.1f} "
            f"({m['worst_colour_spread']:.1f}) | {m['on_prompt']:.2f} | {m['speed']:.2f} |"
        )
    open_names = ", ".join(sorted({p for p, _ in open_}))
    print(f"\n### Long videos, open prompts ({open_split}, {len(open_)} video(s): {open_names})\n")
    print(
        "| case | ranks agreeing on colour | on shape | on direction | colour spread over ranks (worst) "
        "| seam ratio (worst) | at shifted positions (worst) | colour drift |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for case, m in open_cases.items():
        print(
            f"| {CASE_LABELS[case]} | {m['agree_colour']:.2f} | {m['agree_shape']:.2f} | {m['agree_direction']:.2f} "
            f"| {m['colour_spread']:.1f} ({m['worst_colour_spread']:.1f}) | {m['seam_ratio']:.2f} "
            f"({m['worst_seam_ratio']:.2f}) | {m['seam_ratio_shifted']:.2f} ({m['worst_seam_ratio_shifted']:.2f}) "
            f"| {m['colour_drift']:.1f} |"
        )
    for case, by_metric in worst_videos(metrics).items():
        named_worst = ", ".join(
            f"{name.replace('_', ' ')} {value:.2f} ({prompt!r}, seed {seed})"
            for name, (prompt, seed, value) in by_metric.items()
        )
        print(f"\nWorst videos of {CASE_LABELS[case]}: {named_worst}.")
    for split, by_case in gaps.items():
        for case, gap in by_case.items():
            print(
                f"\n{CASE_LABELS[case]}, {split}, every video made again on 1 rank: "
                f"largest |pixel difference| {gap:.0f} / 255."
            )
    print()
    if not np.isnan(extra["exact_vs_reference_mean_abs"]):
        print(
            f"Exact vs reference mode, same job: mean |pixel difference| {extra['exact_vs_reference_mean_abs']:.1f} / 255."
        )
    timings = [
        f"{extra[key]:.0f} s per {kind} video"
        for key, kind in (("seconds_per_video", "named"), ("seconds_per_open_video", "open"))
        if not np.isnan(extra[key])
    ]
    sentences = [" and ".join(timings)] if timings else []
    print(". ".join([*sentences, f"Total {time.time() - started:.0f} s"]) + ".")
    print(f"Contact sheets and mp4s: {out}/")
    report = {
        "fidelity": fidelity.__dict__ if fidelity is not None else None,
        "open_fidelity": open_fidelity.__dict__ if open_fidelity is not None else None,
        "cases": cases,
        "open_cases": open_cases,
        "videos": {f"{c} | {p} | seed {s}": m for (c, p, s), m in metrics.items()},
        "one_rank_gaps": {str(split): by_case for split, by_case in gaps.items()},
        **extra,
        "args": vars(args),
    }
    (out / "quality.json").write_text(json.dumps(report, indent=2) + "\n")
    return report


if __name__ == "__main__":
    main()
