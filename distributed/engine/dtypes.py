"""The torch dtypes behind the dtype names of engine/choices.py, both ways."""

from __future__ import annotations

import torch

from .choices import DTYPES
from .errors import ModelLoadError

TORCH_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
DTYPE_NAMES = {dtype: name for name, dtype in TORCH_DTYPES.items()}
assert tuple(TORCH_DTYPES) == DTYPES


def torch_dtype(name: str) -> torch.dtype:
    if name not in TORCH_DTYPES:
        raise ModelLoadError(f"dtype {name!r} is not supported; use one of {list(DTYPES)}")
    return TORCH_DTYPES[name]
