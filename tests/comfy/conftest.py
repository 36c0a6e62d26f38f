"""One real ComfyUI server per test session, with the pack copied into a hyphenated, dotted folder."""

from __future__ import annotations

import copy
import json
import shutil
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "scripts"))

import comfy_host  # noqa: E402
from comfy_client import ComfyClient  # noqa: E402

from distributed.engine.choices import TOKEN_ENV  # noqa: E402
from distributed.models.wan.comfy_runtime import COMFY_ROOT_ENV  # noqa: E402

AGENT_TOKEN = "comfy tests: agents on this machine stand in for other machines"
# Another ComfyUI (VIDEO_INFINITY_TEST_COMFYUI) gets a base folder of its own: its user database may be newer.
TEST_BASE = comfy_host.HOST_DIR / ("test-base" if comfy_host.TREE == comfy_host.EMBEDDED_TREE else "test-base-other")
EXTRA_MODELS = comfy_host.HOST_DIR / "test-extra-models"
TINY_MODEL = "tiny-random"
EXTRA_MODEL = "tiny-extra"
UNET_FILE = "tiny-unet.safetensors"  # a UNet override given as one file (config: the base pipeline's)
BROKEN_MODEL = "tiny-broken"  # its UNet weights file is not safetensors: the workers fail to load it
WORDS = ["red", "blue", "green", "yellow", "circle", "square", "moving", "left", "right", "up", "down"]
WORKFLOWS = REPO / "workflows"
TEST_NODES = Path(__file__).resolve().parent / "test_nodes" / "video_infinity_test_conditioning"

TIMINGS: dict[str, float] = {}


def _build_model(folder: Path, seed: int) -> None:
    if (folder / "model_index.json").exists():
        return
    from support.tiny_models import build_tiny_pipeline

    build_tiny_pipeline(folder, seed=seed, words=WORDS)


def _install_wan_test_files(base: Path) -> None:
    """Tiny random Wan models, VAE and LoRA where core loaders find them, and the test-only conditioning node
    (Wan's real text encoder is far too big for these tests)."""
    import os

    from support.local_ranks import run_on_local_ranks
    from tests.wan_targets import save_tiny_wan_files

    os.environ[COMFY_ROOT_ENV] = str(comfy_host.TREE)
    run_on_local_ranks(1, save_tiny_wan_files, {"models": str(base / "models")}, timeout=600)
    target = base / "custom_nodes" / TEST_NODES.name
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(TEST_NODES, target, ignore=shutil.ignore_patterns("__pycache__"))


@pytest.fixture(scope="session")
def host():
    """Installs the host if needed, prepares the base directory and starts the server once."""
    started = time.monotonic()
    comfy_host.install()
    base = comfy_host.prepare_base(TEST_BASE)
    _build_model(base / "models" / "video_infinity" / TINY_MODEL, seed=0)
    _build_model(EXTRA_MODELS / EXTRA_MODEL, seed=1)
    unet_file = base / "models" / "video_infinity" / UNET_FILE
    if not unet_file.exists():
        shutil.copy2(
            base / "models" / "video_infinity" / TINY_MODEL / "unet" / "diffusion_pytorch_model.safetensors", unet_file
        )
    broken = base / "models" / "video_infinity" / BROKEN_MODEL
    if not broken.exists():
        shutil.copytree(base / "models" / "video_infinity" / TINY_MODEL, broken)
        (broken / "unet" / "diffusion_pytorch_model.safetensors").write_bytes(b"this is not a safetensors file")
    _install_wan_test_files(base)
    extra = comfy_host.HOST_DIR / "test-extra_model_paths.yaml"
    extra.write_text(f"video-infinity-tests:\n    video_infinity: {EXTRA_MODELS}\n")
    # The server's secret for Worker Pools with remote workers; only the server gets it, not this process.
    # Live previews on, as most installs have them (ComfyUI's own default is none).
    server = comfy_host.start_server(
        base,
        extra_args=("--extra-model-paths-config", str(extra), "--preview-method", "latent2rgb"),
        env={TOKEN_ENV: AGENT_TOKEN},
    )
    try:
        TIMINGS["server_ready_s"] = server.wait_ready()
        TIMINGS["setup_s"] = time.monotonic() - started
        yield server
    finally:
        server.stop()
        print(f"\n[comfy tests] timings: {json.dumps({k: round(v, 1) for k, v in TIMINGS.items()})}")


@pytest.fixture
def client(host):
    assert host.alive(), host.log_text()[-3000:]
    c = ComfyClient(host.url)
    yield c
    c.close()


def api_workflow(name: str = "text_to_video") -> dict:
    return json.loads((WORKFLOWS / "api" / f"{name}.json").read_text())


def tiny_job(seed: int = 1, frames: int = 8, steps: int = 2, **sampler_inputs) -> dict:
    """The API example workflow, made tiny: the random test model, 2 CPU workers, 64x64, few steps."""
    prompt = copy.deepcopy(api_workflow())
    prompt["1"]["inputs"]["model_name"] = TINY_MODEL
    prompt["2"]["inputs"].update(local_window=2, global_frames=min(4, frames))
    prompt["3"]["inputs"]["devices"] = "cpu:2"
    prompt["4"]["inputs"].update(frames=frames, width=64, height=64, steps=steps, seed=seed, **sampler_inputs)
    return prompt
