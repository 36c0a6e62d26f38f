"""Files of the coordinator's disk reach ranks whose machine cannot read them, over the process group
(real rank processes, gloo on CPU; the other machine is one rank told that it cannot see the file)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from support.local_ranks import run_on_local_ranks

from .dist_targets import receive_where_the_file_is_not_visible

pytestmark = pytest.mark.distributed


def test_a_rank_that_cannot_see_the_file_receives_it_once_and_the_others_read_it_in_place(tmp_path: Path) -> None:
    data = os.urandom(250_000)
    path = tmp_path / "coordinator" / "wan-0123.safetensors"
    path.parent.mkdir()
    path.write_bytes(data)
    job = {"path": str(path), "received": str(tmp_path / "received"), "chunk": 64 * 1024}  # 4 chunks
    ranks = run_on_local_ranks(3, receive_where_the_file_is_not_visible, dict(job, elsewhere={"1": "machine-1"}))
    first, second = ranks[1]["calls"]
    assert first["data"] == data and Path(first["path"]).parent == tmp_path / "received" / "machine-1" / "models"
    assert first["received"] >= len(data)
    assert second["path"] == first["path"] and second["received"] < 100, "the warm rank received the file again"
    for rank in (0, 2):
        assert [call["path"] for call in ranks[rank]["calls"]] == [str(path)] * 2
        assert all(call["data"] == data for call in ranks[rank]["calls"])
    assert not (tmp_path / "received" / "machine-2").exists() and not (tmp_path / "received" / "None").exists()
    # A file gone from the coordinator's disk: every rank says so at the same point and stays in step.
    assert {rank["missing"] for rank in ranks} == {
        f"{path}.missing is gone from the coordinator's disk; queue the job again"
    }


@pytest.mark.slow  # one copy per machine with one rank there: the test above
def test_two_ranks_of_one_other_machine_get_one_copy(tmp_path: Path) -> None:
    data = os.urandom(100_000)
    path = tmp_path / "wan-4567.safetensors"
    path.write_bytes(data)
    job = {"path": str(path), "received": str(tmp_path / "received"), "chunk": 64 * 1024}
    ranks = run_on_local_ranks(3, receive_where_the_file_is_not_visible, dict(job, elsewhere={"1": "b", "2": "b"}))
    first, other = ranks[1]["calls"][0], ranks[2]["calls"][0]
    assert first["data"] == other["data"] == data and first["path"] == other["path"]
    assert first["received"] >= len(data) and other["received"] < 100, "the machine received the file twice"
