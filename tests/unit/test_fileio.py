"""Atomic writes: the target appears only complete, an error leaves the old file and no temporary file."""

from __future__ import annotations

import pytest

from zephyr.callbacks import atomic_write_text
from zephyr.feedback.store import read_jsonl, write_jsonl
from zephyr.fileio import atomic_open


def test_replaces_target_and_leaves_no_temp_files(tmp_path):
    target = tmp_path / "sub" / "out.txt"
    with atomic_open(target) as f:
        f.write("héllo")
        assert not target.exists()  # nothing visible until the block ends
    assert target.read_bytes() == "héllo".encode()
    with atomic_open(target, "wb") as f:
        f.write(b"\x00\x01")
    assert target.read_bytes() == b"\x00\x01"
    assert sorted(p.name for p in target.parent.iterdir()) == ["out.txt"]


def test_error_keeps_old_content(tmp_path):
    target = tmp_path / "out.txt"
    atomic_write_text(target, "old\n")
    with pytest.raises(RuntimeError, match="boom"), atomic_open(target) as f:
        f.write("half a new fi")
        raise RuntimeError("boom")
    assert target.read_text() == "old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]


def test_write_jsonl_round_trips(tmp_path):
    rows = [{"a": 1, "t": "ü"}, {"a": 2}]
    assert write_jsonl(tmp_path / "d.jsonl", rows) == 2
    assert read_jsonl(tmp_path / "d.jsonl") == rows
    assert [p.name for p in tmp_path.iterdir()] == ["d.jsonl"]
