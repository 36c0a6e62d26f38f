"""Weight files are checked before loading: pickles refused on every route, cut-off files named as such."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from distributed.engine.errors import ModelLoadError
from distributed.engine.job import ModelSpec
from distributed.engine.weight_files import check_safetensors_file, check_weights_folder
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
