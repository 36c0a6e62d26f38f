"""Worker Pool and Unload nodes."""

from __future__ import annotations

import os
from typing import Any

from ..distributed.engine import choices
from ..distributed.engine.choices import AUTO_DEVICES
from ..distributed.engine.layout import check_shares, parse_shares
from . import devices, pool_access
from .api import CATEGORY, Pool, io, ui
from .validation import given, validate_node
from .values import PoolChoice, asks_for_measured_shares


class WorkerPool(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="VideoInfinityWorkerPool",
            display_name="Worker Pool (Video-Infinity)",
            category=CATEGORY,
            description="Where the clips are computed: one worker process per device, each denoising its own "
            "contiguous range of frames. Workers stay warm between queue items.",
            inputs=[
                io.String.Input(
                    "devices",
                    default="auto",
                    tooltip="'auto' (every GPU, else 2 CPU workers), 'cuda:all', a list such as 'cuda:0,cuda:1', "
                    "or 'cpu:N' for N CPU workers. One worker per GPU.",
                ),
                io.Boolean.Input(
                    "keep_warm",
                    default=True,
                    tooltip="Keep workers and the loaded model in memory after the job (fast next run). "
                    "Off: stop the workers after each video and free their memory.",
                ),
                io.Float.Input(
                    "timeout_s",
                    default=choices.DEFAULT_COLLECTIVE_TIMEOUT_S,
                    min=10.0,
                    max=86400.0,
                    step=10.0,
                    tooltip="Seconds a worker may wait for the others inside one exchange before the job fails, naming "
                    "the worker that did not come. Dead or stopped workers are found within seconds anyway; raise it "
                    "when one machine loads the model much slower than the others. Changing it restarts the workers.",
                ),
                io.Float.Input(
                    "job_timeout_s",
                    default=0.0,
                    min=0.0,
                    max=604800.0,
                    step=60.0,
                    optional=True,
                    tooltip="Seconds the sampler waits for a video before cancelling it (0: no limit). Changing it "
                    "keeps the warm workers.",
                ),
                io.Int.Input(
                    "remote_workers",
                    default=0,
                    min=0,
                    max=choices.MAX_REMOTE_WORKERS,
                    optional=True,
                    tooltip="Workers on other machines, added by node agents that join this pool "
                    "('python -m distributed.cli join HOST:PORT' there, with the same token). 0: this machine only. "
                    f"The token comes from ${choices.TOKEN_ENV} in the ComfyUI server's environment.",
                ),
                io.String.Input(
                    "join_address",
                    default=PoolChoice.join_address,
                    optional=True,
                    tooltip="HOST:PORT of this machine where node agents connect (with remote_workers > 0). Use an "
                    "address on a network you trust: the process group's own traffic is not encrypted.",
                ),
                io.String.Input(
                    "frame_shares",
                    default="",
                    optional=True,
                    tooltip="How the frames are split over mismatched devices: one number per worker in rank order "
                    "(local devices, then remote workers), e.g. '3,1' gives the first worker three times the frames "
                    "of the second. 'auto': each job splits by the workers' speeds measured on the jobs before it "
                    "(the first is even). Empty: an even split. The video is the same for any split.",
                ),
            ],
            outputs=[Pool.Output(display_name="pool", tooltip="The device layout, for the Clip-Parallel Sampler.")],
        )

    @classmethod
    def validate_inputs(cls, **values: Any) -> bool:
        known = given(values)  # None: fed by a link, checked when it runs

        def check() -> None:
            if "devices" in known:
                _resolve(known["devices"])
            if known.get("remote_workers"):
                address = known.get("join_address", PoolChoice.join_address)
                _check_remote(PoolChoice(AUTO_DEVICES, remote_workers=known["remote_workers"], join_address=address))
            if known.get("frame_shares") and not asks_for_measured_shares(known["frame_shares"]):
                shares = parse_shares(known["frame_shares"])
                remote = values.get("remote_workers", 0)  # None: fed by a link
                if "devices" in known and remote is not None:
                    check_shares(shares, len(_resolve(known["devices"])) + remote)

        return validate_node(cls, values, check)

    @classmethod
    def execute(
        cls,
        devices: str,
        keep_warm: bool,
        timeout_s: float,
        job_timeout_s: float = 0.0,
        remote_workers: int = 0,
        join_address: str = PoolChoice.join_address,
        frame_shares: str = "",
    ) -> io.NodeOutput:
        workers = len(_resolve(devices)) + remote_workers
        choice = PoolChoice(devices, keep_warm, timeout_s, job_timeout_s, remote_workers, join_address, frame_shares)
        if frame_shares.strip() and not choice.measured_shares:
            check_shares(parse_shares(frame_shares), workers)
        if remote_workers:
            _check_remote(choice)
        return io.NodeOutput(choice)


def _resolve(text: str) -> list[str]:
    return devices.resolve(text)


def _check_remote(choice: PoolChoice) -> None:
    """Raises ValueError when remote workers are asked for without what they need."""
    choice.join_endpoint()
    if not os.environ.get(choices.TOKEN_ENV):
        raise ValueError(
            f"remote_workers is {choice.remote_workers} but the ComfyUI server has no ${choices.TOKEN_ENV}: start "
            "the server with that variable set to a shared secret, and give the node agents the same one"
        )


class UnloadPool(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="VideoInfinityUnload",
            display_name="Unload Workers (Video-Infinity)",
            category=CATEGORY,
            description="Stops the worker pool and frees the memory its workers and models hold.",
            inputs=[
                io.AnyType.Input(
                    "after",
                    optional=True,
                    tooltip="Optional: connect any output to unload only after that node has run "
                    "(for example the saved video).",
                ),
            ],
            outputs=[],
            is_output_node=True,
            not_idempotent=True,
        )

    @classmethod
    def fingerprint_inputs(cls, after=None) -> float:
        return float("nan")  # never cached: unloading is an action, not a value

    @classmethod
    def execute(cls, after=None) -> io.NodeOutput:
        result = pool_access.unload()
        text = "workers stopped, memory freed" if result["stopped"] else "no workers were running"
        return io.NodeOutput(ui=ui.PreviewText(text))
