"""Pool settings are refused before any process starts. CUDA counts are passed in: no GPU on the test machine."""

from __future__ import annotations

import socket

import pytest

from distributed.engine.errors import InvalidSettingsError
from distributed.pool import PoolConfig, WorkerPool, parse_devices

pytestmark = [pytest.mark.pool, pytest.mark.timeout(30)]


def test_device_specs_resolve() -> None:
    assert parse_devices("cpu:2", cuda_count=0) == ["cpu", "cpu"]
    assert parse_devices("cuda:all", cuda_count=3) == ["cuda:0", "cuda:1", "cuda:2"]
    assert parse_devices("cuda:0,2", cuda_count=3) == ["cuda:0", "cuda:2"]
    assert parse_devices(["cuda:1", "cuda"], cuda_count=2) == ["cuda:1", "cuda:0"]
    assert PoolConfig(devices="cuda:all", workers=2).local_devices(cuda_count=4) == ["cuda:0", "cuda:1"]


def test_cuda_backend_is_nccl_and_cpu_is_gloo() -> None:
    config = PoolConfig(devices="cuda:all")
    assert config.resolved_backend(["cuda:0", "cuda:1"]) == "nccl"
    assert PoolConfig().resolved_backend(["cpu"]) == "gloo"
    with pytest.raises(InvalidSettingsError, match="nccl backend needs CUDA"):
        PoolConfig(backend="nccl").resolved_backend(["cpu"])


@pytest.mark.parametrize(
    ("spec", "cuda_count", "message"),
    [
        ("cuda:3", 2, "cuda:3 does not exist"),
        ("cuda:all", 0, "no visible CUDA device"),
        (["cuda:0", "cuda:0"], 2, "one worker per GPU"),
        (["cuda:0", "cpu"], 1, "either CPU or CUDA"),
        ("cpu:4096", 0, "CPU core"),
        ("tpu:0", 0, "unknown device"),
        ([], 0, "no devices"),
    ],
)
def test_bad_devices_are_refused(spec: object, cuda_count: int, message: str) -> None:
    with pytest.raises(InvalidSettingsError, match=message):
        parse_devices(spec, cuda_count=cuda_count)  # type: ignore[arg-type]


def test_more_workers_than_devices_is_refused() -> None:
    with pytest.raises(InvalidSettingsError, match="3 workers asked for but only 2"):
        PoolConfig(devices="cuda:all", workers=3).local_devices(cuda_count=2)


def test_worker_count_message_for_cpu() -> None:
    with pytest.raises(InvalidSettingsError, match="2 workers asked for but only 1"):
        WorkerPool(PoolConfig(devices="cpu:1", workers=2))


def test_busy_port_is_refused_before_start() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        with pytest.raises(InvalidSettingsError, match=f"127.0.0.1:{port} is not available"):
            WorkerPool(PoolConfig(devices="cpu:1", remote_workers=1, token="t", join_port=port))


def test_remote_workers_need_a_token() -> None:
    with pytest.raises(InvalidSettingsError, match="needs a token"):
        WorkerPool(PoolConfig(devices="cpu:1", remote_workers=1))


def test_equal_configs_compare_equal() -> None:
    assert PoolConfig(devices=["cpu", "cpu"]) == PoolConfig(devices=("cpu", "cpu"))
    assert PoolConfig(devices="cpu:2") != PoolConfig(devices="cpu:1")
