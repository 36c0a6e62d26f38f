"""Multi-machine pools, tested as two launches on one machine over loopback (no second machine here):
the coordinator and a node agent started with `python -m distributed.cli join`."""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from distributed.pool import PoolConfig, WorkerPool, shared_pool
from tests.pool_fixtures import tiny_job, wait_for

pytestmark = [pytest.mark.pool, pytest.mark.timeout(300)]
REPO = Path(__file__).resolve().parents[1]
TOKEN = "correct horse battery staple"


def join_command(address: str, token: str) -> list[str]:
    return [sys.executable, "-m", "distributed.cli", "join", address, "--token", token, "--devices", "cpu:1", "--once"]


def test_agent_with_the_right_token_contributes_a_rank_and_a_wrong_token_is_refused(tiny_pipeline: Path) -> None:
    job = tiny_job(tiny_pipeline, frames=6, attention={"global_frames": 4, "local_window": 2})
    pool = WorkerPool(PoolConfig(devices="cpu:1", remote_workers=1, token=TOKEN, start_timeout_s=180))
    agent = None
    try:
        host, _, port = pool.join_address.rpartition(":")
        assert host == "127.0.0.1" and int(port) > 0, "the join listener must default to loopback"
        starting = threading.Thread(target=pool.start, daemon=True)
        starting.start()

        refused = subprocess.run(
            join_command(pool.join_address, "wrong token"), cwd=REPO, capture_output=True, text=True, timeout=60
        )
        assert refused.returncode == 2
        assert "join refused" in refused.stderr and "token was refused" in refused.stderr
        assert pool.status()["refused_joins"] == 1
        assert pool.status()["state"] == "starting", "a refused agent must not count as a rank"

        agent = subprocess.Popen(join_command(pool.join_address, TOKEN), cwd=REPO, stderr=subprocess.PIPE, text=True)
        starting.join(180)
        assert not starting.is_alive() and pool.running
        workers = pool.status()["workers"]
        assert [(w["rank"], w["local"]) for w in workers] == [(0, True), (1, False)]
        assert workers[1]["alive"] and workers[1]["pid"] not in pool.worker_pids()

        joined = pool.submit(job).result(120)
    finally:
        pool.shutdown()
    assert agent.wait(30) == 0, "the agent (--once) should exit when its pool shuts down"

    # The same job on one launch with the same world size gives the same video.
    single = shared_pool(PoolConfig(devices="cpu:2")).submit(job).result(180)
    assert joined.shape == (6, 32, 32, 3)
    assert np.array_equal(joined, single)


def test_pool_waiting_for_agents_times_out_with_instructions(tiny_pipeline: Path) -> None:
    pool = WorkerPool(PoolConfig(devices="cpu:1", remote_workers=1, token=TOKEN, start_timeout_s=3))
    try:
        with pytest.raises(Exception, match="only 0 joined in time.*distributed.cli join"):
            pool.start()
        assert wait_for(lambda: not pool.worker_pids(), 5)
        assert pool.status()["state"] == "stopped"
    finally:
        pool.shutdown()


def _hello(address: tuple[str, int], line: bytes | None, proof_for: str | None = None) -> dict:
    """Opens a join connection, reads the challenge, sends `line` (or a hello proved with the token
    `proof_for`), and returns the coordinator's reply."""
    import json
    import socket

    from distributed.pool.join import PROTOCOL_VERSION, proof_of_token

    with socket.create_connection(address, timeout=10) as sock:
        reader = sock.makefile("r")
        challenge = json.loads(reader.readline())["challenge"]
        if line is None:
            hello = {"proof": proof_of_token(proof_for, challenge), "devices": ["cpu"], "version": PROTOCOL_VERSION}
            line = (json.dumps(hello) + "\n").encode()
        sock.sendall(line)
        return json.loads(reader.readline() or "{}")


@pytest.mark.parametrize(
    "line,error",
    [
        (b'{"proof": "p", "devices": ["cpu"], "version": 0}\n', "speaks join protocol 0 but this pool speaks"),
        (b"[1, 2, 3]\n", "the token was refused"),
        (b"null\n", "the token was refused"),
        (b'"t"\n', "the token was refused"),
        (b'{"proof": "wrong", "devices": ["cpu"], "version": 2}\n', "the token was refused"),
        (b'{"token": "t", "devices": ["cpu"], "version": 2}\n', "the token was refused"),  # the token in clear
        (b'{"proof": "p", "dev', "the token was refused"),  # cut off: no newline before the connection ends
    ],
    ids=["old-protocol", "list", "null", "string", "wrong-proof", "clear-token", "truncated"],
)
def test_a_join_listener_refuses_a_bad_hello_with_its_reason(line: bytes, error: str) -> None:
    from distributed.pool.join import JoinListener

    listener = JoinListener("127.0.0.1", 0, "t")
    try:
        if line.endswith(b"dev"):
            reply = _truncated_hello(("127.0.0.1", listener.port), line)
        else:
            reply = _hello(("127.0.0.1", listener.port), line)
        assert reply.get("ok") is False and error in reply.get("error", ""), reply
        assert listener.refused == (0 if "protocol" in error else 1)
    finally:
        listener.close()


def _truncated_hello(address: tuple[str, int], line: bytes) -> dict:
    import json
    import socket

    with socket.create_connection(address, timeout=10) as sock:
        reader = sock.makefile("r")
        reader.readline()
        sock.sendall(line)
        sock.shutdown(socket.SHUT_WR)  # the agent stops talking mid-line
        return json.loads(reader.readline() or "{}")


def test_a_replayed_hello_is_refused_because_each_connection_has_its_own_challenge() -> None:
    import json
    import socket

    from distributed.pool.join import PROTOCOL_VERSION, JoinListener, proof_of_token

    listener = JoinListener("127.0.0.1", 0, "t")
    address = ("127.0.0.1", listener.port)
    try:
        with socket.create_connection(address, timeout=10) as sock:
            reader = sock.makefile("r")
            challenge = json.loads(reader.readline())["challenge"]
            recorded = {"proof": proof_of_token("t", challenge), "devices": ["cpu"], "version": PROTOCOL_VERSION}
            sock.sendall((json.dumps(recorded) + "\n").encode())
            assert json.loads(reader.readline())["ok"] is True  # the genuine agent got in
        replayed = _hello(address, (json.dumps(recorded) + "\n").encode())
        assert replayed.get("ok") is False and "token was refused" in replayed["error"]
        assert _hello(address, None, proof_for="t")["ok"] is True  # a fresh proof still works
    finally:
        listener.close()


def test_an_endless_hello_line_is_cut_off_and_refused() -> None:
    from distributed.pool.join import MAX_HELLO_BYTES, JoinListener

    listener = JoinListener("127.0.0.1", 0, "t")
    try:
        reply = _hello(("127.0.0.1", listener.port), b"x" * (MAX_HELLO_BYTES * 2))
        assert reply.get("ok") is False and "the token was refused" in reply.get("error", "")
    finally:
        listener.close()


def test_the_store_of_a_multi_machine_pool_listens_on_the_pool_address_only(tiny_pipeline: Path) -> None:
    import psutil

    pool = WorkerPool(PoolConfig(devices="cpu:1", remote_workers=1, token=TOKEN, start_timeout_s=60))
    agent = None
    try:
        starting = threading.Thread(target=pool.start, daemon=True)
        starting.start()
        agent = subprocess.Popen(join_command(pool.join_address, TOKEN), cwd=REPO, stderr=subprocess.PIPE, text=True)
        starting.join(60)
        assert pool.running
        mine = [c for c in psutil.Process().net_connections(kind="tcp") if c.status == psutil.CONN_LISTEN]
        assert mine, "the coordinator listens for the store and the join listener"
        assert all(c.laddr.ip == "127.0.0.1" for c in mine), [c.laddr for c in mine]
    finally:
        pool.shutdown()
        if agent is not None:
            agent.wait(30)
