"""The Clip-Parallel KSampler on ComfyUI's own Wan models, through /prompt on the real server: core loader
nodes (UNETLoader, LoraLoaderModelOnly, VAELoader, WanImageToVideo), tiny random Wan weights, CPU workers.

Wan's text encoder cannot run here, so a test-only node (installed by conftest, not shipped) emits
CONDITIONING of Wan's width in place of CLIPLoader + CLIPTextEncode."""

from __future__ import annotations

import copy
import os
import socket
import subprocess
import sys
from pathlib import Path

import av
import numpy as np
import pytest
import requests
from conftest import AGENT_TOKEN, api_workflow
from safetensors.numpy import load_file

from support.tiny_wan import TINY_WAN_FILES

pytestmark = [pytest.mark.comfy, pytest.mark.wan]
REPO = Path(__file__).resolve().parents[2]
T2V = TINY_WAN_FILES["t2v"].split("/")[-1]
I2V = TINY_WAN_FILES["i2v"].split("/")[-1]
VAE = TINY_WAN_FILES["vae"].split("/")[-1]
LORA = TINY_WAN_FILES["lora"].split("/")[-1]
TI2V = TINY_WAN_FILES["ti2v"].split("/")[-1]
FUN_CONTROL = TINY_WAN_FILES["fun_control"].split("/")[-1]
CAMERA = TINY_WAN_FILES["camera"].split("/")[-1]
VACE = TINY_WAN_FILES["vace"].split("/")[-1]
T2V_FP8 = TINY_WAN_FILES["t2v_fp8"].split("/")[-1]
T2V_MIXED = TINY_WAN_FILES["t2v_mixed"].split("/")[-1]
LENGTH = 17  # video frames: 5 latent frames
FULL_WINDOW = {"local_window": 8, "global_frames": 0, "phase_bias": False}
DUAL_SCOPE = {"local_window": 1, "global_frames": 2, "phase_bias": False}


def conditioning(text: str, width: int = 4096) -> dict:
    return {"class_type": "VideoInfinityTestConditioning", "inputs": {"text": text, "width": width}}


def tiny(workflow: str = "wan_t2v", devices: str = "cpu:2", steps: int = 2, **sampler) -> dict:
    """The shipped Wan workflow with tiny files, test conditioning, a 64x64 video and CPU workers."""
    prompt = copy.deepcopy(api_workflow(workflow))
    by_type = {node["class_type"]: key for key, node in prompt.items()}
    for key in [
        k for k, node in prompt.items() if node["class_type"] in ("CLIPLoader", "CLIPVisionLoader", "CLIPVisionEncode")
    ]:
        del prompt[key]
    encodes = sorted(k for k, node in prompt.items() if node["class_type"] == "CLIPTextEncode")
    prompt[encodes[0]] = conditioning("a red circle moving right")
    prompt[encodes[1]] = conditioning("blurry")
    prompt[by_type["UNETLoader"]]["inputs"]["unet_name"] = I2V if workflow == "wan_i2v" else T2V
    prompt[by_type["VAELoader"]]["inputs"]["vae_name"] = VAE
    latent = by_type.get("EmptyHunyuanLatentVideo") or by_type["WanImageToVideo"]
    prompt[latent]["inputs"].update(width=64, height=64, length=LENGTH)
    prompt[latent]["inputs"].pop("clip_vision_output", None)
    prompt[by_type["VideoInfinityWorkerPool"]]["inputs"]["devices"] = devices
    sampler_key = by_type["VideoInfinityClipParallelKSampler"]
    prompt[sampler_key]["inputs"].update(steps=steps, sampler_name="euler", **sampler)
    prompt[by_type["VAEDecodeTiled"]]["inputs"].update(tile_size=64, overlap=0)
    return prompt


def save_latent(prompt: dict, key: str, source: str) -> None:
    prompt[key] = {"class_type": "SaveLatent", "inputs": {"samples": [source, 0], "filename_prefix": f"wan-test/{key}"}}


def core_sampler(prompt: dict, key: str, model: str, latent: list, positive: list, negative: list) -> None:
    """Core KSampler with the same settings as the pack's sampler in `prompt`."""
    ours = next(node["inputs"] for node in prompt.values() if node["class_type"] == "VideoInfinityClipParallelKSampler")
    prompt[key] = {
        "class_type": "KSampler",
        "inputs": {"model": [model, 0], "positive": positive, "negative": negative, "latent_image": latent,
                   "seed": ours["seed"], "steps": ours["steps"], "cfg": ours["cfg"], "sampler_name": ours["sampler_name"],
                   "scheduler": ours["scheduler"], "denoise": 1.0},
    }  # fmt: skip


def our_sampler(prompt: dict, key: str, model: str, attention: dict, devices: str) -> None:
    """Another Clip-Parallel KSampler in `prompt`, like the workflow's, with its own attention and pool."""
    template = next(k for k, node in prompt.items() if node["class_type"] == "VideoInfinityClipParallelKSampler")
    attention_key, pool_key = f"{key}a", f"{key}p"
    base_attention = next(node for node in prompt.values() if node["class_type"] == "VideoInfinityDualScopeAttention")
    base_pool = next(node for node in prompt.values() if node["class_type"] == "VideoInfinityWorkerPool")
    prompt[attention_key] = copy.deepcopy(base_attention)
    prompt[attention_key]["inputs"].update(attention)
    prompt[pool_key] = copy.deepcopy(base_pool)
    prompt[pool_key]["inputs"]["devices"] = devices
    prompt[key] = copy.deepcopy(prompt[template])
    prompt[key]["inputs"].update(model=[model, 0], attention=[attention_key, 0], pool=[pool_key, 0])


def latents(host, client, run, keys: list[str]) -> dict[str, np.ndarray]:
    outputs = client.history(run.prompt_id)["outputs"]
    found = {}
    for key in keys:
        saved = outputs[key]["latents"][0]
        found[key] = load_file(str(host.base / "output" / saved["subfolder"] / saved["filename"]))["latent_tensor"]
    return found


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def failure(run) -> str:
    errors = run.of_type("execution_error")
    if not errors:
        return str(run.events)[-3000:]
    data = errors[0]["data"]
    return (
        f"node {data.get('node_type')}: {data.get('exception_type')}: {data.get('exception_message')}\n"
        + "".join(data.get("traceback", []))[-3000:]
    )


def core_and_three_of_ours(
    prompt: dict, model: str, latent: list, positive: list, negative: list, unused: tuple[str, ...]
) -> None:
    """Core KSampler (saved as latent 30) and three of ours on the same inputs (31: one worker, full window;
    32: one worker, dual scope; 33: two workers, dual scope), with the workflow's nodes `unused` removed."""
    core_sampler(prompt, "22", model, latent, positive, negative)
    for key, attention, devices in (
        ("23", FULL_WINDOW, "cpu:1"),
        ("24", DUAL_SCOPE, "cpu:1"),
        ("25", DUAL_SCOPE, "cpu:2"),
    ):
        our_sampler(prompt, key, model, attention, devices)
        prompt[key]["inputs"].update(positive=positive, negative=negative, latent_image=latent)
    for key, source in (("30", "22"), ("31", "23"), ("32", "24"), ("33", "25")):
        save_latent(prompt, key, source)
    for key in unused:
        del prompt[key]


def equal_to_core_and_on_two_workers(host, client, prompt: dict, label: str) -> None:
    """Runs a prompt whose saved latents are 30 (core KSampler), 31 (ours, one worker, full window), 32 (ours,
    one worker, dual scope) and 33 (ours, two workers, dual scope), and checks them against each other."""
    run = client.wait(client.queue(prompt), timeout=900)
    assert run.outcome == "execution_success", failure(run)
    found = latents(host, client, run, ["30", "31", "32", "33"])
    error = relative(found["31"], found["30"])
    print(f"{label}, one worker, full window: relative difference to core KSampler {error:.2e}")
    assert error < 1e-5
    assert relative(found["33"], found["32"]) < 1e-5, "2 workers must give the 1-worker video"
    assert relative(found["32"], found["31"]) > 1e-3, "the dual-scope window should change the result"


def relative(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).max() / np.abs(b).max())


def test_wan_t2v_workflow_runs_to_a_saved_video(host, client):
    prompt = tiny()
    prompt["8"]["inputs"].update(DUAL_SCOPE)
    run = client.wait(client.queue(prompt), timeout=600)
    assert run.outcome == "execution_success", failure(run)
    progress = [e for e in run.of_type("progress") if e["data"]["node"] == "10"]
    assert progress and progress[-1]["data"]["value"] == progress[-1]["data"]["max"]
    previews = client.previews(run)  # the Clip-Parallel KSampler's live previews, as core KSampler's
    assert previews and all(image[:2] == b"\xff\xd8" for image in previews), f"{len(previews)} previews"
    saved = client.history(run.prompt_id)["outputs"]["13"]["images"][0]
    with av.open(str(host.base / "output" / saved["subfolder"] / saved["filename"])) as container:
        frames = [frame for frame in container.decode(video=0)]
    assert (len(frames), frames[0].height, frames[0].width) == (LENGTH, 64, 64)


def test_lora_travels_and_one_worker_with_a_full_window_equals_core_ksampler(host, client):
    prompt = tiny(devices="cpu:1")
    prompt["20"] = {
        "class_type": "LoraLoaderModelOnly",
        "inputs": {"model": ["1", 0], "lora_name": LORA, "strength_model": 1.0},
    }
    prompt["21"] = {"class_type": "ModelSamplingSD3", "inputs": {"model": ["20", 0], "shift": 8.0}}
    core_sampler(prompt, "22", "21", ["7", 0], ["4", 0], ["5", 0])
    our_sampler(prompt, "23", "21", FULL_WINDOW, "cpu:1")
    our_sampler(prompt, "24", "2", FULL_WINDOW, "cpu:1")  # the same without the LoRA
    for key, source in (("30", "22"), ("31", "23"), ("32", "24")):
        save_latent(prompt, key, source)
    for key in ("10", "11", "12", "13"):  # the workflow's own sampler and decode are not needed here
        del prompt[key]
    run = client.wait(client.queue(prompt), timeout=600)
    assert run.outcome == "execution_success", failure(run)
    found = latents(host, client, run, ["30", "31", "32"])
    error = relative(found["31"], found["30"])
    print(f"LoRA, one worker, full window: relative difference to core KSampler {error:.2e}")
    assert error < 1e-5
    assert relative(found["32"], found["31"]) > 1e-3, "the LoRA should change the result"


@pytest.mark.parametrize(
    "weights",
    [T2V_FP8, pytest.param(T2V_MIXED, marks=pytest.mark.slow)],  # mixed precision: also in test_wan_engine
    ids=["scaled-fp8", "mixed-precision"],
)
def test_scaled_fp8_weights_with_a_lora_equal_core_ksampler_and_are_the_same_on_two_workers(host, client, weights):
    """A *_fp8_scaled file as UNETLoader loads it by default (fp8 weights with a scale per layer), and a file
    with quantization metadata, whose layers ComfyUI holds quantized (as newer ComfyUI holds scaled-fp8 ones)."""
    prompt = tiny(devices="cpu:1")
    prompt["1"]["inputs"].update(unet_name=weights, weight_dtype="default")
    prompt["20"] = {
        "class_type": "LoraLoaderModelOnly",
        "inputs": {"model": ["1", 0], "lora_name": LORA, "strength_model": 1.0},
    }
    core_and_three_of_ours(prompt, "20", ["7", 0], ["4", 0], ["5", 0], unused=("10", "11", "12", "13"))
    equal_to_core_and_on_two_workers(host, client, prompt, f"{weights} with a LoRA")


def test_weights_cast_to_fp8_by_unetloader_with_a_lora_equal_core_ksampler_and_two_workers(host, client):
    """UNETLoader's weight_dtype fp8_e4m3fn, how a 14B Wan fits a 24 GB GPU: fp8 weights computed in a wider dtype."""
    prompt = tiny(devices="cpu:1")
    prompt["1"]["inputs"].update(weight_dtype="fp8_e4m3fn")
    prompt["20"] = {
        "class_type": "LoraLoaderModelOnly",
        "inputs": {"model": ["1", 0], "lora_name": LORA, "strength_model": 1.0},
    }
    core_and_three_of_ours(prompt, "20", ["7", 0], ["4", 0], ["5", 0], unused=("10", "11", "12", "13"))
    equal_to_core_and_on_two_workers(host, client, prompt, "fp8_e4m3fn with a LoRA")


def test_wan_i2v_equals_core_and_is_the_same_on_two_workers(host, client):
    from PIL import Image

    gradient = np.linspace(0, 255, 64 * 64 * 3).reshape(64, 64, 3).astype(np.uint8)
    Image.fromarray(gradient).save(host.base / "input" / "example.png")
    prompt = tiny("wan_i2v", devices="cpu:1")
    core_and_three_of_ours(prompt, "2", ["10", 2], ["10", 0], ["10", 1], unused=("13", "14", "15", "16"))
    equal_to_core_and_on_two_workers(host, client, prompt, "I2V")


LTXV = TINY_WAN_FILES["ltxv"].split("/")[-1]


def ltxv_prompt(latent: dict | None = None) -> dict:
    """Core KSampler and three of ours on the tiny LTX-Video, set up by the shipped LTX-Video workflow's core
    nodes: ModelSamplingLTXV (its shift from the latent's size), LTXVConditioning (frame rate 24, not the
    default 25) and text with T5's attention mask. The tiny model has no VAE (UNETLoader in place of the
    checkpoint loader); `latent` replaces the workflow's latent node, which is otherwise made 41 frames of 128x128."""
    prompt = copy.deepcopy(api_workflow("ltxv_t2v"))
    prompt["1"] = {"class_type": "UNETLoader", "inputs": {"unet_name": LTXV, "weight_dtype": "default"}}
    del prompt["3"]  # the text encoder: test conditioning below
    prompt["4"] = conditioning("a red circle moving right")
    prompt["5"] = conditioning("blurry")
    for key in ("4", "5"):
        prompt[key]["inputs"]["attention_mask"] = True
    prompt["7"] = latent or prompt["7"]
    prompt["7"]["inputs"].update({} if latent else {"width": 128, "height": 128, "length": 41})
    prompt["10"]["inputs"].update(steps=2)
    core_and_three_of_ours(prompt, "2", ["7", 0], ["6", 0], ["6", 1], unused=("10", "11", "12", "13"))
    return prompt


@pytest.mark.ltxv
def test_ltx_video_equals_core_and_is_the_same_on_two_workers(host, client):
    equal_to_core_and_on_two_workers(host, client, ltxv_prompt(), "LTX-Video")


@pytest.mark.ltxv
def test_ltx_video_text_without_its_attention_mask_is_refused_by_name(host, client):
    # Core KSampler fails inside the model on such text (a missing positional argument); ours says what is wrong.
    prompt = ltxv_prompt()
    for key in ("4", "5"):
        prompt[key]["inputs"]["attention_mask"] = False
    for key in ("22", "30"):  # core KSampler and its save: only ours run
        del prompt[key]
    run = client.wait(client.queue(prompt), timeout=300)
    assert run.outcome == "execution_error", run.events
    message = run.of_type("execution_error")[0]["data"]["exception_message"]
    assert "conditioning carries no 'attention_mask'" in message and "T5-XXL" in message, message
    assert host.alive()


@pytest.mark.ltxv
@pytest.mark.slow  # the image frame kept: Wan 2.2 TI2V below; LTX-Video sampled: the text-to-video test
def test_ltx_video_image_to_video_keeps_the_image_frame_equals_core_and_two_workers(host, client):
    """A latent whose first frame is kept by a noise mask, as LTXVImgToVideo makes one (its VAE is too big for
    tests): that frame also gets its own timestep inside LTX-Video."""
    latent = {"class_type": "VideoInfinityTestImageLatent", "inputs": {"channels": 128, "frames": 6, "height": 4,
                                                                        "width": 4, "seed": 3}}  # fmt: skip
    prompt = ltxv_prompt(latent)
    save_latent(prompt, "34", "7")
    run = client.wait(client.queue(prompt), timeout=900)
    assert run.outcome == "execution_success", failure(run)
    found = latents(host, client, run, ["30", "31", "32", "33", "34"])
    assert found["31"].shape == (1, 128, 6, 4, 4)
    assert relative(found["31"], found["30"]) < 1e-5
    assert relative(found["33"], found["32"]) < 1e-5, "2 workers must give the 1-worker video"
    assert relative(found["32"], found["31"]) > 1e-3, "the dual-scope window should change the result"
    for key in ("31", "33"):  # the image frame comes back as it went in
        assert np.allclose(found[key][:, :, 0], found["34"][:, :, 0], atol=1e-5)


def control_prompt(host, unet: str, node: str, inputs: dict) -> dict:
    """Core KSampler and three of ours on `unet`, conditioned by a core Wan control node fed a 17-frame control
    video (and the image it repeats as `start_image` when the node takes one)."""
    from PIL import Image

    gradient = np.linspace(0, 255, 64 * 64 * 3).reshape(64, 64, 3).astype(np.uint8)
    Image.fromarray(gradient).save(host.base / "input" / "example.png")
    prompt = tiny(devices="cpu:1")
    prompt["1"]["inputs"]["unet_name"] = unet
    prompt["40"] = {"class_type": "LoadImage", "inputs": {"image": "example.png"}}
    prompt["41"] = {"class_type": "RepeatImageBatch", "inputs": {"image": ["40", 0], "amount": LENGTH}}
    prompt["42"] = {"class_type": node, "inputs": {
        "positive": ["4", 0], "negative": ["5", 0], "vae": ["6", 0], "width": 64, "height": 64, "length": LENGTH,
        "batch_size": 1, "control_video": ["41", 0], **inputs}}  # fmt: skip
    core_and_three_of_ours(prompt, "2", ["42", 2], ["42", 0], ["42", 1], unused=("10", "11", "12", "13"))
    return prompt


def test_wan_fun_control_equals_core_and_is_the_same_on_two_workers(host, client):
    """Wan 2.1 Fun Control: core WanFunControlToVideo puts a control video and a start image (32 channels, one
    latent per frame) into the conditioning; each worker gets its own frames of it."""
    prompt = control_prompt(host, FUN_CONTROL, "WanFunControlToVideo", {"start_image": ["40", 0]})
    equal_to_core_and_on_two_workers(host, client, prompt, "Fun Control")


def test_wan_vace_equals_core_and_is_the_same_on_two_workers(host, client):
    """Wan 2.1 VACE: core WanVaceToVideo's control latents and masks (lists of per-frame tensors in the
    conditioning) are cut per worker; the VACE blocks' self-attention gets the same frame windows."""
    prompt = control_prompt(host, VACE, "WanVaceToVideo", {"strength": 1.0})
    equal_to_core_and_on_two_workers(host, client, prompt, "VACE")


def test_wan22_ti2v_keeps_the_image_frame_equals_core_and_is_the_same_on_two_workers(host, client):
    """Wan 2.2 TI2V 5B: 48 latent channels, and a noise mask that keeps the first latent frame (the image),
    which also gives that frame its own timestep inside the model."""
    prompt = tiny(devices="cpu:1")
    prompt["1"]["inputs"]["unet_name"] = TI2V
    prompt["7"] = {"class_type": "VideoInfinityTestImageLatent", "inputs": {"channels": 48, "frames": 5, "height": 4, "width": 4,
                                                                            "seed": 3}}  # fmt: skip
    core_and_three_of_ours(prompt, "2", ["7", 0], ["4", 0], ["5", 0], unused=("10", "11", "12", "13"))
    save_latent(prompt, "34", "7")
    run = client.wait(client.queue(prompt), timeout=900)
    assert run.outcome == "execution_success", failure(run)
    found = latents(host, client, run, ["30", "31", "32", "33", "34"])
    assert found["31"].shape == (1, 48, 5, 4, 4)
    error = relative(found["31"], found["30"])
    print(f"TI2V, one worker, full window: relative difference to core KSampler {error:.2e}")
    # fp32 rounding through the sampling steps: 1.02e-5 on some CPUs, under 1e-5 on others. A wrong
    # attention or timestep moves it by more than 1e-3 (the dual-scope window below does).
    assert error < 2e-5
    assert relative(found["33"], found["32"]) < 1e-5, "2 workers must give the 1-worker video"
    assert relative(found["32"], found["31"]) > 1e-3, "the dual-scope window should change the result"
    for key in ("31", "33"):  # the image frame comes back as it went in; the others were sampled
        assert np.allclose(found[key][:, :, 0], found["34"][:, :, 0], atol=1e-5)
        assert np.abs(found[key][:, :, 1:]).max() > 0.1  # the sampled frames (zeros going in)


def test_a_batch_of_videos_and_a_batch_index_are_sampled_as_core_does(host, client):
    prompt = tiny(devices="cpu:1")
    prompt["7"]["inputs"]["batch_size"] = 2
    prompt["26"] = {"class_type": "LatentFromBatch", "inputs": {"samples": ["7", 0], "batch_index": 1, "length": 1}}
    core_and_three_of_ours(prompt, "2", ["7", 0], ["4", 0], ["5", 0], unused=("10", "11", "12", "13"))
    core_sampler(prompt, "27", "2", ["26", 0], ["4", 0], ["5", 0])  # the second video alone: noise number 1
    our_sampler(prompt, "28", "2", FULL_WINDOW, "cpu:1")
    prompt["28"]["inputs"]["latent_image"] = ["26", 0]
    for key, source in (("34", "27"), ("35", "28")):
        save_latent(prompt, key, source)
    run = client.wait(client.queue(prompt), timeout=900)
    assert run.outcome == "execution_success", failure(run)
    found = latents(host, client, run, ["30", "31", "32", "33", "34", "35"])
    assert found["31"].shape[0] == 2 and relative(found["31"][0], found["31"][1]) > 1e-3
    error = relative(found["31"], found["30"])
    print(f"batch of 2, one worker, full window: relative difference to core KSampler {error:.2e}")
    assert error < 1e-5
    assert relative(found["33"], found["32"]) < 1e-5, "2 workers must give the 1-worker videos"
    assert relative(found["35"], found["34"]) < 1e-5, "batch_index must pick the same noise as core"
    assert relative(found["35"][0], found["31"][1]) < 1e-5, "video 1 alone must equal video 1 of the batch"


def test_two_chained_samplers_equal_core_ksampler_advanced_chained(host, client):
    """Wan 2.2 A14B's high- and low-noise experts run as two chained samplers (here the same tiny model twice)."""
    prompt = tiny(devices="cpu:1")
    for key in ("10", "11", "12", "13"):
        del prompt[key]
    common = {"noise_seed": 5, "steps": 4, "cfg": 4.0, "sampler_name": "euler", "scheduler": "simple",
              "positive": ["4", 0], "negative": ["5", 0], "model": ["2", 0]}  # fmt: skip
    prompt["20"] = {"class_type": "KSamplerAdvanced", "inputs": dict(common, add_noise="enable", latent_image=["7", 0],
                    start_at_step=0, end_at_step=2, return_with_leftover_noise="enable")}  # fmt: skip
    prompt["21"] = {"class_type": "KSamplerAdvanced", "inputs": dict(common, add_noise="disable", latent_image=["20", 0],
                    start_at_step=2, end_at_step=10000, return_with_leftover_noise="disable")}  # fmt: skip
    ours = {"seed": 5, "steps": 4, "cfg": 4.0, "sampler_name": "euler", "scheduler": "simple", "denoise": 1.0,
            "positive": ["4", 0], "negative": ["5", 0], "model": ["2", 0], "attention": ["8", 0], "pool": ["9", 0]}  # fmt: skip
    prompt["8"]["inputs"].update(FULL_WINDOW)
    prompt["22"] = {"class_type": "VideoInfinityClipParallelKSampler", "inputs": dict(ours, add_noise=True,
                    latent_image=["7", 0], start_at_step=0, end_at_step=2, return_with_leftover_noise=True)}  # fmt: skip
    prompt["23"] = {"class_type": "VideoInfinityClipParallelKSampler", "inputs": dict(ours, add_noise=False,
                    latent_image=["22", 0], start_at_step=2, end_at_step=10000, return_with_leftover_noise=False)}  # fmt: skip
    save_latent(prompt, "30", "21")
    save_latent(prompt, "31", "23")
    run = client.wait(client.queue(prompt), timeout=600)
    assert run.outcome == "execution_success", failure(run)
    found = latents(host, client, run, ["30", "31"])
    error = relative(found["31"], found["30"])
    print(f"two chained samplers: relative difference to core KSamplerAdvanced {error:.2e}")
    assert error < 1e-5


def test_cancel_stops_every_worker_and_the_warm_pool_runs_the_next_prompt(host, client):
    import time

    import requests

    prompt = tiny(steps=400)
    prompt["8"]["inputs"].update(DUAL_SCOPE)
    for key in ("11", "12", "13"):
        del prompt[key]
    save_latent(prompt, "30", "10")
    prompt_id = client.queue(prompt)
    try:
        client.wait_for_event(
            prompt_id, lambda e: e["type"] == "progress" and e["data"]["node"] == "10" and e["data"]["value"] >= 1, 300
        )
    except AssertionError:
        raise AssertionError(failure(client.wait(prompt_id))) from None
    asked = time.monotonic()
    assert requests.post(f"{host.url}/interrupt", timeout=10).status_code == 200
    run = client.wait(prompt_id, timeout=60)
    assert run.outcome == "execution_interrupted", failure(run)
    stopped = run.of_type("execution_interrupted")[0]["t"] - asked
    print(f"Wan cancel: interrupted {stopped:.2f} s after the request")
    assert stopped < 15
    pool = requests.get(f"{host.url}/video_infinity/pool", timeout=10).json()
    assert pool["state"] == "ready", pool
    prompt["10"]["inputs"]["steps"] = 2
    run = client.wait(client.queue(prompt), timeout=300)
    assert run.outcome == "execution_success", failure(run)


@pytest.mark.parametrize(
    "change,message",
    [
        (lambda p: p["4"]["inputs"].update(width=768), "conditioning has width 768 but the model takes 4096"),
        (
            lambda p: (p["7"]["inputs"].update(length=1), p["8"]["inputs"].update(global_frames=1)),
            "at least one latent frame",
        ),
        (lambda p: p["1"]["inputs"].update(unet_name=CAMERA), "cannot run clip-parallel; supported: WAN21_T2V"),
        (
            lambda p: p.update(
                {"7": {"class_type": "EmptySD3LatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}}}
            ),
            "latent_image has shape (1, 16, 8, 8); a video latent",
        ),
    ],
    ids=["conditioning-of-another-model", "fewer-latent-frames-than-workers", "unsupported-family", "image-latent"],
)
def test_bad_wan_inputs_name_the_problem_and_the_server_stays_up(host, client, change, message):
    prompt = tiny()
    change(prompt)
    run = client.wait(client.queue(prompt), timeout=300)
    assert run.outcome == "execution_error", run.events
    error = run.of_type("execution_error")[0]["data"]
    assert error["node_id"] == "10" and message in error["exception_message"], error["exception_message"]
    assert host.alive()


@pytest.mark.slow  # the engine test of workers on other machines covers the transfer; this is the whole graph
def test_a_worker_pool_with_a_worker_on_another_machine_runs_wan(host, client):
    # The Worker Pool asks for one local worker and one remote: a node agent joins it (started on this machine,
    # as there is no second one here; its workers import the same ComfyUI). Same result as two local workers.
    port = free_port()
    joined = tiny(devices="cpu:1")
    pool = next(key for key, node in joined.items() if node["class_type"] == "VideoInfinityWorkerPool")
    joined[pool]["inputs"].update(remote_workers=1, join_address=f"127.0.0.1:{port}")
    sampler = next(key for key, node in joined.items() if node["class_type"] == "VideoInfinityClipParallelKSampler")
    save_latent(joined, "90", sampler)
    prompt_id = client.queue(joined)
    join = [sys.executable, "-m", "distributed.cli", "join", f"127.0.0.1:{port}", "--devices", "cpu:1", "--once"]
    agent = subprocess.Popen(join, cwd=REPO, env=dict(os.environ, VIDEO_INFINITY_TOKEN=AGENT_TOKEN))
    try:
        run = client.wait(prompt_id, timeout=300)
        assert run.outcome == "execution_success", failure(run)
        remote = latents(host, client, run, ["90"])["90"]
    finally:
        requests.post(f"{host.url}/video_infinity/unload", timeout=120)  # the next tests get local pools
        agent.wait(60)
    local = tiny(devices="cpu:2")
    save_latent(local, "90", sampler)
    run = client.wait(client.queue(local), timeout=300)
    assert run.outcome == "execution_success", failure(run)
    assert relative(remote, latents(host, client, run, ["90"])["90"]) < 1e-6
