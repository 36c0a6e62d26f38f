"""The one mp4 writer of the pack (the Save Video node and the command line): H.264 through PyAV."""

from __future__ import annotations

from collections.abc import Iterable
from fractions import Fraction

import numpy as np

DEFAULT_CRF = 19


def write_mp4(
    path: str, frames: Iterable[np.ndarray], width: int, height: int, fps: float, crf: int = DEFAULT_CRF
) -> int:
    """H.264 in yuv420p (plays everywhere). Returns the number of frames written."""
    import av

    rate = Fraction(fps).limit_denominator(1001)
    count = 0
    with av.open(path, mode="w") as container:
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
