"""Result store: append/resume, torn last line after a crash, corruption in the middle, runner failures."""

import json
import logging
import threading

import pytest

from zephyr.feedback.runner import Job, run_jobs
from zephyr.feedback.store import ResultStore, read_jsonl, write_jsonl

pytestmark = pytest.mark.unit


def test_put_and_reopen(tmp_path):
    path = tmp_path / "s.jsonl"
    with ResultStore(path) as s:
        s.put(("p1", "m1"), {"response": "a"})
        s.put(("p1", "m2"), {"response": "b"})
        s.put_failure(("p2", "m1"), "RuntimeError: boom")
    with ResultStore(path) as s:
        assert ("p1", "m1") in s and ("p1", "m2") in s
        assert s.get(("p1", "m2")) == {"response": "b"}
        assert ("p2", "m1") not in s
        assert s.failures == {("p2", "m1"): "RuntimeError: boom"}
        s.put(("p2", "m1"), {"response": "c"})
        assert s.failures == {}
    with ResultStore(path) as s:
        assert len(s) == 3 and s.failures == {} and s.torn_lines == 0


def test_torn_last_line_is_ignored_reported_and_cut(tmp_path, caplog):
    path = tmp_path / "s.jsonl"
    with ResultStore(path) as s:
        s.put(("p1", "m1"), {"response": "a"})
        s.put(("p2", "m1"), {"response": "b"})
    good = path.read_bytes()
    path.write_bytes(good + b'{"key": ["p3", "m1"], "status": "ok", "val')  # kill -9 mid-write
    with caplog.at_level(logging.WARNING), ResultStore(path) as s:
        assert s.torn_lines == 1
        assert sorted(s.done) == [("p1", "m1"), ("p2", "m1")]
        assert "torn last line" in caplog.text
        assert path.read_bytes() == good  # cut off before anything new is appended
        s.put(("p3", "m1"), {"response": "c"})
    rows = [json.loads(x) for x in path.read_text().splitlines()]
    assert [tuple(r["key"]) for r in rows] == [("p1", "m1"), ("p2", "m1"), ("p3", "m1")]


def test_complete_json_without_newline_counts_as_torn(tmp_path):
    path = tmp_path / "s.jsonl"
    line = json.dumps({"key": ["p1"], "status": "ok", "value": 1})
    path.write_text(line + "\n" + line.replace("p1", "p2"))  # no trailing newline: fsync never confirmed it
    with ResultStore(path) as s:
        assert list(s.done) == [("p1",)] and s.torn_lines == 1


def test_bad_line_in_the_middle_raises_with_file_and_line(tmp_path):
    path = tmp_path / "s.jsonl"
    ok = json.dumps({"key": ["p1"], "status": "ok", "value": 1})
    path.write_text(ok + "\n{broken\n" + ok.replace("p1", "p2") + "\n")
    with pytest.raises(ValueError, match=r"s\.jsonl:2: unreadable row in the middle"):
        ResultStore(path)


def test_second_writer_is_refused(tmp_path):
    with ResultStore(tmp_path / "s.jsonl"):
        with pytest.raises(RuntimeError, match="another process is writing"):
            ResultStore(tmp_path / "s.jsonl")


def test_compact_keeps_one_row_per_key(tmp_path):
    path = tmp_path / "s.jsonl"
    with ResultStore(path) as s:
        s.put_failure(("a",), "E1")
        s.put_failure(("a",), "E2")
        s.put(("a",), 1)
        s.put_failure(("b",), "E3")
        assert s.compact() == 2
        s.put(("c",), 3)
    rows = read_jsonl(path)
    assert [(r["key"], r["status"]) for r in rows] == [(["a"], "ok"), (["b"], "failed"), (["c"], "ok")]


def test_redact_hides_secrets_in_failures(tmp_path):
    with ResultStore(tmp_path / "s.jsonl", redact=lambda t: t.replace("sk-123456", "***")) as s:
        s.put_failure(("a",), "bad key sk-123456")
    assert "sk-123456" not in (tmp_path / "s.jsonl").read_text()


def test_run_jobs_records_failures_and_retries_them(tmp_path):
    path = tmp_path / "s.jsonl"
    attempts = {}
    lock = threading.Lock()

    def make(i):
        def fn():
            with lock:
                attempts[i] = attempts.get(i, 0) + 1
            if i % 3 == 0 and attempts[i] == 1:
                raise RuntimeError(f"flaky {i}")
            return [{"i": i, "usage": {"prompt_tokens": 2, "completion_tokens": 1}}]

        return fn

    jobs = [Job([(f"p{i}", "m")], make(i)) for i in range(10)]
    with ResultStore(path) as s:
        first = run_jobs(jobs, s, max_workers=3, progress=False)
    assert (first.done, first.failed, first.tokens) == (6, 4, 18)
    assert "RuntimeError: flaky 3" in first.errors
    with ResultStore(path) as s:
        assert sorted(k[0] for k in s.failures) == ["p0", "p3", "p6", "p9"]
        second = run_jobs(jobs, s, max_workers=3, progress=False)
        assert (second.done, second.failed, second.skipped) == (4, 0, 6)
        assert len(s) == 10 and s.failures == {}
    assert all(attempts[i] == (2 if i % 3 == 0 else 1) for i in range(10))


def test_multi_key_job_and_wrong_value_count(tmp_path):
    with ResultStore(tmp_path / "s.jsonl") as s:
        summary = run_jobs(
            [Job([("a",), ("b",)], lambda: [1, 2]), Job([("c",), ("d",)], lambda: [3])], s, progress=False
        )
        assert (summary.done, summary.failed) == (2, 2)
        assert s.get(("b",)) == 2
        assert "returned 1 values for 2 keys" in s.failures[("c",)]


def test_write_jsonl_roundtrip_and_bad_line(tmp_path):
    assert write_jsonl(tmp_path / "d.jsonl", [{"a": 1}, {"a": "é"}]) == 2
    assert read_jsonl(tmp_path / "d.jsonl") == [{"a": 1}, {"a": "é"}]
    (tmp_path / "bad.jsonl").write_text('{"a": 1}\nnot json\n')
    with pytest.raises(ValueError, match=r"bad\.jsonl:2"):
        read_jsonl(tmp_path / "bad.jsonl")


def test_rows_are_flushed_at_once_even_with_fsync_interval(tmp_path):
    path = tmp_path / "s.jsonl"
    s = ResultStore(path, fsync_interval=3600)
    s.put(("a",), 1)
    s.put(("b",), 2)
    # another reader (a restarted process after kill -9) sees both rows before any close or fsync
    assert [json.loads(x)["key"] for x in path.read_text().splitlines()] == [["a"], ["b"]]
    s.close()
