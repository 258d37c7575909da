"""The shared JSONL reader: 1-based line numbers (blank lines counted), errors naming file and line."""

from __future__ import annotations

import pytest

from zephyr.data.io import DataError, read_jsonl_numbered
from zephyr.feedback.store import read_jsonl
from zephyr.generation import generate_file


def test_rows_keep_their_file_line_numbers(tmp_path):
    p = tmp_path / "r.jsonl"
    p.write_text('{"a": 1}\n\n  \n{"a": 2}\n')
    assert read_jsonl_numbered(p) == [(1, {"a": 1}), (4, {"a": 2})]
    assert read_jsonl(p) == [{"a": 1}, {"a": 2}]


@pytest.mark.parametrize(
    ("line", "reason"),
    [("{oops", r"not valid JSON \(.* at column 2\)"), ("[1, 2]", "expected a JSON object, got list")],
)
def test_bad_line_names_file_and_line(tmp_path, line, reason):
    p = tmp_path / "bad.jsonl"
    p.write_text('{"a": 1}\n\n' + line + "\n")
    with pytest.raises(ValueError, match=rf"bad\.jsonl:3: {reason}"):
        read_jsonl_numbered(p)
    with pytest.raises(DataError, match=rf"bad\.jsonl: row 3: {reason}"):
        read_jsonl_numbered(p, where="{path}: row {line}", error=DataError)
    with pytest.raises(ValueError, match=rf"bad\.jsonl:3: {reason}"):
        read_jsonl(p)


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError):
        read_jsonl_numbered(tmp_path / "nope.jsonl")
    with pytest.raises(FileNotFoundError, match="nope.jsonl: no such file"):
        read_jsonl(tmp_path / "nope.jsonl")


def test_generate_file_reports_the_real_line_of_a_bad_row(tmp_path):
    src = tmp_path / "in.jsonl"
    src.write_text('{"id": "a", "prompt": "hi"}\n\n{"id": "b"}\n')
    with pytest.raises(ValueError, match=r"in\.jsonl:3: row needs a 'messages' list"):
        generate_file(None, src, tmp_path / "out.jsonl", progress=False)
