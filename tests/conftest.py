"""Shared fixtures: tiny random pipelines built once per session (nothing is downloaded)."""

from __future__ import annotations

from pathlib import Path

import pytest

from support.tiny_models import build_tiny_pipeline


@pytest.fixture(scope="session")
def tiny_pipeline(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_pipeline(tmp_path_factory.mktemp("models") / "tiny-t2v", seed=0, words=["red", "ball"])
