"""The one mp4 writer of the pack (the Save Video node and the command line): H.264 through PyAV."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from fractions import Fraction
from typing import Any

import numpy as np

DEFAULT_CRF = 19


def write_mp4(
    path: str,
    frames: Iterable[np.ndarray],
    width: int,
    height: int,
    fps: float,
    crf: int = DEFAULT_CRF,
    metadata: Mapping[str, Any] | None = None,
) -> int:
    """H.264 in yuv420p (plays everywhere). Returns the number of frames written.

    metadata: tags written as JSON into the file's own metadata (ComfyUI's "prompt" and "workflow", which
    its front end reads back when the file is dropped on the canvas). The index goes to the front of the
    file, where the front end looks for them (in the first 64 MB) and where a browser can start playing."""
    import av

    rate = Fraction(fps).limit_denominator(1001)
    count = 0
    with av.open(path, mode="w", options={"movflags": "use_metadata_tags+faststart"}) as container:
        for key, value in (metadata or {}).items():
            container.metadata[key] = json.dumps(value)
        stream = container.add_stream("libx264", rate=rate)
        stream.width, stream.height = width + width % 2, height + height % 2  # yuv420p needs even sizes
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": str(crf), "preset": "medium"}
        for frame in frames:
            if frame.shape[0] != stream.height or frame.shape[1] != stream.width:
                frame = np.pad(
                    frame,
                    ((0, stream.height - frame.shape[0]), (0, stream.width - frame.shape[1]), (0, 0)),
                    mode="edge",
                )
            container.mux(stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")))
            count += 1
        container.mux(stream.encode(None))
    return count
