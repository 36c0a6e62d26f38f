"""Weight files checked before a loader touches them: safetensors only, and whole.

Loaders' own errors say "Unable to load weights from checkpoint file" for a refused pickle and for a
cut-off download alike; these checks tell the two apart and name the fix.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

from .errors import ModelLoadError

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
HEADER_LIMIT = 100 * 2**20  # safetensors headers are small; a larger length means the file is not one


def check_weights_folder(folder: Path, label: str) -> None:
    """The folder's weights are whole .safetensors files; pickled weights alone are refused, with the fix."""
    safetensors = sorted(folder.glob("*.safetensors"))
    pickles = sorted(p for p in folder.iterdir() if p.suffix in PICKLE_SUFFIXES) if folder.is_dir() else []
    if not safetensors and pickles:
        raise ModelLoadError(
            f"the {label} in {folder} has its weights only as {pickles[0].name}, a pickle file, which can run code "
            "when loaded and is refused; convert it to .safetensors (for example with safetensors.torch.save_file "
            "on its state dict) and put that file beside it"
        )
    for path in safetensors:
        check_safetensors_file(path)


def check_safetensors_file(path: Path) -> None:
    """Raises ModelLoadError when the file is not a safetensors file or is shorter than its header says."""
    try:
        size = path.stat().st_size
        with path.open("rb") as handle:
            prefix = handle.read(8)
            length = struct.unpack("<Q", prefix)[0] if len(prefix) == 8 else None
            header = handle.read(length) if length is not None and length <= HEADER_LIMIT else b""
    except OSError as error:
        raise ModelLoadError(f"{path} cannot be read ({error})") from error
    if length is None or length > HEADER_LIMIT or len(header) < length:
        raise ModelLoadError(f"{path} is not a safetensors file, or it is cut off in its header; download it again")
    try:
        entries = json.loads(header)
        end = max((int(e["data_offsets"][1]) for k, e in entries.items() if k != "__metadata__"), default=0)
    except (ValueError, KeyError, TypeError, IndexError, AttributeError) as error:
        raise ModelLoadError(f"{path} has a damaged safetensors header ({error}); download it again") from error
    expected = 8 + length + end
    if size < expected:
        raise ModelLoadError(
            f"{path} is truncated: its header describes {expected:,} bytes but the file has {size:,}; "
            "the download or copy was interrupted, so fetch it again"
        )
