"""Save Video (Video-Infinity): writes an mp4 frame by frame, never holding a float32 copy of the video."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import numpy as np

from ..distributed.engine.video_file import write_mp4
from .api import CATEGORY, Frames, io, ui
from .values import VideoFrames


def _inside_output(prefix: str) -> bool:
    """Whether files named by `prefix` land in the output folder (ComfyUI refuses the rest when saving)."""
    import folder_paths

    output = os.path.realpath(folder_paths.get_output_directory())
    target = os.path.realpath(os.path.join(output, os.path.normpath(prefix)))
    return os.path.commonpath([output, target]) == output


def _uint8_frames(video: VideoFrames | None, images) -> tuple[Iterator[np.ndarray], int, int, int]:
    """Yields frames one at a time as uint8 (H, W, 3), from our uint8 frames or from a float IMAGE batch."""
    if video is not None:
        data = video.frames
        return iter(data), data.shape[0], data.shape[1], data.shape[2]

    def convert():
        import torch

        for index in range(images.shape[0]):  # one frame at a time: no second full-size copy
            yield (images[index].clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()

    return convert(), images.shape[0], images.shape[1], images.shape[2]


class SaveVideo(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="VideoInfinitySaveVideo",
            display_name="Save Video (Video-Infinity)",
            category=CATEGORY,
            description="Writes an H.264 mp4 into ComfyUI's output folder, streaming frame by frame so long "
            "videos do not need a float32 copy in memory.",
            inputs=[
                Frames.Input(
                    "video_frames",
                    optional=True,
                    tooltip="uint8 frames from the Clip-Parallel Sampler (preferred for long videos).",
                ),
                io.Image.Input(
                    "images", optional=True, tooltip="Or any IMAGE batch (converted to uint8 one frame at a time)."
                ),
                io.Float.Input(
                    "fps",
                    default=8.0,
                    min=0.1,
                    max=120.0,
                    step=0.1,
                    tooltip="Frame rate for an IMAGE batch; video_frames carry their own.",
                ),
                io.String.Input(
                    "filename_prefix",
                    default="video-infinity/video",
                    tooltip="File name prefix inside ComfyUI's output folder; may contain subfolders.",
                ),
                io.Int.Input(
                    "crf",
                    default=19,
                    min=0,
                    max=51,
                    tooltip="H.264 quality: lower is better and larger (0 lossless, 19 good, 28 small).",
                ),
            ],
            outputs=[io.String.Output(display_name="path", tooltip="Absolute path of the written mp4.")],
            hidden=[io.Hidden.prompt, io.Hidden.extra_pnginfo],
            is_output_node=True,
        )

    @classmethod
    def validate_inputs(cls, filename_prefix: str) -> bool | str:
        if filename_prefix is None:
            return True  # fed by a link: checked when it runs
        if not filename_prefix.strip():
            return "filename_prefix is empty; give a name such as 'video-infinity/video'"
        if not _inside_output(filename_prefix):
            return (
                f"filename_prefix {filename_prefix!r} points outside ComfyUI's output folder; use a name or a "
                "subfolder inside it, such as 'video-infinity/video'"
            )
        return True

    @classmethod
    def _workflow_metadata(cls) -> dict[str, Any] | None:
        """The graph and the queued prompt, as core Save Video embeds them (unless --disable-metadata), so the
        mp4 dropped on ComfyUI's canvas opens the workflow that made it."""
        from comfy.cli_args import args

        if args.disable_metadata:
            return None
        metadata = dict(cls.hidden.extra_pnginfo or {})  # {"workflow": ...} when queued from the editor
        if cls.hidden.prompt is not None:
            metadata["prompt"] = cls.hidden.prompt
        return metadata or None

    @classmethod
    def execute(
        cls, fps: float, filename_prefix: str, crf: int, video_frames: VideoFrames | None = None, images=None
    ) -> io.NodeOutput:
        import folder_paths

        if video_frames is None and images is None:
            raise ValueError("Save Video (Video-Infinity) got no frames: connect video_frames or images")
        frames, count, height, width = _uint8_frames(video_frames, images)
        rate = video_frames.fps if video_frames is not None else fps
        output = folder_paths.get_output_directory()
        folder, name, counter, subfolder, _ = folder_paths.get_save_image_path(filename_prefix, output, width, height)
        os.makedirs(folder, exist_ok=True)
        filename = f"{name}_{counter:05}_.mp4"  # the trailing "_" is what ComfyUI's counter scan expects
        path = os.path.join(folder, filename)
        written = write_mp4(path, frames, width, height, rate, crf, cls._workflow_metadata())
        if written != count:
            raise RuntimeError(f"wrote {written} of {count} frames to {path}")
        saved = ui.SavedResult(filename, subfolder, io.FolderType.output)
        return io.NodeOutput(path, ui=ui.PreviewVideo([saved]))
