"""The pack inside a real ComfyUI server, driven through the API queue (POST /prompt + websocket)."""

from __future__ import annotations

import copy
import io
import json
import time

import av
import numpy as np
import pytest
import requests
from conftest import (
    BROKEN_MODEL,
    EXTRA_MODEL,
    TIMINGS,
    TINY_MODEL,
    UNET_FILE,
    WORKFLOWS,
    api_workflow,
    comfy_host,
    tiny_job,
)
from safetensors.numpy import load_file

pytestmark = pytest.mark.comfy

NODES = {
    "VideoInfinityLoadModel": {"model_name", "unet_override", "dtype"},
    "VideoInfinityDualScopeAttention": {
        "local_window",
        "global_frames",
        "conv_halo",
        "phase_bias",
        "phase_threshold",
        "global_bias",
        "local_bias",
        "attn_scale",
        "token_num_scale",
        "mode",
        "norm_window",
    },
    "VideoInfinityWorkerPool": {
        "devices",
        "keep_warm",
        "timeout_s",
        "job_timeout_s",
        "remote_workers",
        "join_address",
        "frame_shares",
    },
    "VideoInfinityClipParallelKSampler": {
        "model",
        "positive",
        "negative",
        "latent_image",
        "seed",
        "steps",
        "cfg",
        "sampler_name",
        "scheduler",
        "denoise",
        "add_noise",
        "start_at_step",
        "end_at_step",
        "return_with_leftover_noise",
        "attention",
        "pool",
    },
    "VideoInfinityClipParallelSampler": {
        "model",
        "prompt",
        "negative_prompt",
        "frames",
        "width",
        "height",
        "steps",
        "cfg",
        "sampler",
        "seed",
        "fps",
        "blend",
        "return_images",
        "attention",
        "pool",
    },
    "VideoInfinitySaveVideo": {"video_frames", "images", "fps", "filename_prefix", "crf"},
    "VideoInfinityUnload": {"after"},
}


def _inputs(info: dict) -> dict:
    return {**info["input"].get("required", {}), **info["input"].get("optional", {})}


def _mp4_frames(path) -> tuple[int, int, int]:
    with av.open(str(path)) as container:
        frames = [f for f in container.decode(video=0)]
    return len(frames), frames[0].height, frames[0].width


def test_the_demo_model_previews_frames_decoded_by_its_own_vae(host, client):
    # Its VAE is not Stable Diffusion's, so no previewer knows its latent colours: rank 0 decodes the frame,
    # and the last preview looks like the video's first frame.
    from PIL import Image

    prompt = tiny_job(seed=71, steps=4)
    prompt["1"]["inputs"]["model_name"] = "tiny-shapes-t2v"
    prompt["4"]["inputs"].update(cfg=5.0, sampler="ddim")
    run = client.wait(client.queue(prompt), timeout=300)
    assert run.outcome == "execution_success", run.events
    previews = client.previews(run)
    assert previews, "no preview"
    shown = np.asarray(Image.open(io.BytesIO(previews[-1])).convert("RGB").resize((64, 64)), np.float32)
    saved = client.history(run.prompt_id)["outputs"]["5"]["images"][0]
    with av.open(str(host.base / "output" / saved["subfolder"] / saved["filename"])) as container:
        first = next(container.decode(video=0)).to_ndarray(format="rgb24").astype(np.float32)
    assert np.abs(shown - first).mean() < 20, np.abs(shown - first).mean()


def test_pack_loads_from_a_hyphenated_dotted_folder(host):
    folder = comfy_host.PACK_FOLDER
    assert "-" in folder and "." in folder
    log = host.log_text()
    pack = host.base / "custom_nodes" / folder
    assert f"seconds: {pack}" in log and f"(IMPORT FAILED): {pack}" not in log
    info = host.get_json("/object_info")
    for node in NODES:
        assert node in info, f"{node} missing from /object_info"
        assert info[node]["python_module"] == f"custom_nodes.{folder}"


def test_object_info_lists_every_node_with_its_inputs(host):
    info = host.get_json("/object_info")
    for node, expected in NODES.items():
        declared = _inputs(info[node])
        assert set(declared) == expected, node
        assert info[node]["category"] == "video/Video-Infinity"
        for name, (_kind, options) in declared.items():
            assert options.get("tooltip"), f"{node}.{name} has no tooltip"
    sampler = info["VideoInfinityClipParallelSampler"]
    assert sampler["output"] == ["IMAGE", "VIDEO_INFINITY_FRAMES", "FLOAT", "LATENT"]
    assert set(_inputs(sampler)) - set(sampler["input"]["required"]) == {"attention", "pool"}


def test_models_are_found_through_folder_paths_and_extra_model_paths(host):
    options = _inputs(host.get_json("/object_info/VideoInfinityLoadModel")["VideoInfinityLoadModel"])["model_name"][1]
    # models/video_infinity of the base directory, and an extra_model_paths.yaml entry
    assert {TINY_MODEL, EXTRA_MODEL} <= set(options["options"])
    unets = _inputs(host.get_json("/object_info/VideoInfinityLoadModel")["VideoInfinityLoadModel"])["unet_override"]
    assert UNET_FILE in unets[1]["options"] and TINY_MODEL not in unets[1]["options"]


def test_unet_override_file_runs(host, client):
    prompt = tiny_job(seed=61)
    prompt["1"]["inputs"]["unet_override"] = UNET_FILE
    run = client.wait(client.queue(prompt), timeout=300)
    assert run.outcome == "execution_success", run.events


def test_example_workflow_through_the_api_queue(host, client):
    prompt = tiny_job(seed=11)
    started = time.monotonic()
    run = client.wait(client.queue(prompt), timeout=400)
    TIMINGS["first_workflow_s"] = time.monotonic() - started
    assert run.outcome == "execution_success", run.events
    progress = [e for e in run.of_type("progress") if e["data"]["node"] == "4"]
    steps = prompt["4"]["inputs"]["steps"]
    values = [e["data"]["value"] for e in progress]
    assert values == sorted(values) and set(range(1, steps + 2)) <= set(values)  # every step, then decode
    assert all(e["data"]["max"] == steps + 1 for e in progress)
    # progress came while the sampler ran: after it started executing, before the save node started
    executing = {e["data"]["node"]: e["t"] for e in run.of_type("executing")}
    assert executing["4"] < progress[0]["t"] < progress[-1]["t"] < executing["5"]
    # Live previews of the first frame, drawn by ComfyUI's latent2rgb previewer, as core KSampler's are.
    previews = client.previews(run)
    assert previews and all(image[:2] == b"\xff\xd8" for image in previews), f"{len(previews)} previews"
    saved = client.history(run.prompt_id)["outputs"]["5"]["images"][0]
    assert saved["filename"].endswith(".mp4")
    path = host.base / "output" / saved["subfolder"] / saved["filename"]
    assert _mp4_frames(path) == (8, 64, 64)

    with av.open(str(path)) as container:  # the prompt travels in the file, as core Save Video writes it
        assert json.loads(container.metadata["prompt"]) == prompt and "workflow" not in container.metadata

    started = time.monotonic()  # the same graph again with another seed: the warm pool answers faster
    editor_graph = json.loads((WORKFLOWS / "text_to_video.json").read_text())  # as the editor would send it
    run = client.wait(client.queue(tiny_job(seed=12), workflow=editor_graph), timeout=300)
    TIMINGS["warm_workflow_s"] = time.monotonic() - started
    assert run.outcome == "execution_success", run.events
    second = client.history(run.prompt_id)["outputs"]["5"]["images"][0]
    assert second["filename"] != saved["filename"] and path.exists()  # a new file, the first one kept
    with av.open(str(host.base / "output" / second["subfolder"] / second["filename"])) as container:
        assert json.loads(container.metadata["workflow"]) == editor_graph


def test_frames_split_by_shares_give_the_video_of_an_even_split_on_the_same_warm_pool(host, client):
    # Three samplers on the same two CPU workers: an even split, frame_shares 1,3 (2 and 6 of the 8 frames) and
    # "auto" (the split the workers' measured speeds give). The shares belong to the job, so the pool stays the
    # same, and the video does not depend on the split.
    prompt = tiny_job(seed=13)
    for pool_key, sampler_key, shares in (("6", "7", "1,3"), ("10", "11", "auto")):
        prompt[pool_key] = copy.deepcopy(prompt["3"])
        prompt[pool_key]["inputs"]["frame_shares"] = shares
        prompt[sampler_key] = copy.deepcopy(prompt["4"])
        prompt[sampler_key]["inputs"]["pool"] = [pool_key, 0]
    for key, source in (("8", "4"), ("9", "7"), ("12", "11")):
        prompt[key] = {
            "class_type": "SaveLatent",
            "inputs": {"samples": [source, 3], "filename_prefix": f"shares/{key}"},
        }
    del prompt["5"]
    run = client.wait(client.queue(prompt), timeout=400)
    assert run.outcome == "execution_success", run.events
    outputs = client.history(run.prompt_id)["outputs"]
    found = {}
    for key in ("8", "9", "12"):
        saved = outputs[key]["latents"][0]
        found[key] = load_file(str(host.base / "output" / saved["subfolder"] / saved["filename"]))["latent_tensor"]
    for key, shares in (("9", "1,3"), ("12", "auto")):
        error = float(np.abs(found[key] - found["8"]).max() / np.abs(found["8"]).max())
        print(f"frame shares {shares} against an even split: relative difference {error:.2e}")
        assert error < 1e-5
    workers = requests.get(f"{host.url}/video_infinity/pool", timeout=30).json()["workers"]
    assert sum(worker["frames"] for worker in workers) == 8, workers  # the last job's split, in the panel's data


def test_multi_prompt_workflow_validates_and_runs(host, client):
    prompt = tiny_job(seed=5)
    schedule = api_workflow("multi_prompt")["4"]["inputs"]["prompt"]
    assert schedule.count("\n") >= 1 and ":" in schedule
    frames = api_workflow("multi_prompt")["4"]["inputs"]["frames"]
    # return_images off: IMAGE carries one frame, the whole video goes to the save node as uint8
    prompt["4"]["inputs"].update(prompt=schedule, frames=frames, blend=2, return_images=False)
    prompt["2"]["inputs"]["global_frames"] = 4
    run = client.wait(client.queue(prompt), timeout=300)
    assert run.outcome == "execution_success", run.events
    saved = client.history(run.prompt_id)["outputs"]["5"]["images"][0]
    assert _mp4_frames(host.base / "output" / saved["subfolder"] / saved["filename"]) == (frames, 64, 64)


def test_interrupt_during_sampling_then_next_prompt_succeeds(host, client):
    prompt_id = client.queue(tiny_job(seed=21, steps=400))
    client.wait_for_event(
        prompt_id, lambda e: e["type"] == "progress" and e["data"]["node"] == "4" and e["data"]["value"] >= 1, 300
    )
    asked = time.monotonic()
    assert requests.post(f"{host.url}/interrupt", timeout=10).status_code == 200
    run = client.wait(prompt_id, timeout=60)
    assert run.outcome == "execution_interrupted", run.events
    TIMINGS["interrupt_s"] = run.of_type("execution_interrupted")[0]["t"] - asked
    assert TIMINGS["interrupt_s"] < 15
    last_step = max(e["data"]["value"] for e in run.of_type("progress") if e["data"]["node"] == "4")
    assert last_step < 400
    run = client.wait(client.queue(tiny_job(seed=22)), timeout=300)
    assert run.outcome == "execution_success", run.events


def _validation_errors(client, prompt) -> list[str]:
    response = client.post_prompt(prompt)
    assert response.status_code == 400, response.text
    errors = response.json()["node_errors"]
    return [e["details"] for node in errors.values() for e in node["errors"]]


@pytest.mark.parametrize(
    ("node", "inputs", "expected"),
    [
        ("1", {"model_name": "no-such-model"}, ["'no-such-model' was not found", "video_infinity"]),
        ("4", {"steps": 0}, ["steps is 0", "at least 1"]),
        (
            "4",
            {"prompt": "0-5: a red circle moving right\n4-7: a blue square moving up"},
            ["overlaps", "start it at frame 6"],
        ),
        (
            "4",
            {"prompt": "0-3: a red circle moving right\n5-7: a blue square moving up"},
            ["frames 4-4 without a prompt"],
        ),
        ("4", {"width": 60}, ["multiple of 8"]),
        # Upper limits hold although the nodes validate their own inputs (ComfyUI then skips min/max).
        ("4", {"frames": 10**9}, ["frames is 1000000000; it must be at most 100000"]),
        ("4", {"width": 8192}, ["width is 8192; it must be at most 4096"]),
        ("4", {"steps": 5000}, ["steps is 5000; it must be at most 1000"]),
        ("4", {"cfg": 1e6}, ["cfg is 1000000.0; it must be at most 100.0"]),
        ("4", {"sampler": "euler"}, ["sampler is 'euler'; use one of"]),
        ("2", {"local_window": 10**6}, ["local_window is 1000000; it must be at most 256"]),
        ("2", {"mode": "fast"}, ["mode is 'fast'; use one of"]),
        ("3", {"devices": "cuda:7"}, ["cuda:7"]),
        ("3", {"devices": "tpu"}, ["unknown device"]),
        ("5", {"filename_prefix": "../../outside/video"}, ["points outside ComfyUI's output folder"]),
        ("5", {"filename_prefix": "/etc/video"}, ["points outside ComfyUI's output folder"]),
        ("5", {"filename_prefix": "   "}, ["filename_prefix is empty"]),
        ("4", {"height": 8192}, ["height is 8192; it must be at most 4096"]),
        ("4", {"height": 12}, ["height is 12; it must be a multiple of 8"]),
        ("4", {"frames": 0}, ["frames is 0; it must be at least 1"]),
        ("4", {"fps": 0}, ["fps is 0.0; it must be at least 0.1"]),
        ("4", {"fps": 1000}, ["fps is 1000.0; it must be at most 120.0"]),
        ("4", {"blend": 5000}, ["blend is 5000; it must be at most 1000"]),
        ("4", {"cfg": -1}, ["cfg is -1.0; it must be at least 0.0"]),
        ("4", {"seed": -1}, ["seed is -1; it must be at least 0"]),
        ("4", {"frames": 10**5, "width": 4096, "height": 4096}, ["the finished video alone", "GiB of memory"]),
        ("2", {"global_frames": 5000}, ["global_frames is 5000; it must be at most 1024"]),
        ("2", {"conv_halo": 100}, ["conv_halo is 100; it must be at most 64"]),
        ("2", {"attn_scale": 0}, ["attn_scale is 0.0; it must be at least 0.01"]),
        ("2", {"phase_threshold": 2000}, ["phase_threshold is 2000.0; it must be at most 1000.0"]),
        ("2", {"norm_window": -1}, ["norm_window is -1; it must be at least 0"]),
        ("2", {"local_bias": 1e9}, ["local_bias is 1000000000.0; it must be at most 100.0"]),
        ("1", {"dtype": "fp8"}, ["dtype 'fp8' is not one of"]),
        ("1", {"unet_override": "nope.safetensors"}, ["UNet override 'nope.safetensors' was not found"]),
        ("3", {"timeout_s": 1}, ["timeout_s is 1.0; it must be at least 10.0"]),
        ("3", {"remote_workers": 100_000}, ["remote_workers is 100000; it must be at most 256"]),
        ("3", {"remote_workers": 1, "join_address": "10.0.0.5"}, ["join_address is '10.0.0.5'; give HOST:PORT"]),
        ("3", {"frame_shares": "fast,slow"}, ["frame_shares is 'fast,slow'; give one number per worker", "'auto'"]),
        ("3", {"frame_shares": "1,1,1"}, ["frame_shares gives 3 share(s) but the pool has 2 workers"]),
        ("3", {"frame_shares": "1,-2"}, ["frame_shares has -2.0; every share must be a number greater than 0"]),
        ("5", {"crf": 99}, ["crf"]),
        ("4", {"width": "wide"}, ["width, wide"]),
    ],
)
def test_bad_inputs_are_refused_before_running_with_one_message(host, client, node, inputs, expected):
    prompt = tiny_job()
    prompt[node]["inputs"].update(inputs)
    messages = _validation_errors(client, prompt)
    assert len(messages) == 1, messages  # once, not once per input of the node
    for part in expected:
        assert part in messages[0], messages
    assert host.get_json("/system_stats")["system"]  # still serving


def test_a_missing_input_is_reported_by_name(client):
    prompt = tiny_job()
    del prompt["4"]["inputs"]["steps"]
    response = client.post_prompt(prompt)
    assert response.status_code == 400, response.text
    text = response.text
    assert "Required input is missing" in text and "steps" in text
    assert "positional argument" not in text


def test_fewer_frames_than_workers_is_refused_at_validation_with_the_default_pool(client):
    prompt = tiny_job(frames=1)
    del prompt["4"]["inputs"]["pool"]  # the default pool: 2 CPU workers on this machine
    messages = _validation_errors(client, prompt)
    assert any("1 frames but the pool has 2 workers" in m for m in messages), messages


def test_fewer_frames_than_a_connected_pool_has_workers_fails_before_any_worker_starts(host, client):
    # A Worker Pool node's devices are another node's value, which ComfyUI does not show to validation.
    prompt = tiny_job(frames=1)
    run = client.wait(client.queue(prompt), timeout=120)
    assert run.outcome == "execution_error", run.events
    error = run.of_type("execution_error")[0]["data"]
    assert error["node_id"] == "4"
    assert "1 frames but the pool has 2 workers" in error["exception_message"]
    assert host.get_json("/system_stats")["system"]


def test_more_global_frames_than_the_video_runs(client):
    prompt = tiny_job(frames=4, seed=41)
    prompt["2"]["inputs"]["global_frames"] = 64  # "up to G": every frame of the short video
    run = client.wait(client.queue(prompt), timeout=300)
    assert run.outcome == "execution_success", run.events


def test_a_video_too_large_for_the_memory_is_refused_by_the_workers_and_the_pool_stays_warm(host, client):
    # 100,000 frames at 64x64 would need tens of GiB per worker for its steps: refused before any step.
    prompt = tiny_job(frames=100_000, seed=41)
    prompt["4"]["inputs"]["return_images"] = False
    run = client.wait(client.queue(prompt), timeout=300)
    assert run.outcome == "execution_error", run.events
    message = run.of_type("execution_error")[0]["data"]["exception_message"]
    assert "InsufficientMemoryError" in message and "GiB per worker (50000 frames per worker at 64x64" in message
    assert "Use more workers so each holds fewer frames (about " in message and "fit per worker now)" in message
    pool = requests.get(f"{host.url}/video_infinity/pool", timeout=30).json()
    run = client.wait(client.queue(tiny_job(seed=42)), timeout=300)
    assert run.outcome == "execution_success", run.events
    assert requests.get(f"{host.url}/video_infinity/pool", timeout=30).json()["starts"] == pool["starts"]


def test_cancel_before_the_first_step_of_a_huge_video_stops_it_and_the_next_prompt_runs(host, client):
    # 20,000 frames (admitted: about 3 GiB per worker): the workers spend a long time before step 1 ends
    # (the starting noise, then a step far longer than the cancel's grace), and Cancel must not wait for it.
    client.wait(client.queue(tiny_job(seed=45)), timeout=300)  # a warm pool: the Cancel lands in the job
    starts = requests.get(f"{host.url}/video_infinity/pool", timeout=30).json()["starts"]
    prompt = tiny_job(frames=20_000, seed=43)
    prompt["4"]["inputs"]["return_images"] = False
    prompt_id = client.queue(prompt)
    client.wait_for_event(prompt_id, lambda e: e["type"] == "executing" and e["data"]["node"] == "4", 120)
    time.sleep(3)
    asked = time.monotonic()
    assert requests.post(f"{host.url}/interrupt", timeout=10).status_code == 200
    run = client.wait(prompt_id, timeout=120)
    assert run.outcome == "execution_interrupted", run.events
    # The workers look for the request between chunks of every layer, projections and norms included; what
    # is left is the longest single operation at 10,000 frames per worker, on 2 cores shared with the server
    # (0.1 to 0.9 s measured with the Cancel sent 1 to 8 s into the job).
    assert run.of_type("execution_interrupted")[0]["t"] - asked < 3
    # Stopped by the workers themselves, not by force (which would restart them): the same warm pool runs
    # the next prompt.
    run = client.wait(client.queue(tiny_job(seed=44)), timeout=300)
    assert run.outcome == "execution_success", run.events
    assert requests.get(f"{host.url}/video_infinity/pool", timeout=30).json()["starts"] == starts


def test_worker_error_is_the_node_error_and_the_next_prompt_succeeds(host, client):
    prompt = tiny_job(seed=51)
    prompt["1"]["inputs"]["model_name"] = BROKEN_MODEL
    run = client.wait(client.queue(prompt), timeout=300)
    assert run.outcome == "execution_error", run.events
    error = run.of_type("execution_error")[0]["data"]
    assert error["node_id"] == "4"
    message = error["exception_message"]
    assert "worker rank" in message and "diffusion_pytorch_model.safetensors" in message, message
    run = client.wait(client.queue(tiny_job(seed=52)), timeout=300)
    assert run.outcome == "execution_success", run.events


def test_pool_panel_routes(host, client):
    run = client.wait(client.queue(tiny_job(seed=31)), timeout=300)
    assert run.outcome == "execution_success"
    status = requests.get(f"{host.url}/video_infinity/pool", timeout=30).json()
    assert status["state"] != "stopped" and status["devices"] == ["cpu", "cpu"]
    assert status["machine"]["ram_total"] > 0
    assert requests.post(f"{host.url}/video_infinity/unload", timeout=120).json() == {"stopped": True}
    assert requests.get(f"{host.url}/video_infinity/pool", timeout=30).json()["state"] == "stopped"
    run = client.wait(client.queue(tiny_job(seed=32)), timeout=300)  # a fresh pool starts on demand
    assert run.outcome == "execution_success", run.events
    # The Unload node does the same from a graph
    run = client.wait(client.queue({"9": {"class_type": "VideoInfinityUnload", "inputs": {}}}), timeout=120)
    assert run.outcome == "execution_success", run.events
    assert client.history(run.prompt_id)["outputs"]["9"]["text"] == ["workers stopped, memory freed"]
    assert requests.get(f"{host.url}/video_infinity/pool", timeout=30).json()["state"] == "stopped"


def test_help_pages_at_the_url_the_front_end_asks(host):
    # The front end cuts the module path at dots: custom_nodes.Video-Infinity.Clip-Parallel-Pack -> "Video-Infinity"
    prefix = comfy_host.PACK_FOLDER.split(".")[0]
    for node in NODES:
        response = requests.get(f"{host.url}/extensions/{prefix}/docs/{node}.md", timeout=10)
        assert response.status_code == 200, node
        assert response.text.startswith("# ")
    assert requests.get(f"{host.url}/extensions/{prefix}/docs/..%2F..%2F__init__.py", timeout=10).status_code == 404


def test_example_workflows_are_templates(host):
    templates = requests.get(f"{host.url}/workflow_templates", timeout=10).json()
    assert set(templates[comfy_host.PACK_FOLDER]) == {"text_to_video", "multi_prompt", "wan_t2v", "wan_i2v", "ltxv_t2v"}
    thumbnail = requests.get(
        f"{host.url}/api/workflow_templates/{comfy_host.PACK_FOLDER}/text_to_video.jpg", timeout=10
    )  # this front end asks for <template>.jpg
    assert thumbnail.status_code == 200 and thumbnail.content[:3] == b"\xff\xd8\xff"


@pytest.mark.faults
def test_kill_9_of_a_server_leaves_no_workers_and_its_rendezvous_folder_is_removed_later(host, client, tmp_path):
    """A second ComfyUI (the pack only, the demo model) is killed with SIGKILL mid-life: its workers follow it,
    this server keeps serving, and the next pool start here removes the dead server's temporary folder. It
    runs with --disable-metadata, which its Save Video honours as core's does."""
    import os
    import signal
    import tempfile
    from pathlib import Path

    import psutil
    from comfy_client import ComfyClient

    other_base = comfy_host.prepare_base(tmp_path / "second-base")
    other = comfy_host.start_server(other_base, extra_args=("--disable-metadata",))
    try:
        other.wait_ready()
        prompt = tiny_job(seed=61)
        prompt["1"]["inputs"]["model_name"] = "tiny-shapes-t2v"
        other_client = ComfyClient(other.url)
        try:
            run = other_client.wait(other_client.queue(prompt), timeout=300)
            assert run.outcome == "execution_success"
            saved = other_client.history(run.prompt_id)["outputs"]["5"]["images"][0]
        finally:
            other_client.close()
        with av.open(str(other_base / "output" / saved["subfolder"] / saved["filename"])) as container:
            assert "prompt" not in container.metadata and "workflow" not in container.metadata
        workers = [w["pid"] for w in other.get_json("/video_infinity/pool")["workers"]]
        folders = list(Path(tempfile.gettempdir()).glob(f"video-infinity-pool-{other.process.pid}-*"))
        assert len(workers) == 2 and folders
        os.kill(other.process.pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and any(psutil.pid_exists(p) for p in workers):
            time.sleep(0.1)
        assert not [p for p in workers if psutil.pid_exists(p)], "the killed server's workers outlived it"
    finally:
        other.stop()
    assert host.alive()
    assert requests.post(f"{host.url}/video_infinity/unload", timeout=120).status_code == 200
    run = client.wait(client.queue(tiny_job(seed=62)), timeout=300)
    assert run.outcome == "execution_success", run.events
    assert not [f for f in folders if f.exists()], "the dead server's rendezvous folder was left behind"
