"""The GPU check runs on the CPU too (CUDA rows marked), and the engine's device-dependent code runs on every
device at hand: the same tests run unchanged on CUDA where there is one (skipped here otherwise)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import torch

from benchmarks.gpu_check import (
    NOT_AVAILABLE,
    SECTIONS,
    attention_in_parts,
    masked_rows,
    relative,
    tiny_job,
    tiny_model,
)
from distributed.engine.comm import Communicator
from distributed.engine.runner import Engine

REPO = Path(__file__).resolve().parents[1]
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA here"))]


def test_the_gpu_check_writes_its_report_on_the_cpu(tmp_path: Path) -> None:
    done = subprocess.run(
        ["bash", "scripts/gpu_check.sh", str(tmp_path), "--cpu"], cwd=REPO, capture_output=True, text=True, timeout=180
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    assert set(report["sections"]) == set(SECTIONS)
    for name, (_, needs_cuda) in SECTIONS.items():
        if needs_cuda:
            assert report["sections"][name]["result"] == NOT_AVAILABLE
    correctness = report["sections"]["correctness"]
    assert "error" not in correctness, correctness
    assert correctness["cuda fp32 vs cpu fp32"] == NOT_AVAILABLE
    assert correctness["cpu bf16"]["finite"] and correctness["cpu bf16"]["relative_to_fp32"] < 0.1
    assert correctness["masked rows in half precision"] == {"float16": True, "bfloat16": True}
    timing = correctness["compute time of a job (what frame_shares auto balances)"]
    assert timing["within_wall"] and timing["frame_capacity"] == [8], timing
    fused = correctness["fused attention with its normaliser"]["flash (cpu) float32"]  # the kernel the engine uses
    assert fused["relative"] < 1e-5 and fused["lse_max_difference"] < 1e-4 and fused["lse_shape"] == [2, 4, 100]
    wan_parts = correctness["wan attention in parts vs one pass"]
    assert wan_parts["float32"]["relative"] < 1e-5 and all(row["finite"] for row in wan_parts.values())
    fp8 = report["sections"]["wan_fp8"]
    assert "error" not in fp8, fp8
    for form in ("scaled fp8 file", "weight_dtype fp8_e4m3fn_fast"):
        assert fp8[f"{form}: weights held as"] == "torch.float8_e4m3fn"
        assert fp8[f"{form}: relative difference to core KSampler (one worker, full window)"] < 1e-5
    assert (tmp_path / "gpu_check.md").read_text().startswith("# GPU check")


@pytest.mark.parametrize("device", DEVICES)
def test_a_job_on_the_device_matches_the_cpu_and_returns_host_arrays(device: str, tmp_path: Path) -> None:
    model = tiny_model(tmp_path)
    reference = Engine(Communicator.single("cpu")).run(tiny_job(model))
    result = Engine(Communicator.single(device)).run(tiny_job(model))
    assert result.frames is not None and result.frames.dtype.name == "uint8"  # numpy on the host
    assert result.latents is not None and result.latents.device.type == "cpu"
    assert relative(result.latents, reference.latents) < 1e-4


@pytest.mark.parametrize("device", DEVICES)
def test_masked_rows_stay_finite_in_half_precision(device: str) -> None:
    assert masked_rows(device) == {"float16": True, "bfloat16": True}


@pytest.mark.parametrize("device", DEVICES)
def test_the_attention_in_parts_equals_the_one_pass_on_the_device_in_every_dtype(device: str) -> None:
    found = attention_in_parts(device)
    assert all(row["finite"] for row in found.values()), found
    assert found["float32"]["relative"] < 1e-5
    assert found["float16"]["relative"] < 1e-2 and found["bfloat16"]["relative"] < 5e-2, found
