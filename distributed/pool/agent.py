"""The node agent: runs on another machine and contributes its devices as extra ranks of a pool.

It connects to the coordinator's join address, authenticates with the shared token, and then starts
and stops workers whenever the coordinator starts or ends a process group, relaying their events. When
the connection drops (the coordinator died or shut down) its workers are killed. It reconnects for the
next pool unless told to join only once.
"""

from __future__ import annotations

import json
import os
import queue
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

from ..engine.choices import gpu_count
from .config import parse_devices
from .events import Died, to_wire
from .join import MAX_HELLO_BYTES, PROTOCOL_VERSION, proof_of_token, send_line
from .launch import kill_all, spawn_context, start_worker
from .netutil import parse_address
from .worker_args import GroupSettings, WorkerArgs

REFUSED = 2
UNREACHABLE = 1


def run_agent(
    address: str,
    token: str,
    devices: str | list[str],
    once: bool = False,
    connect_timeout_s: float = 60.0,
    log: Callable[[str], None] = print,
    network_interface: str | None = None,
) -> int:
    """Serves pools at `address` until the coordinator goes away (or forever, unless `once`). Returns an exit code."""
    host, port = parse_address(address)
    local = parse_devices(devices, gpu_count())
    while True:
        sock = _connect(host, port, time.monotonic() + connect_timeout_s)
        if sock is None:
            log(f"node agent: could not reach a pool at {address} within {connect_timeout_s:.0f} s")
            return UNREACHABLE
        lock = threading.Lock()
        reader = sock.makefile("r", encoding="utf-8")
        try:
            opening = json.loads(reader.readline(MAX_HELLO_BYTES) or "{}")
            challenge = str(opening.get("challenge", "")) if isinstance(opening, dict) else ""
            proof = proof_of_token(token, challenge)
            hello = {"proof": proof, "devices": local, "host": socket.gethostname(), "version": PROTOCOL_VERSION}
            send_line(sock, lock, hello)
            reply = json.loads(reader.readline(MAX_HELLO_BYTES) or "{}")
        except (OSError, ValueError):
            reply = {}
        if not isinstance(reply, dict):
            reply = {}
        if not reply.get("ok"):
            sock.close()
            log(f"node agent: join refused by {address}: {reply.get('error', 'the connection was closed')}")
            return REFUSED
        log(f"node agent: joined {address} with {len(local)} device(s) ({', '.join(local)})")
        _serve(sock, reader, lock, log, {"host": host, "network_interface": network_interface})
        sock.close()
        if once:
            return 0
        log("node agent: the pool went away; waiting to join the next one")


def _serve(
    sock: socket.socket, reader: Any, lock: threading.Lock, log: Callable[[str], None], here: dict[str, Any]
) -> None:
    workers: AgentWorkers | None = None
    try:
        for line in reader:
            message = json.loads(line)
            if message.get("op") == "start":
                if workers is not None:
                    workers.stop()
                group = GroupSettings.from_dict(message["group"]).reached_from(here["host"], here["network_interface"])
                workers = AgentWorkers(sock, lock, group, message["ranks"], message["devices"])
                log(f"node agent: started ranks {message['ranks']}")
            elif message.get("op") == "stop" and workers is not None:
                workers.stop()
                workers = None
    except (OSError, ValueError):
        pass
    if workers is not None:
        workers.stop()


class AgentWorkers:
    """This machine's workers of one process group, with their events relayed to the coordinator."""

    def __init__(
        self, sock: socket.socket, lock: threading.Lock, group: GroupSettings, ranks: list[int], devices: list[str]
    ):
        self._sock, self._lock = sock, lock
        self._stopping = threading.Event()
        ctx = spawn_context()
        self._events = ctx.Queue()
        self._processes: dict[int, Any] = {}
        for rank, device in zip(ranks, devices, strict=True):
            args = WorkerArgs(group, rank, device, parent_pid=os.getpid(), events=self._events)
            self._processes[rank] = start_worker(ctx, args)
        threading.Thread(target=self._relay, name="agent-relay", daemon=True).start()

    def stop(self) -> None:
        self._stopping.set()
        kill_all(list(self._processes.values()), grace_s=2.0)
        self._events.close()
        self._events.cancel_join_thread()

    def _relay(self) -> None:
        reported: set[int] = set()
        while not self._stopping.is_set():
            try:
                self._send(self._events.get(timeout=0.1))
            except queue.Empty:
                pass
            except (OSError, ValueError, EOFError):
                return
            for rank, process in self._processes.items():
                if process.exitcode is not None and rank not in reported and not self._stopping.is_set():
                    reported.add(rank)
                    self._send(to_wire(Died(rank, exitcode=process.exitcode)))

    def _send(self, event: dict[str, Any]) -> None:
        try:
            send_line(self._sock, self._lock, event)
        except OSError:
            self._stopping.set()


def _connect(host: str, port: int, deadline: float) -> socket.socket | None:
    while True:
        try:
            sock = socket.create_connection((host, port), timeout=5)
            sock.settimeout(None)  # the connection then idles for as long as the pool lives
            return sock
        except OSError:
            if time.monotonic() > deadline:
                return None
            time.sleep(0.5)
