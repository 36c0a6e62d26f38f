"""The coordinator's side of multi-machine pools: a token-checked listener where node agents join.

Protocol: JSON lines over one TCP connection per agent. The coordinator opens with a fresh random
challenge; the agent's hello (devices, host) carries proof = HMAC-SHA256(token, challenge), so the
token itself never crosses the network and a recorded hello cannot be replayed on another
connection. A wrong proof gets {"ok": false, "error": ...} and the connection closes. An accepted agent waits
("parked") until a pool start hands it ranks ({"op": "start", ...}); it then relays its workers'
events back, and {"op": "stop"} ends its workers. A closed connection means the agent is gone.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import secrets
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

from .errors import PoolError
from .events import AgentLost, to_wire
from .netutil import bind_listener
from .worker_args import GroupSettings

HELLO_TIMEOUT_S = 10.0
MAX_HELLO_BYTES = 64 * 1024  # a hello is a short JSON line; nothing longer is read before the token check
PROTOCOL_VERSION = 2
LOG = logging.getLogger("video_infinity.pool")


def send_line(sock: socket.socket, lock: threading.Lock, message: dict[str, Any]) -> None:
    data = (json.dumps(message) + "\n").encode()
    with lock:
        sock.sendall(data)


def proof_of_token(token: str, challenge: str) -> str:
    """What an agent sends instead of the token: valid for this one challenge only."""
    return hmac.new(token.encode(), challenge.encode(), hashlib.sha256).hexdigest()


def proof_matches(given: Any, token: str, challenge: str) -> bool:
    """Constant-time comparison, so the response time does not leak how much of a guess was right."""
    return isinstance(given, str) and hmac.compare_digest(given.encode(), proof_of_token(token, challenge).encode())


class AgentLink:
    """One connected, authenticated node agent."""

    def __init__(self, sock: socket.socket, reader: Any, hello: dict[str, Any], on_lost: Callable[[AgentLink], None]):
        self.sock = sock
        self.host: str = str(hello.get("host", "?"))
        self.devices: list[str] = [str(d) for d in hello.get("devices", [])]
        self.ranks: list[int] = []
        self.alive = True
        self._reader = reader
        self._send_lock = threading.Lock()
        self._on_event: Callable[[dict[str, Any]], None] | None = None
        self._on_lost = on_lost
        threading.Thread(target=self._read, name=f"agent-{self.host}", daemon=True).start()

    def assign(self, ranks: list[int], on_event: Callable[[dict[str, Any]], None], group: GroupSettings) -> None:
        """Starts `ranks` on the agent; their events (wire dicts) go to on_event."""
        self.ranks = ranks
        self._on_event = on_event
        self.send({"op": "start", "ranks": ranks, "devices": self.devices[: len(ranks)], "group": group.to_dict()})

    def release(self) -> None:
        """Back to parked: the agent stops its workers and may join the next pool."""
        self._on_event = None
        self.ranks = []
        self.send({"op": "stop"})

    def send(self, message: dict[str, Any]) -> None:
        try:
            send_line(self.sock, self._send_lock, message)
        except OSError:
            self._lost()

    def close(self) -> None:
        self.alive = False
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()

    def _read(self) -> None:
        try:
            for line in self._reader:
                event = json.loads(line)
                handler = self._on_event
                if handler is not None:
                    handler(event)
        except (OSError, ValueError):
            pass
        self._lost()

    def _lost(self) -> None:
        if not self.alive:
            return
        self.alive = False
        handler = self._on_event
        if handler is not None and self.ranks:
            handler(to_wire(AgentLost(self.ranks[0], ranks=tuple(self.ranks), host=self.host)))
        self._on_lost(self)


class JoinListener:
    def __init__(self, host: str, port: int, token: str):
        self._token = token
        self._sock = bind_listener(host, port, backlog=16)
        self.host = host
        self.port: int = self._sock.getsockname()[1]
        self._parked: list[AgentLink] = []
        self._changed = threading.Condition()
        self._closed = False
        self.refused = 0
        threading.Thread(target=self._accept, name="join-listener", daemon=True).start()

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def take(self, count: int, deadline: float, abort: Callable[[], bool] = lambda: False) -> list[AgentLink]:
        """Parked agents offering `count` devices in all (waits until the deadline, or until `abort()`)."""
        with self._changed:
            while True:
                offered = sum(len(a.devices) for a in self._parked if a.alive)
                if offered >= count:
                    break
                if abort():
                    return []
                left = deadline - time.monotonic()
                if left <= 0 or self._closed:
                    raise PoolError(
                        f"the pool waits for {count} worker(s) from node agents but only {offered} joined in time; "
                        f"on the other machine run: python -m distributed.cli join {self.address} --token <token> "
                        f"--devices <devices>"
                    )
                self._changed.wait(min(left, 0.2))
            chosen, needed = [], count
            for agent in list(self._parked):
                if needed == 0:
                    break
                if agent.alive:
                    chosen.append(agent)
                    self._parked.remove(agent)
                    needed -= min(needed, len(agent.devices))
            return chosen

    def give_back(self, agent: AgentLink) -> None:
        if agent.alive:
            agent.release()
            with self._changed:
                self._parked.append(agent)
                self._changed.notify_all()

    def close(self) -> None:
        with self._changed:
            self._closed = True
            agents, self._parked = self._parked, []
            self._changed.notify_all()
        for agent in agents:
            agent.close()
        self._sock.close()

    def _accept(self) -> None:
        while not self._closed:
            try:
                conn, peer = self._sock.accept()
            except OSError:
                return
            threading.Thread(target=self._greet, args=(conn, peer), daemon=True).start()

    def _greet(self, conn: socket.socket, peer: Any) -> None:
        lock = threading.Lock()
        try:
            conn.settimeout(HELLO_TIMEOUT_S)
            challenge = secrets.token_hex(32)
            send_line(conn, lock, {"challenge": challenge, "version": PROTOCOL_VERSION})
            reader = conn.makefile("r", encoding="utf-8")
            line = reader.readline(MAX_HELLO_BYTES)
            hello = json.loads(line) if line.endswith("\n") else {}  # cut off at the bound: refused
            if not isinstance(hello, dict):
                hello = {}
            if "version" in hello and hello["version"] != PROTOCOL_VERSION:
                error = (
                    f"the agent speaks join protocol {hello.get('version')!r} but this pool speaks {PROTOCOL_VERSION}; "
                    "run the same version of the pack on every machine"
                )
                send_line(conn, lock, {"ok": False, "error": error})
                conn.close()
                return
            if not proof_matches(hello.get("proof"), self._token, challenge):
                self.refused += 1
                LOG.warning("Video-Infinity: refused a node agent from %s: wrong token or a malformed hello", peer[0])
                send_line(conn, lock, {"ok": False, "error": "the token was refused; use the pool's --token"})
                conn.close()
                return
            if not hello.get("devices"):
                send_line(conn, lock, {"ok": False, "error": "the agent offered no devices"})
                conn.close()
                return
            conn.settimeout(None)
            send_line(conn, lock, {"ok": True, "version": PROTOCOL_VERSION})
        except (OSError, ValueError):
            conn.close()
            return
        agent = AgentLink(conn, reader, hello, self._forget)
        with self._changed:
            self._parked.append(agent)
            self._changed.notify_all()

    def _forget(self, agent: AgentLink) -> None:
        with self._changed:
            if agent in self._parked:
                self._parked.remove(agent)
            self._changed.notify_all()
