"""Bad-row messages count rows one way everywhere: the 1-based file line of a jsonl (blank lines included), the
1-based position in a json list, whatever the eval hold-out took; skip summaries keep the whole reason."""

from __future__ import annotations

import json
import re

import pytest

from tests.unit.data.test_preference import BAD_ROWS
from tests.unit.dpo.helpers_dpo import make_datamodule, pref_rows
from zephyr.data.io import DataError, RowReport
from zephyr.data.sft import SFTDataModule

USER_USER = {"messages": [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]}
ALTERNATE = "turn 1 is 'user' but 'assistant' was expected (turns must alternate user/assistant)"
ALTERNATE_RE = re.escape(ALTERNATE)


def sft_row(i: int, reply: str | None = None) -> dict:
    return {
        "messages": [{"role": "user", "content": f"Add {i} and 1."}, {"role": "assistant", "content": reply or "ok"}]
    }


def write_lines(path, rows) -> str:
    path.write_text("".join("\n" if r is None else json.dumps(r) + "\n" for r in rows))
    return str(path)


def sft(tokenizer, path, **kw):
    dm = SFTDataModule(tokenizer, path=path, **kw)
    dm.setup("fit")
    return dm


def test_bad_row_is_its_file_line_after_blank_lines_and_hold_out(tokenizer, tmp_path):
    rows = [sft_row(0), None, *[sft_row(i) for i in range(1, 7)], USER_USER, *[sft_row(i) for i in range(7, 10)]]
    path = write_lines(tmp_path / "c.jsonl", rows)  # the bad row is on line 9
    with pytest.raises(DataError, match=rf"c\.jsonl: row 9: {ALTERNATE_RE}"):
        sft(tokenizer, path, eval_size=4)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_overlong_row_is_its_file_line_in_train_or_eval(tokenizer, tmp_path, seed):
    rows = [sft_row(i) for i in range(8)]
    rows.insert(2, None)
    rows.insert(5, sft_row(99, reply="word " * 200))  # line 6
    path = write_lines(tmp_path / "c.jsonl", rows)
    with pytest.raises(DataError, match=r"c\.jsonl(?: \(held-out eval rows\))?: row 6: \d+ tokens > max_length 64"):
        sft(tokenizer, path, eval_size=4, max_length=64, seed=seed)


def test_skipped_rows_are_named_by_file_line(tokenizer, tmp_path):
    rows = [sft_row(0), sft_row(1), None, sft_row(2), USER_USER, sft_row(3), USER_USER]
    dm = sft(tokenizer, write_lines(tmp_path / "c.jsonl", rows), eval_size=0, on_bad_row="skip")
    (report,) = dm.load_reports
    assert [e.split(": row ")[1].split(":")[0] for e in report.first_errors] == ["5", "7"]
    assert report.summary().endswith(
        "4/6 rows kept; 2 skipped (turn N is 'user' but 'assistant' was expected "
        "(turns must alternate user/assistant) x2)"
    )


def test_json_list_rows_are_numbered_from_one(tokenizer, tmp_path):
    path = tmp_path / "c.json"
    path.write_text(json.dumps([sft_row(0), sft_row(1), USER_USER]))
    with pytest.raises(DataError, match=rf"c\.json: row 3: {ALTERNATE_RE}"):
        sft(tokenizer, str(path))


def test_preference_rows_are_file_lines(tokenizer, tmp_path):
    row, message = BAD_ROWS["prompts differ"]
    path = tmp_path / "p.jsonl"
    write_lines(path, [*pref_rows(2), None, None, row, *pref_rows(2)])
    with pytest.raises(DataError, match=rf"p\.jsonl: row 5: {message}"):
        make_datamodule(tokenizer, path, eval_size=2)


def test_skip_summary_keeps_the_whole_reason():
    report = RowReport("f.jsonl", read=3, kept=0)
    report.skip(f"{ALTERNATE} and then some more words to pass eighty characters", "f.jsonl: row 1")
    report.skip("over-long: 900 tokens > max_length 512", "f.jsonl: row 2")
    report.skip("over-long: 700 tokens > max_length 512", "f.jsonl: row 3")
    summary = report.summary()
    assert f"{ALTERNATE.replace('1', 'N')} and then some more words to pass eighty characters x1" in summary
    assert "over-long x2" in summary
