"""Prompt schedules on the global frame timeline, realised as per-frame text conditioning."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import torch

from .errors import InvalidSettingsError

_LINE = re.compile(r"^\s*(\d+)\s*-\s*(\d+)\s*:\s*(.+?)\s*$")


@dataclass(frozen=True)
class PromptSegment:
    start: int  # first frame, inclusive
    end: int  # last frame, inclusive
    prompt: str


def parse_schedule(schedule: Any, frames: int) -> tuple[PromptSegment, ...]:
    """Accepts a plain prompt, lines of 'a-b: prompt', or a list of segments (dicts or PromptSegment).

    The segments must cover frames 0..frames-1 exactly once, in order.
    """
    if isinstance(schedule, str):
        lines = [line for line in schedule.strip().splitlines() if line.strip()]
        if not lines:
            raise InvalidSettingsError("the prompt is empty; write what the video should show")
        if not any(_LINE.match(line) for line in lines):
            return (PromptSegment(0, frames - 1, schedule.strip()),)
        segments = []
        for number, line in enumerate(lines, 1):
            match = _LINE.match(line)
            if not match:
                raise InvalidSettingsError(
                    f"prompt schedule line {number} ({line.strip()!r}) is not 'first-last: prompt', e.g. '0-47: a red ball'"
                )
            segments.append(PromptSegment(int(match[1]), int(match[2]), match[3]))
    else:
        segments = [s if isinstance(s, PromptSegment) else PromptSegment(**s) for s in schedule]
    if not segments:
        raise InvalidSettingsError("the prompt schedule is empty; give at least one 'first-last: prompt' line")
    expected = 0
    for segment in segments:
        label = f"segment {segment.start}-{segment.end}"
        if not segment.prompt.strip():
            raise InvalidSettingsError(f"{label} has an empty prompt")
        if segment.end < segment.start:
            raise InvalidSettingsError(f"{label} ends before it starts")
        if segment.start > expected:
            raise InvalidSettingsError(
                f"the prompt schedule leaves frames {expected}-{segment.start - 1} without a prompt; "
                f"start {label} at frame {expected}"
            )
        if segment.start < expected:
            raise InvalidSettingsError(
                f"{label} overlaps the previous segment (which covers up to frame {expected - 1}); "
                f"start it at frame {expected}"
            )
        expected = segment.end + 1
    if expected != frames:
        raise InvalidSettingsError(
            f"the prompt schedule covers frames 0-{expected - 1} but the video has {frames} frames (0-{frames - 1}); "
            f"make the last segment end at frame {frames - 1}"
        )
    return tuple(segments)


def frame_weights(segments: tuple[PromptSegment, ...], frames: range, blend: int) -> torch.Tensor:
    """Weights (len(frames), len(segments)) of each segment's embedding for each global frame.

    With blend > 0, the `blend` frames on each side of a border cross-fade linearly between the two
    segments; the weights depend only on the global frame index, never on the rank split.
    """
    weights = torch.zeros(len(frames), len(segments), dtype=torch.float64)
    for row, frame in enumerate(frames):
        for index, segment in enumerate(segments):
            if segment.start <= frame <= segment.end:
                weights[row, index] = 1.0
        if blend <= 0:
            continue
        for index in range(len(segments) - 1):
            border = segments[index].end + 0.5  # between the last frame of one and the first of the next
            distance = frame - border
            if abs(distance) < blend:
                share_next = 0.5 + distance / (2 * blend)
                weights[row] = 0.0
                weights[row, index] = 1.0 - share_next
                weights[row, index + 1] = share_next
    return weights
