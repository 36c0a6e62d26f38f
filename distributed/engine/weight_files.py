"""Weight files checked before a loader touches them (safetensors only, and whole), and written one tensor
at a time.

Loaders' own errors say "Unable to load weights from checkpoint file" for a refused pickle and for a
cut-off download alike; these checks tell the two apart and name the fix.
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Callable, Mapping
from pathlib import Path

import torch

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


# The safetensors format's names for the dtypes a model file holds.
SAFETENSORS_DTYPES = {
    torch.float64: "F64",
    torch.float32: "F32",
    torch.float16: "F16",
    torch.bfloat16: "BF16",
    torch.float8_e4m3fn: "F8_E4M3",
    torch.float8_e5m2: "F8_E5M2",
    torch.int64: "I64",
    torch.int32: "I32",
    torch.int16: "I16",
    torch.int8: "I8",
    torch.uint8: "U8",
    torch.bool: "BOOL",
}
TensorLayout = Mapping[str, tuple[torch.dtype, tuple[int, ...]]]  # name: (dtype, shape), in file order


def safetensors_bytes(layout: TensorLayout) -> int:
    """The size of the tensors' data in a file of this layout (the header is a few kB more)."""
    return sum(math.prod(shape) * dtype.itemsize for dtype, shape in layout.values())


def write_safetensors(path: Path, layout: TensorLayout, produce: Callable[[str], torch.Tensor]) -> None:
    """Writes a safetensors file whose tensors `produce(name)` makes one at a time, in `layout`'s order.

    safetensors' own writer takes every tensor at once; a model whose patches are merged on the way would
    then be held twice in memory, here only one tensor of it."""
    header, offset = {}, 0
    for name, (dtype, shape) in layout.items():
        size = math.prod(shape) * dtype.itemsize
        header[name] = {
            "dtype": SAFETENSORS_DTYPES[dtype],
            "shape": list(shape),
            "data_offsets": [offset, offset + size],
        }
        offset += size
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)  # the data starts 8-byte aligned
    with path.open("wb") as handle:
        handle.write(struct.pack("<Q", len(text)))
        handle.write(text)
        for name, (dtype, shape) in layout.items():
            tensor = produce(name)
            if tensor.dtype != dtype or tuple(tensor.shape) != shape:
                raise ValueError(f"{name}: made as {tensor.dtype} {tuple(tensor.shape)}, laid out as {dtype} {shape}")
            handle.write(tensor.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8).numpy())
