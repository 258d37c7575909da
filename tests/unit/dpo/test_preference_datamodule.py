"""PreferenceDataModule: every bad-row case names FILE: row N (1-based jsonl line), skips are counted, toy pairs."""

from __future__ import annotations

import pytest

from tests.unit.data.test_preference import BAD_ROWS
from tests.unit.dpo.helpers_dpo import make_datamodule, pref_rows, write_jsonl
from zephyr.data.io import DataError


@pytest.fixture(scope="module")
def tok():
    from zephyr.tokenizer import load_tokenizer

    return load_tokenizer()


@pytest.mark.parametrize("case", sorted(BAD_ROWS))
def test_bad_row_error_names_file_and_line(tok, tmp_path, case):
    row, message = BAD_ROWS[case]
    path = write_jsonl(tmp_path / "prefs.jsonl", pref_rows(2) + [row] + pref_rows(1))
    with pytest.raises(DataError, match=rf"prefs\.jsonl: row 3: .*{message}.*data\.on_bad_row=skip"):
        make_datamodule(tok, path)


def test_skip_policy_counts_every_bad_row(tok, tmp_path):
    bad = [BAD_ROWS["identical completions"][0], BAD_ROWS["prompts differ"][0]]
    path = write_jsonl(tmp_path / "prefs.jsonl", pref_rows(3) + bad + pref_rows(2))
    dm = make_datamodule(tok, path, on_bad_row="skip")
    assert len(dm.train_items) == 5
    (report,) = dm.load_reports
    assert report.read == 7 and report.kept == 5 and report.n_skipped == 2
    assert report.first_errors[0].endswith("prefs.jsonl: row 4: chosen and rejected completions are identical")
    assert "row 5: chosen and rejected prompts differ" in report.first_errors[1]


def test_rows_are_numbered_before_the_eval_holdout(tok, tmp_path):
    path = write_jsonl(tmp_path / "prefs.jsonl", pref_rows(6) + [BAD_ROWS["empty completion"][0]])
    with pytest.raises(DataError, match=r"row 7: chosen: turn 1 \(assistant\) has empty content"):
        make_datamodule(tok, path, eval_size=3)


def test_truncation_keeps_prompt_end_and_counts(tok, tmp_path):
    long_q = "Please read carefully. " * 40 + "Add 12 and 30."
    rows = pref_rows(2)
    rows[1]["chosen"][0]["content"] = rows[1]["rejected"][0]["content"] = long_q
    dm = make_datamodule(tok, write_jsonl(tmp_path / "p.jsonl", rows), max_length=96, max_prompt_length=48)
    items = {len(it["prompt"]) for it in dm.train_items}
    assert max(items) == 48 and dm.reports[0].truncated == 1
    long_item = next(it for it in dm.train_items if len(it["prompt"]) == 48)
    assert long_item["prompt"][0] == tok.bos_token_id
    assert tok.decode(long_item["prompt"][1:]).rstrip().endswith("<|assistant|>")


def test_limits_are_checked(tok, tmp_path):
    with pytest.raises(ValueError, match=r"data.max_prompt_length=512 must be > 1 and < data.max_length=256"):
        make_datamodule(tok, write_jsonl(tmp_path / "p.jsonl", pref_rows(2)), max_length=256, max_prompt_length=512)


def test_toy_pairs_come_from_the_feedback_pipeline_and_are_cached(tmp_path):
    from zephyr.data.preference import validate_pair
    from zephyr.toy.pairs import preference_rows as toy_preference_rows

    rows = toy_preference_rows(24, seed=0, cache_dir=tmp_path)
    assert 8 <= len(rows) <= 24  # ties are dropped
    for r in rows:
        validate_pair(r)
        assert r["score_chosen"] > r["score_rejected"]
    cached = list((tmp_path / "toy_prefs").glob("*.jsonl"))
    assert len(cached) == 1
    assert toy_preference_rows(24, seed=0, cache_dir=tmp_path) == rows
