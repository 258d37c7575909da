"""Atomic writes: the target appears only complete, an error leaves the old file and no temporary file."""

from __future__ import annotations

import pytest

from zephyr.feedback.store import read_jsonl, write_jsonl
from zephyr.fileio import atomic_open, atomic_write_text


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


@pytest.mark.parametrize(("umask", "expected"), [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_new_files_get_the_mode_plain_open_would(tmp_path, umask, expected):
    import os
    import stat

    old = os.umask(umask)
    try:
        with atomic_open(tmp_path / "model.safetensors", "wb") as f:
            f.write(b"weights")
        atomic_write_text(tmp_path / "metrics.json", "{}\n")
        write_jsonl(tmp_path / "d.jsonl", [{"a": 1}])
        with open(tmp_path / "plain.txt", "w") as f:
            f.write("x")
    finally:
        os.umask(old)
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in tmp_path.iterdir()}
    assert modes == dict.fromkeys(["model.safetensors", "metrics.json", "d.jsonl", "plain.txt"], expected)


def test_replacing_a_file_keeps_its_mode(tmp_path):
    import os
    import stat

    target = tmp_path / "config.yaml"
    target.write_text("old\n")
    os.chmod(target, 0o640)
    atomic_write_text(target, "new\n")
    assert target.read_text() == "new\n" and stat.S_IMODE(target.stat().st_mode) == 0o640
