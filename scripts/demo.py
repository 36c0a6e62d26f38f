"""The demo: a real ComfyUI with the pack, the example workflow queued through the API, progress in the terminal.

Installs the embedded ComfyUI if needed, starts it with the pack in custom_nodes/, queues
workflows/api/text_to_video.json with POST /prompt, follows the websocket (a progress bar per node, the
sampler's phase text), and prints the path of the mp4 it wrote.

    .venv/bin/python scripts/demo.py                      # the demo model, CPU workers (or every GPU)
    .venv/bin/python scripts/demo.py --frames 64 --devices cpu:2 --keep-serving
"""

from __future__ import annotations

import argparse
import json
import shutil
import struct
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import comfy_host  # noqa: E402

WORKFLOW = comfy_host.REPO / "workflows" / "api" / "text_to_video.json"
DEMO_OUTPUT = comfy_host.REPO / "artifacts" / "demo"
TEXT_EVENT = 3  # ComfyUI's binary websocket event carrying a node's progress text


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workflow", type=Path, default=WORKFLOW, help="an API-format workflow")
    parser.add_argument("--model", help="model_name for the loader (default: the workflow's, the demo model)")
    parser.add_argument("--prompt", help="prompt or prompt schedule for the sampler")
    parser.add_argument("--frames", type=int)
    parser.add_argument("--steps", type=int)
    parser.add_argument("--seed", type=int)
    parser.add_argument("--devices", help="Worker Pool devices, e.g. cpu:2, cuda:all (default: the workflow's)")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--keep-serving", action="store_true", help="leave ComfyUI running after the video")
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds to wait for the video")
    return parser.parse_args()


def apply_overrides(prompt: dict, args: argparse.Namespace) -> dict:
    by_type = {node["class_type"]: node["inputs"] for node in prompt.values()}
    loader = by_type.get("VideoInfinityLoadModel", {})
    sampler = by_type.get("VideoInfinityClipParallelSampler", {})
    pool = by_type.get("VideoInfinityWorkerPool", {})
    attention = by_type.get("VideoInfinityDualScopeAttention", {})
    if args.model:
        loader["model_name"] = args.model
    for key in ("prompt", "frames", "steps", "seed"):
        if getattr(args, key) is not None:
            sampler[key] = getattr(args, key)
    if args.devices:
        pool["devices"] = args.devices
    if attention and sampler.get("frames", 0) < attention.get("global_frames", 0):
        attention["global_frames"] = sampler["frames"]  # G may not exceed the video's length
    return prompt


class Terminal:
    """One line per node, redrawn in place: a bar for progress events plus the node's phase text."""

    def __init__(self, titles: dict[str, str]):
        self.titles = titles
        self.text: dict[str, str] = {}
        self.started = time.monotonic()

    def line(self, node: str, value: int | None = None, total: int | None = None) -> None:
        title = self.titles.get(node, node)
        bar = ""
        if value is not None and total:
            filled = int(30 * value / total)
            bar = f"[{'#' * filled}{'.' * (30 - filled)}] {value}/{total} "
        elapsed = time.monotonic() - self.started
        print(f"\r{elapsed:6.1f}s  {title[:40]:40} {bar}{self.text.get(node, '')}".ljust(120), end="", flush=True)

    def newline(self) -> None:
        print(flush=True)


def follow(ws, prompt_id: str, terminal: Terminal) -> str:
    """Reads the websocket until the prompt ends; returns the terminal event type."""
    current = None
    try:
        while True:
            message = ws.recv()
            if isinstance(message, bytes):
                if len(message) > 8 and struct.unpack(">I", message[:4])[0] == TEXT_EVENT:
                    size = struct.unpack(">I", message[4:8])[0]
                    node = message[8 : 8 + size].decode()
                    terminal.text[node] = message[8 + size :].decode(errors="replace")
                    terminal.line(node)
                continue
            event = json.loads(message)
            kind, data = event["type"], event.get("data") or {}
            if data.get("prompt_id") not in (None, prompt_id):
                continue
            if kind == "executing" and data.get("node") and data["node"] != current:
                if current is not None:
                    terminal.newline()
                current = data["node"]
                terminal.line(current)
            elif kind == "progress":
                terminal.line(data["node"], data["value"], data["max"])
            elif kind == "execution_error":
                terminal.newline()
                print(f"error in node {data.get('node_id')} ({data.get('node_type')}): {data.get('exception_message')}")
                return kind
            elif kind in ("execution_success", "execution_interrupted"):
                terminal.newline()
                return kind
    finally:
        ws.close()


def post_json(url: str, payload: dict) -> dict:
    request = urllib.request.Request(url, json.dumps(payload).encode(), {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as error:  # ComfyUI explains validation errors in the body
        raise SystemExit(f"ComfyUI refused the workflow: {error.read().decode(errors='replace')}") from error


def main() -> int:
    args = parse_args()
    began = time.monotonic()
    comfy_host.install()
    base = comfy_host.prepare_base()
    server = comfy_host.start_server(base, port=args.port or None, extra_args=comfy_host.LIVE_PREVIEWS)
    try:
        print(f"starting ComfyUI {comfy_host.COMFYUI_VERSION} (log: {server.log_path}) ...", flush=True)
        ready = server.wait_ready()
        print(f"ComfyUI ready at {server.url} after {ready:.0f} s", flush=True)
        prompt = apply_overrides(json.loads(args.workflow.read_text()), args)
        models = server.get_json("/video_infinity/models")["pipelines"]
        model = next(n["inputs"]["model_name"] for n in prompt.values() if n["class_type"] == "VideoInfinityLoadModel")
        if model not in models:
            raise SystemExit(
                f"model {model!r} is not installed; found {sorted(models) or 'none'}. Put a pipeline folder into "
                f"{base / 'models' / 'video_infinity'} or pass --model"
            )
        import websocket

        client_id = uuid.uuid4().hex
        # The websocket opens before the prompt is queued: ComfyUI does not replay events to late listeners.
        ws = websocket.create_connection(
            server.url.replace("http", "ws", 1) + f"/ws?clientId={client_id}", timeout=args.timeout
        )
        titles = {key: node.get("_meta", {}).get("title", node["class_type"]) for key, node in prompt.items()}
        queued = time.monotonic()
        prompt_id = post_json(f"{server.url}/prompt", {"prompt": prompt, "client_id": client_id})["prompt_id"]
        print(f"queued prompt {prompt_id}", flush=True)
        outcome = follow(ws, prompt_id, Terminal(titles))
        if outcome != "execution_success":
            print(f"the workflow ended with {outcome}; server log: {server.log_path}")
            return 1
        path = saved_video(server, prompt_id)
        DEMO_OUTPUT.mkdir(parents=True, exist_ok=True)
        copy = DEMO_OUTPUT / path.name
        shutil.copy2(path, copy)
        print(f"generated in {time.monotonic() - queued:.1f} s (total {time.monotonic() - began:.0f} s with start-up)")
        print(f"video: {copy}")
        if args.keep_serving:
            print(f"ComfyUI keeps serving at {server.url}; Ctrl-C stops it")
            while server.alive():
                time.sleep(1)
        return 0
    except KeyboardInterrupt:
        return 130
    finally:
        server.stop()


def saved_video(server: comfy_host.HostServer, prompt_id: str) -> Path:
    # ComfyUI files the history entry just after it announces success: wait for it briefly.
    deadline = time.monotonic() + 30
    while not (entry := server.get_json(f"/history/{prompt_id}")) and time.monotonic() < deadline:
        time.sleep(0.2)
    outputs = entry[prompt_id]["outputs"]
    for output in outputs.values():
        for item in output.get("images", []):
            if item["filename"].endswith(".mp4"):
                return server.base / "output" / item["subfolder"] / item["filename"]
    raise SystemExit(f"the workflow produced no mp4; outputs: {outputs}")


if __name__ == "__main__":
    sys.exit(main())
