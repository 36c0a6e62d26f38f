"""Command line: generate a video without ComfyUI, or join a pool on another machine as a node agent.

    python -m distributed.cli generate --model assets/tiny-shapes-t2v --prompt "a red circle moving right" --frames 64
    python -m distributed.cli join HOST:PORT --token SECRET --devices cuda:all

Run it from the pack folder with the Python that has the pack's requirements (ComfyUI's, or .venv/bin/python).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import TextIO

from ..engine import choices
from ..engine.errors import JobCancelled, VideoInfinityError
from ..engine.job import JobSpec, ModelSpec
from ..engine.layout import FrameLayout, parse_shares
from ..engine.video_file import write_mp4
from ..pool import PoolConfig, ProgressEvent, WorkerError, WorkerPool
from ..pool.agent import run_agent


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return args.command(args)
    except VideoInfinityError as error:
        print(f"error: {error}", file=sys.stderr)
        if isinstance(error, WorkerError) and error.traceback_text and args.verbose:
            print(error.traceback_text, file=sys.stderr)
        return 1


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m distributed.cli", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(required=True, metavar="COMMAND")

    gen = commands.add_parser("generate", help="generate a video and write it as mp4")
    gen.set_defaults(command=generate)
    gen.add_argument("--model", required=True, help="diffusers text-to-video pipeline folder")
    gen.add_argument("--unet", help="UNet override: a diffusers folder or a .safetensors file")
    gen.add_argument("--dtype", default="fp32", choices=choices.DTYPES)
    text = gen.add_mutually_exclusive_group(required=True)
    text.add_argument("--prompt", help="one prompt for the whole video")
    text.add_argument("--schedule", type=Path, help="a file of 'first-last: prompt' lines")
    gen.add_argument("--negative-prompt", default="")
    gen.add_argument("--frames", type=int, required=True)
    model_default = "default: the model folder's video_infinity.json, else "
    gen.add_argument("--width", type=int, help=f"{model_default}{choices.DEFAULT_WIDTH}")
    gen.add_argument("--height", type=int, help=f"{model_default}{choices.DEFAULT_HEIGHT}")
    gen.add_argument("--steps", type=int, help=f"{model_default}{choices.DEFAULT_STEPS}")
    gen.add_argument("--cfg", type=float, help=f"{model_default}{choices.DEFAULT_CFG}")
    gen.add_argument("--seed", type=int, default=0)
    gen.add_argument("--sampler", choices=choices.SAMPLERS, help=f"{model_default}{choices.DEFAULT_SAMPLER}")
    gen.add_argument("--local-window", type=int, help="dual-scope attention: local half window P (frames)")
    gen.add_argument("--global-frames", type=int, help="dual-scope attention: global frames G")
    gen.add_argument(
        "--norm-window", type=int, help="frames per temporal GroupNorm's statistics (0 = whole video, default)"
    )
    where = gen.add_mutually_exclusive_group()
    where.add_argument("--workers", type=int, help="N workers: the first N GPUs, or N CPU workers without CUDA")
    where.add_argument(
        "--devices", help="'auto' (default: every GPU, else 2 CPU workers), 'cuda:all', 'cuda:0,1', 'cpu:2', ..."
    )
    gen.add_argument("--remote-workers", type=int, default=0, help="also wait for N ranks from node agents")
    gen.add_argument(
        "--frame-shares",
        default="",
        help="frames per worker in proportion, one number per worker in rank order, e.g. 3,1 for a fast and a slow "
        "GPU (default: even); the video is the same for any split",
    )
    gen.add_argument(
        "--token",
        default=os.environ.get(choices.TOKEN_ENV),
        help=f"shared secret for node agents (or ${choices.TOKEN_ENV})",
    )
    gen.add_argument("--host", default="127.0.0.1", help="address to listen on for node agents (default loopback)")
    gen.add_argument("--join-port", type=int, default=0, help="port for node agents (default: a free one)")
    gen.add_argument("--network-interface", help="network interface for gloo/NCCL traffic between machines")
    gen.add_argument(
        "--start-timeout",
        type=float,
        default=PoolConfig.start_timeout_s,
        help="seconds to wait for the workers (and node agents) to be ready (default %(default)s)",
    )
    gen.add_argument("--out", type=Path, default=Path("video.mp4"))
    gen.add_argument(
        "--fps",
        type=float,
        help=f"frame rate of the file and the model's fps input ({model_default}{choices.DEFAULT_FPS})",
    )
    gen.add_argument("--verbose", action="store_true", help="print a failing worker's traceback")

    join = commands.add_parser("join", help="contribute this machine's devices to a pool (node agent)")
    join.set_defaults(command=join_pool, verbose=False)
    join.add_argument("address", help="HOST:PORT the pool prints as its join address")
    join.add_argument(
        "--token", default=os.environ.get(choices.TOKEN_ENV), help=f"the pool's shared secret (or ${choices.TOKEN_ENV})"
    )
    join.add_argument("--devices", default=choices.AUTO_DEVICES, help="devices to contribute (default: auto)")
    join.add_argument(
        "--once", action="store_true", help="exit when the coordinator closes the connection instead of rejoining"
    )
    join.add_argument("--wait", type=float, default=60.0, help="seconds to keep trying to reach the pool")
    join.add_argument("--network-interface", help="network interface for gloo/NCCL traffic on this machine")
    return parser


def generate(args: argparse.Namespace) -> int:
    job = _job_from_args(args)
    config = PoolConfig(
        devices=args.devices or _devices_for_workers(args.workers),
        workers=args.workers,
        remote_workers=args.remote_workers,
        token=args.token,
        host=args.host,
        join_port=args.join_port,
        network_interface=args.network_interface,
        start_timeout_s=args.start_timeout,
    )
    workers = len(config.local_devices()) + args.remote_workers
    job.validate(workers)  # an impossible split is refused before any worker starts
    pool = WorkerPool(config)
    try:
        if pool.join_address:
            print(f"waiting for {args.remote_workers} remote worker(s) at {pool.join_address}", file=sys.stderr)
        where = ", ".join(config.local_devices()) + (f" + {args.remote_workers} remote" if args.remote_workers else "")
        if job.frame_shares:
            where += (
                " (frames per worker: "
                + "/".join(map(str, FrameLayout(job.frames, workers, job.frame_shares).counts))
                + ")"
            )
        print(
            f"generating {job.frames} frames at {job.width}x{job.height}, {job.sampler} {job.steps} steps, "
            f"cfg {job.cfg}, {job.fps} fps, seed {job.seed}, on {where}",
            file=sys.stderr,
        )
        bar = ProgressBar(sys.stderr)
        bar.note("starting workers")
        handle = pool.submit(job)
        try:
            while not handle.wait(0.1):
                bar.update(handle.poll_events())
        except KeyboardInterrupt:
            bar.note("cancelling")
            handle.cancel()
            handle.wait(60)
            bar.finish()
            print("cancelled", file=sys.stderr)
            return 130
        bar.update(handle.poll_events())
        bar.finish()
        try:
            frames = handle.result()
        except JobCancelled as cancelled:
            print(f"error: {cancelled}", file=sys.stderr)
            return 130
        _note_imbalance(pool)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        # The job that made it travels in the file, so the video can be made again.
        metadata = {"video_infinity_job": job.to_dict()}
        write_mp4(str(args.out), frames, frames.shape[2], frames.shape[1], job.fps, metadata=metadata)
        print(f"wrote {frames.shape[0]} frames ({frames.shape[2]}x{frames.shape[1]}) to {args.out}", file=sys.stderr)
        return 0
    finally:
        pool.shutdown()


def _note_imbalance(pool: WorkerPool) -> None:
    """Says when the workers computed for very different times, with the shares that would balance them."""
    note = pool.imbalance_note()
    shares = pool.balanced_shares()
    if note and shares:
        print(f"note: {note}; --frame-shares {','.join(map(str, shares))} balances them", file=sys.stderr)


def join_pool(args: argparse.Namespace) -> int:
    if not args.token:
        print(f"error: give the pool's token with --token or ${choices.TOKEN_ENV}", file=sys.stderr)
        return 2
    return run_agent(
        args.address,
        args.token,
        args.devices,
        once=args.once,
        connect_timeout_s=args.wait,
        log=lambda line: print(line, file=sys.stderr, flush=True),
        network_interface=args.network_interface,
    )


def _job_from_args(args: argparse.Namespace) -> JobSpec:
    """The job; size, sampler, steps, cfg, fps and attention settings not given come from the model, else the
    engine's defaults."""
    base = Path(args.model).resolve()
    model = ModelSpec(base=str(base), unet=args.unet and str(Path(args.unet).resolve()), dtype=args.dtype)
    settings = {name: getattr(args, name) for name in choices.MODEL_RECOMMENDED}
    settings = {**choices.recommended_settings(base), **{k: v for k, v in settings.items() if v is not None}}
    given = {
        "local_window": args.local_window,
        "global_frames": args.global_frames,
        "norm_window": args.norm_window,
    }
    attention = {**choices.recommended_attention(base), **{k: v for k, v in given.items() if v is not None}}
    prompt = args.schedule.read_text() if args.schedule else args.prompt
    return JobSpec.build(
        model,
        prompt,
        args.frames,
        negative_prompt=args.negative_prompt,
        seed=args.seed,
        attention=attention,
        frame_shares=parse_shares(args.frame_shares),
        **settings,
    )


def _devices_for_workers(workers: int | None) -> str:
    """--workers N without --devices: the first N GPUs, or N CPU workers without CUDA."""
    if workers is None or choices.gpu_count():
        return choices.AUTO_DEVICES
    return f"cpu:{workers}"


class ProgressBar:
    """One terminal line: phase, a bar for the denoising steps, and elapsed time."""

    WIDTH = 30

    def __init__(self, stream: TextIO):
        self.stream = stream
        self.began = time.monotonic()
        self.text = ""
        self.denoised = 0.0  # the bar shows the denoising steps, the longest phase

    def note(self, text: str) -> None:
        self._draw(text)

    def update(self, events: list[ProgressEvent]) -> None:
        for event in events:  # every event is drawn, so each step shows even when several arrive at once
            if event.phase == "denoising" and event.total:
                self.denoised = event.step / event.total
            filled = int(round(self.WIDTH * self.denoised))
            self._draw(f"[{'#' * filled}{'-' * (self.WIDTH - filled)}] {event.phase} {event.step}/{event.total}")

    def finish(self) -> None:
        self.stream.write("\n")
        self.stream.flush()

    def _draw(self, text: str) -> None:
        elapsed = time.monotonic() - self.began
        line = f"{text}  {elapsed:5.1f}s"
        pad = max(0, len(self.text) - len(line))
        self.stream.write("\r" + line + " " * pad)
        self.stream.flush()
        self.text = line


if __name__ == "__main__":
    sys.exit(main())
