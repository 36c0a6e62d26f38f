"""A small ComfyUI API client for the tests: POST /prompt, follow the websocket, read /history."""

from __future__ import annotations

import json
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import requests
import websocket

TERMINAL = ("execution_success", "execution_error", "execution_interrupted")
PREVIEW_IMAGE = 1  # ComfyUI's binary event type: 4 bytes of type, 4 of image format, then the image


@dataclass
class Run:
    prompt_id: str
    events: list[dict[str, Any]] = field(default_factory=list)  # {"type", "data", "t"} in arrival order

    def of_type(self, kind: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e["type"] == kind]

    @property
    def outcome(self) -> str | None:
        ends = [e["type"] for e in self.events if e["type"] in TERMINAL]
        return ends[-1] if ends else None


class ComfyClient:
    """One websocket per client id; messages are filed by prompt id as they arrive (in a thread)."""

    def __init__(self, url: str):
        self.url = url
        self.client_id = uuid.uuid4().hex
        self.runs: dict[str, Run] = {}
        self.binary: list[tuple[float, bytes]] = []  # (arrival, frame) of every binary frame
        self._lock = threading.Lock()
        self._ws = websocket.create_connection(
            url.replace("http", "ws", 1) + f"/ws?clientId={self.client_id}", timeout=5
        )
        self._closed = False
        self._thread = threading.Thread(target=self._listen, daemon=True)
        self._thread.start()

    def _listen(self) -> None:
        while not self._closed:
            try:
                message = self._ws.recv()
            except websocket.WebSocketTimeoutException:
                continue
            except Exception:  # noqa: BLE001 - socket closed at the end of a test
                return
            if not message:
                return  # the server closed the socket
            if not isinstance(message, str):
                with self._lock:  # binary frames: previews and progress text, which name no prompt
                    self.binary.append((time.monotonic(), message))
                continue
            data = json.loads(message)
            prompt_id = (data.get("data") or {}).get("prompt_id")
            if prompt_id is None:
                continue
            with self._lock:
                run = self.runs.setdefault(prompt_id, Run(prompt_id))
                run.events.append({"type": data["type"], "data": data["data"], "t": time.monotonic()})

    def previews(self, run: Run) -> list[bytes]:
        """The preview images (JPEG or PNG bytes) that arrived while `run` executed, in order."""
        start = run.of_type("execution_start")[0]["t"]
        end = run.events[-1]["t"]
        with self._lock:
            frames = [frame for t, frame in self.binary if start <= t <= end]
        return [frame[8:] for frame in frames if int.from_bytes(frame[:4], "big") == PREVIEW_IMAGE]

    def close(self) -> None:
        self._closed = True
        self._ws.close()

    def post_prompt(self, prompt: dict[str, Any], workflow: dict[str, Any] | None = None) -> requests.Response:
        """POST /prompt; `workflow`: the editor's graph, sent as the editor sends it (extra_pnginfo)."""
        body: dict[str, Any] = {"prompt": prompt, "client_id": self.client_id}
        if workflow is not None:
            body["extra_data"] = {"extra_pnginfo": {"workflow": workflow}}
        return requests.post(f"{self.url}/prompt", json=body, timeout=60)

    def queue(self, prompt: dict[str, Any], workflow: dict[str, Any] | None = None) -> str:
        response = self.post_prompt(prompt, workflow)
        assert response.status_code == 200, response.text
        prompt_id = response.json()["prompt_id"]
        with self._lock:
            self.runs.setdefault(prompt_id, Run(prompt_id))
        return prompt_id

    def wait(self, prompt_id: str, timeout: float = 300.0) -> Run:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                run = self.runs[prompt_id]
                if run.outcome:
                    return run
            time.sleep(0.1)
        raise TimeoutError(f"prompt {prompt_id} did not finish in {timeout} s; events: {self.runs[prompt_id].events}")

    def wait_for_event(self, prompt_id: str, predicate, timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                for event in self.runs[prompt_id].events:
                    if predicate(event):
                        return event
                if self.runs[prompt_id].outcome:
                    raise AssertionError(f"prompt ended ({self.runs[prompt_id].outcome}) before the event came")
            time.sleep(0.05)
        raise TimeoutError(f"no matching event in {timeout} s: {self.runs[prompt_id].events}")

    def history(self, prompt_id: str, timeout: float = 30.0) -> dict[str, Any]:
        """The prompt's history entry; ComfyUI files it just after it sends execution_success."""
        deadline = time.monotonic() + timeout
        while True:
            entry = requests.get(f"{self.url}/history/{prompt_id}", timeout=30).json()
            if prompt_id in entry or time.monotonic() > deadline:
                return entry[prompt_id]
            time.sleep(0.2)
