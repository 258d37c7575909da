"""KTO's unpaired rows: schema checks with file and row, mismatched KL pairs, batches, the feedback derivation."""

from __future__ import annotations

import pytest

from tests.conftest import write_jsonl
from tests.unit.dpo.helpers_dpo import pref_rows
from zephyr.data.io import DataError
from zephyr.data.kto import KTODataModule, kl_partners
from zephyr.feedback.kto import from_ratings, kto_rows, unpair

GOOD = {"prompt": "Add 1 and 2.", "completion": "The answer is 3.", "label": True}


def make_dm(tokenizer, path, **kwargs):
    opts = dict(path=str(path), eval_size=0, batch_size=4, max_length=128, max_prompt_length=64, seed=0)
    dm = KTODataModule(tokenizer, **{**opts, **kwargs})
    dm.setup("fit")
    return dm


@pytest.mark.parametrize(
    ("bad", "reason"),
    [
        ({"label": 1}, "'label' must be true or false, got 1"),
        ({"label": "true"}, "'label' must be true or false, got 'true'"),
        ({"completion": "   "}, "'completion' is empty"),
        ({"completion": [{"role": "assistant", "content": ""}]}, "'completion' is empty"),
        ({"label": None}, "missing column 'label' (an unpaired row has prompt, completion, label)"),
    ],
)
def test_bad_row_names_file_and_row(tokenizer, tmp_path, bad, reason):
    path = write_jsonl(tmp_path / "kto.jsonl", [GOOD, GOOD, {**GOOD, **bad}])
    with pytest.raises(DataError) as e:
        make_dm(tokenizer, path)
    assert str(e.value) == f"{path}: row 3: {reason} (set data.on_bad_row=skip to skip and count bad rows)"
    dm = make_dm(tokenizer, path, on_bad_row="skip")
    assert len(dm.train_items) == 2 and dm.load_reports[0].n_skipped == 1


def test_pair_rows_are_refused_with_the_way_out(tokenizer, tmp_path):
    path = write_jsonl(tmp_path / "pairs.jsonl", pref_rows(2))
    with pytest.raises(DataError, match=r"row 1: a preference pair, not an unpaired row .*zephyr.feedback.kto.unpair"):
        make_dm(tokenizer, path)


def test_string_and_conversational_rows_tokenise_the_same(tokenizer, tmp_path):
    conv = {
        "prompt": [{"role": "user", "content": GOOD["prompt"]}],
        "completion": [{"role": "assistant", "content": GOOD["completion"]}],
        "label": False,
    }
    dm = make_dm(tokenizer, write_jsonl(tmp_path / "kto.jsonl", [GOOD, conv]))
    a, b = dm.train_items
    assert a["prompt"] == b["prompt"] and a["completion"] == b["completion"]
    assert tokenizer.decode(a["completion"]).startswith("The answer is 3.</s>")
    assert (a["label"], b["label"]) == (True, False)


def test_kl_partners_rotate_each_chunk_and_skip_the_same_prompt():
    assert kl_partners([[1], [2], [3], [4]], 4) == [3, 0, 1, 2]  # TRL: (x1, y4), (x2, y1), (x3, y2), (x4, y3)
    assert kl_partners([[1], [2], [3], [4], [5]], 2) == [1, 0, 4, 2, 3]  # the lone last row joins the chunk before
    # the halves of split pairs sit next to each other: a same-prompt neighbour is passed over
    assert kl_partners([[1], [1], [2], [2]], 4) == [3, 3, 1, 1]
    assert kl_partners([[1], [1], [2], [2]], 2) == [3, 3, 1, 1]  # no other prompt in the chunk: the nearest earlier


def test_items_carry_mismatched_kl_completions_and_batches_the_label(tokenizer, tmp_path):
    rows = unpair(pref_rows(4))
    dm = make_dm(tokenizer, write_jsonl(tmp_path / "kto.jsonl", rows), batch_size=4)
    items = dm.train_items
    assert [it["label"] for it in items] == [True, False] * 4
    completions = [it["completion"] for it in items]
    for it in items:
        assert it["kl_completion"] in completions and it["kl_completion"] != it["completion"]
        owner = completions.index(it["kl_completion"])
        assert items[owner]["prompt"] != it["prompt"]  # a real mismatch
    for layout, rows_per_item in (("prefix_shared", 1), ("concat", 2)):
        dm.layout = layout
        batch = dm.collate(items[:4])
        assert batch["label"].tolist() == [True, False, True, False]
        assert batch["input_ids"].shape[0] == 4 * rows_per_item and batch["index"].tolist() == [0, 1, 2, 3]
    before = dm.fingerprint("train")
    items[0]["kl_completion"] = items[0]["kl_completion"][:-1]
    assert dm.fingerprint("train") != before  # the cache key covers the KL completions


def _raw(instruction, *scored):
    def rating(r):
        return {"Rating": str(r)}

    completions = [
        {"model": f"m{i}", "response": text, "annotations": {"helpfulness": rating(a), "honesty": rating(b)}}
        for i, (text, a, b) in enumerate(scored)
    ]
    return {"instruction": instruction, "completions": completions}


def test_from_ratings_labels_above_and_below_the_threshold():
    raw = [_raw("Q1", ("good", 5, 4), ("edge", 3, 4), ("bad", 1, 2)), _raw("Q2", ("fine", 4, 4), ("", 5, 5))]
    rows, report = from_ratings(raw, threshold=3.5)
    assert [(r["prompt"], r["completion"], r["label"], r["score"]) for r in rows] == [
        ("Q1", "good", True, 4.5),
        ("Q1", "bad", False, 1.5),
        ("Q2", "fine", True, 4.0),
    ]
    assert report == {"prompts": 2, "desirable": 2, "undesirable": 1, "at_threshold": 1, "unscored": 1}
    assert [r["label"] for r in from_ratings(raw, threshold=1.0)[0]] == [True, True, True, True]
    assert kto_rows(raw, threshold=3.5) == rows
    with pytest.raises(ValueError, match="need a threshold"):
        kto_rows(raw)


def test_unpair_splits_each_pair_into_its_halves():
    pairs = pref_rows(2)
    rows = unpair(pairs)
    assert [(r["completion"], r["label"], r["score"]) for r in rows] == [
        (pairs[0]["chosen"][-1]["content"], True, 8.0),
        (pairs[0]["rejected"][-1]["content"], False, 3.0),
        (pairs[1]["chosen"][-1]["content"], True, 8.0),
        (pairs[1]["rejected"][-1]["content"], False, 3.0),
    ]
    assert rows[0]["prompt"] == [{"role": "user", "content": pairs[0]["prompt"]}]
    assert kto_rows(pairs) == rows
    with pytest.raises(ValueError, match="pair 0: chosen and rejected prompts differ"):
        unpair([{**pairs[0], "rejected": pairs[1]["rejected"]}])
