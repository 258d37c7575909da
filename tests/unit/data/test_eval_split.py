"""Eval rows: a hold-out that fits any file with 2 valid rows, or ``data.eval_path`` (what ``zephyr data`` writes)."""

from __future__ import annotations

import json

import pytest

from tests.unit.dpo.helpers_dpo import make_datamodule, pref_rows, write_jsonl
from zephyr.data.io import DataError
from zephyr.data.module import holdout_size
from zephyr.data.sft import SFTDataModule


def sft_rows(n: int, start: int = 0) -> list[dict]:
    return [
        {"messages": [{"role": "user", "content": f"Add {i} and 1."}, {"role": "assistant", "content": f"{i + 1}."}]}
        for i in range(start, start + n)
    ]


def write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


@pytest.mark.parametrize(
    ("eval_size", "n_rows", "expected"),
    [(100, 2, 1), (100, 9, 1), (100, 64, 7), (100, 2000, 100), (4, 20, 4), (3, 7, 3), (48, 450, 48), (100, 1, 0)],
)
def test_holdout_size(eval_size, n_rows, expected):
    assert holdout_size(eval_size, n_rows) == expected


def test_two_row_file_holds_out_one(tokenizer, tmp_path):
    dm = SFTDataModule(tokenizer, path=write(tmp_path / "c.jsonl", sft_rows(2)), eval_size=100)
    dm.setup("fit")
    assert (len(dm.train_items), len(dm.eval_items)) == (1, 1)


def test_bad_rows_do_not_count_towards_the_hold_out(tokenizer, tmp_path):
    rows = sft_rows(2) + [{"messages": []}] * 5
    dm = SFTDataModule(tokenizer, path=write(tmp_path / "c.jsonl", rows), eval_size=100, on_bad_row="skip")
    dm.setup("fit")
    assert (len(dm.train_items), len(dm.eval_items)) == (1, 1)
    assert dm.load_reports[0].n_skipped == 5


def test_sft_eval_path_is_the_eval_split(tokenizer, tmp_path):
    train = write(tmp_path / "train_sft.jsonl", sft_rows(9))
    test = write(tmp_path / "test_sft.jsonl", sft_rows(3, start=100))
    dm = SFTDataModule(tokenizer, path=train, eval_path=test, eval_size=100)
    dm.setup("fit")
    assert (len(dm.train_items), len(dm.eval_items)) == (9, 3)
    assert dm.reports[1].source == test


def test_sft_eval_path_bad_row_names_the_eval_file(tokenizer, tmp_path):
    test = write(tmp_path / "test_sft.jsonl", sft_rows(1) + [{"prompt": "x"}])
    dm = SFTDataModule(tokenizer, path=write(tmp_path / "t.jsonl", sft_rows(4)), eval_path=test)
    with pytest.raises(DataError, match=r"test_sft\.jsonl: row 2: missing 'messages' column"):
        dm.setup("fit")


def test_preference_eval_path_is_the_eval_split(tokenizer, tmp_path):
    train = write_jsonl(tmp_path / "train_prefs.jsonl", pref_rows(6))
    test = write_jsonl(tmp_path / "test_prefs.jsonl", pref_rows(2))
    dm = make_datamodule(tokenizer, train, eval_path=str(test), eval_size=48)
    assert (len(dm.train_items), len(dm.eval_items)) == (6, 2)


def test_preference_small_file_with_the_default_eval_size(tokenizer, tmp_path):
    dm = make_datamodule(tokenizer, write_jsonl(tmp_path / "p.jsonl", pref_rows(5)), eval_size=48)
    assert (len(dm.train_items), len(dm.eval_items)) == (4, 1)


def test_bad_data_option_is_a_data_error(tokenizer, tmp_path):
    with pytest.raises(DataError, match=r"data.loss_on='assistant_only' must be one of assistant, all"):
        SFTDataModule(tokenizer, path=write(tmp_path / "c.jsonl", sft_rows(2)), loss_on="assistant_only")
    with pytest.raises(DataError, match=r"data.layout='rows' must be one of concat, prefix_shared"):
        make_datamodule(tokenizer, write_jsonl(tmp_path / "p.jsonl", pref_rows(2)), layout="rows")
