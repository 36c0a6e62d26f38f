"""Every choice list and default the nodes, the command line and the engine share: the one place to change them."""

from __future__ import annotations

import os

# Schedulers of the engine's own sampling loop (docs/algorithm.md section 7).
SAMPLERS = ("ddim", "dpmpp_2m", "sde_dpmpp")
SAMPLER_HELP = "ddim (deterministic), dpmpp_2m, sde_dpmpp (the reference's)"
STOCHASTIC_SAMPLERS = ("sde_dpmpp",)

DTYPES = ("fp32", "fp16", "bf16")
# How a ComfyUI diffusion model's weights are held, by UNETLoader's own names (its weight_dtype): as the file
# has them, or cast to fp8 and computed in a wider dtype (fast: multiplied in fp8 where the GPU can).
WEIGHT_DTYPES = ("default", "fp8_e4m3fn", "fp8_e4m3fn_fast", "fp8_e5m2")

# Job defaults: the reference setting for the real UNet3D models (VideoCrafter2 at 512x320).
DEFAULT_WIDTH = 512
DEFAULT_HEIGHT = 320
DEFAULT_STEPS = 30
DEFAULT_CFG = 12.0
DEFAULT_SAMPLER = "sde_dpmpp"
DEFAULT_FPS = 8.0

# Upper limits: the nodes show them as widget ranges and the engine refuses jobs beyond them (every route).
MAX_FRAMES = 100_000
MAX_SIDE = 4096
MAX_STEPS = 1000  # the UNet3D schedulers' training timesteps: more steps than that cannot be scheduled
MAX_CFG = 100.0
MAX_FPS = 120.0
MAX_BLEND = 1000
# Dual-scope attention settings (P, G, conv halo, GroupNorm window, bias and scale ranges).
MAX_LOCAL_WINDOW = 256
MAX_GLOBAL_FRAMES = 1024
MAX_CONV_HALO = 64
MAX_NORM_WINDOW = 4096
MAX_TIMESTEP = 1000.0
MAX_BIAS = 100.0
MAX_ATTN_SCALE = 10.0
COMFY_MAX_STEPS = 10000  # core KSampler's limit, for jobs run with ComfyUI's samplers
SIZE_STEP = 8  # the VAE downsamples by 8

AUTO_DEVICES = "auto"
AUTO_SHARES = "auto"  # frame_shares that follows the workers' measured speeds (pool.balance)

# The longest one rank waits for the others inside one exchange. Dead and stopped workers are found by
# heartbeat within seconds, so this only bounds a live worker that never arrives; it must outlast the
# largest honest gap between ranks: one rank loading a big model slower than the others (the job's first
# exchange waits for every load), or decoding a longer share of frames before the gather.
DEFAULT_COLLECTIVE_TIMEOUT_S = 300.0


def gpu_count() -> int:
    """CUDA devices this process can use (0 without CUDA)."""
    import torch  # late: ComfyUI and the command line import this module before they need torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def auto_devices() -> str:
    """What "auto" means everywhere: every GPU, else two CPU workers (one on a one-core machine)."""
    return "cuda:all" if gpu_count() else f"cpu:{min(2, os.cpu_count() or 1)}"


def expand_devices(text: str | None) -> str:
    """Normalises a device text; empty or "auto" becomes auto_devices()."""
    text = (text or "").strip().lower().replace(" ", "")
    return auto_devices() if text in ("", AUTO_DEVICES) else text


# Settings a model folder may recommend in its video_infinity.json ({"recommended": {...}}), used by the
# command line for whatever it is not told: the demo model, for one, is trained at 64x64 with DDIM. An
# "attention" object in the same section holds the dual-scope settings measured best for the model.
MODEL_RECOMMENDED = ("width", "height", "sampler", "steps", "cfg", "fps")
MODEL_SETTINGS_FILE = "video_infinity.json"


def recommended_settings(folder: str | os.PathLike[str]) -> dict[str, object]:
    """The folder's recommended job settings (only the names in MODEL_RECOMMENDED); {} when it has none."""
    data = _recommended_section(folder)
    return {name: value for name, value in data.items() if name in MODEL_RECOMMENDED}


def recommended_attention(folder: str | os.PathLike[str]) -> dict[str, object]:
    """The folder's recommended dual-scope attention settings ({"recommended": {"attention": {...}}}), the
    ones measured best for that model; {} when it has none. Checked as a job's attention settings are."""
    from pathlib import Path

    from .errors import InvalidSettingsError
    from .settings import DualScopeSettings

    attention = _recommended_section(folder).get("attention") or {}
    try:  # names and ranges: a clear error now, not at the first step
        DualScopeSettings.from_dict(attention)
    except (InvalidSettingsError, TypeError, ValueError) as error:
        raise InvalidSettingsError(f"{Path(folder) / MODEL_SETTINGS_FILE}, recommended attention: {error}") from error
    return dict(attention)


def _recommended_section(folder: str | os.PathLike[str]) -> dict:
    import json
    from pathlib import Path

    from .errors import InvalidSettingsError

    path = Path(folder) / MODEL_SETTINGS_FILE
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text()).get("recommended", {})
    except (OSError, ValueError, AttributeError) as error:
        raise InvalidSettingsError(f"{path} is not a JSON object with a 'recommended' section ({error})") from error
    if not isinstance(data, dict):
        raise InvalidSettingsError(f"{path}: 'recommended' must be a JSON object")
    return data


# Pools with workers on other machines: the shared secret node agents present comes from this variable of the
# coordinator's environment (never from a workflow file, which people share), and agents join at this port.
TOKEN_ENV = "VIDEO_INFINITY_TOKEN"
DEFAULT_JOIN_PORT = 29600
MAX_REMOTE_WORKERS = 256
