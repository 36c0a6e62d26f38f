"""Shared fixtures: tiny random pipelines built once per session (nothing is downloaded)."""

from __future__ import annotations

from pathlib import Path

import pytest

from support.tiny_models import build_tiny_pipeline


@pytest.fixture(scope="session")
def tiny_pipeline(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_pipeline(tmp_path_factory.mktemp("models") / "tiny-t2v", seed=0, words=["red", "ball"])


SLOW_OPTION = "--run-slow"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        SLOW_OPTION,
        action="store_true",
        help="also run the tests marked slow (longer variants of checks a faster test already makes)",
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # The default run keeps CI short; a slow test is skipped with its reason, so the summary still lists it.
    if config.getoption(SLOW_OPTION):
        return
    skip = pytest.mark.skip(reason=f"slow: run with {SLOW_OPTION}")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)
