"""Weight files are checked before loading: pickles refused on every route, cut-off files named as such."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from distributed.engine.errors import ModelLoadError
from distributed.engine.job import ModelSpec
from distributed.engine.weight_files import (
    check_safetensors_file,
    check_weights_folder,
    safetensors_bytes,
    write_safetensors,
)
from distributed.models.unet3d.loader import load_pipeline


def test_a_whole_file_passes_and_a_cut_off_one_says_truncated(tmp_path: Path) -> None:
    path = tmp_path / "w.safetensors"
    save_file({"a": torch.zeros(1000), "b": torch.ones(10)}, str(path))
    check_safetensors_file(path)
    data = path.read_bytes()
    path.write_bytes(data[:-100])
    with pytest.raises(ModelLoadError, match=r"is truncated: its header describes [\d,]+ bytes but the file has"):
        check_safetensors_file(path)
    path.write_bytes(data[:20])
    with pytest.raises(ModelLoadError, match="cut off in its header"):
        check_safetensors_file(path)


def test_a_file_that_is_not_safetensors_says_so(tmp_path: Path) -> None:
    path = tmp_path / "w.safetensors"
    path.write_bytes(b"PK\x03\x04 a zip, as torch.save writes")
    with pytest.raises(ModelLoadError, match="is not a safetensors file"):
        check_safetensors_file(path)


def test_pickled_weights_are_refused_with_the_fix(tmp_path: Path) -> None:
    torch.save({"a": torch.zeros(1)}, tmp_path / "diffusion_pytorch_model.bin")
    with pytest.raises(ModelLoadError, match=r"only as diffusion_pytorch_model.bin, a pickle file.*convert it"):
        check_weights_folder(tmp_path, "UNet")


def test_a_pipeline_whose_unet_is_a_plain_torch_save_bin_is_refused(tiny_pipeline: Path, tmp_path: Path) -> None:
    # The same format the UNet override refuses must not load through the pipeline folder either.
    base = Path(shutil.copytree(tiny_pipeline, tmp_path / "bin-pipeline"))
    unet = base / "unet"
    from safetensors.torch import load_file

    state = load_file(str(unet / "diffusion_pytorch_model.safetensors"))
    (unet / "diffusion_pytorch_model.safetensors").unlink()
    torch.save(state, unet / "diffusion_pytorch_model.bin")
    with pytest.raises(ModelLoadError, match=r"could not load the UNet from .*a pickle file"):
        load_pipeline(ModelSpec(base=str(base)))


def test_a_file_written_one_tensor_at_a_time_reads_back_bit_for_bit(tmp_path: Path) -> None:
    generator = torch.Generator().manual_seed(0)
    tensors = {
        "f32": torch.randn(3, 5, generator=generator),
        "bf16": torch.randn(7, generator=generator).to(torch.bfloat16),
        "f16": torch.randn(2, 3, 4, generator=generator).half(),
        "fp8": torch.randn(4, 4, generator=generator).to(torch.float8_e4m3fn),
        "fp8_e5m2": torch.randn(3, generator=generator).to(torch.float8_e5m2),
        "scale": torch.tensor(0.25),  # 0-dim, as scaled-fp8 layers keep their scale
        "marker": torch.zeros(0, dtype=torch.float8_e4m3fn),  # empty, as the scaled_fp8 marker
        "steps": torch.arange(5),
        "mask": torch.tensor([True, False, True]),
    }
    layout = {name: (tensor.dtype, tuple(tensor.shape)) for name, tensor in tensors.items()}
    made = []

    def produce(name: str) -> torch.Tensor:
        made.append(name)
        return tensors[name]

    path = tmp_path / "streamed.safetensors"
    write_safetensors(path, layout, produce)
    assert made == list(tensors)  # one at a time, in the layout's order
    check_safetensors_file(path)
    back = load_file(path)
    assert set(back) == set(tensors)
    for name, tensor in tensors.items():
        assert back[name].dtype == tensor.dtype and back[name].shape == tensor.shape
        assert torch.equal(back[name].reshape(-1).view(torch.uint8), tensor.reshape(-1).view(torch.uint8))
    assert path.stat().st_size - safetensors_bytes(layout) < 4096  # the rest is the header
    with pytest.raises(ValueError, match="f32: made as torch.float16"):
        write_safetensors(tmp_path / "wrong.safetensors", layout, lambda name: tensors[name].half())
