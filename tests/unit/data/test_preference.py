"""Preference data: pair validation, tokenisation against the chat_template §4 example, truncation, loading
from local files with bad rows, and the concatenated (2B, T) batch."""

import json
import math

import pytest
import torch

from zephyr.data.chat_template import ConversationError
from zephyr.data.preference import (
    PreferenceCollator,
    load_preference_rows,
    tokenize_pair,
    tokenize_pairs,
    validate_pair,
)
from zephyr.objectives.logprobs import completion_logps
from zephyr.tokenizer import load_tokenizer

pytestmark = pytest.mark.unit

# <|system|>\n</s>\n<|user|>\nName a color.</s>\n<|assistant|>\n with BOS (legacy Mistral v1 tokenizer).
COLOR_PROMPT_IDS = [1, 523, 28766, 6574, 28766, 28767, 13, 2, 28705, 13, 28789, 28766, 1838, 28766, 28767, 13]
COLOR_PROMPT_IDS += [952, 264, 3181, 28723, 2, 28705, 13, 28789, 28766, 489, 11143, 28766, 28767, 13]


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer()


def make_row(question="Name a color.", chosen="Blue.", rejected="Seven.", **extra):
    user = {"role": "user", "content": question}
    row = {
        "prompt": question,
        "prompt_id": "0" * 64,
        "chosen": [user, {"role": "assistant", "content": chosen}],
        "rejected": [user, {"role": "assistant", "content": rejected}],
        "messages": [user, {"role": "assistant", "content": chosen}],
        "score_chosen": 9.0,
        "score_rejected": 2.0,
    }
    row.update(extra)
    return row


# ---------------------------------------------------------------- validate_pair


def test_validate_pair_splits_prompt_and_completions():
    prompt, chosen, rejected = validate_pair(make_row())
    assert prompt == [{"role": "user", "content": "Name a color."}]
    assert chosen == {"role": "assistant", "content": "Blue."}
    assert rejected == {"role": "assistant", "content": "Seven."}


def test_validate_pair_keeps_system_and_multi_turn_prompt():
    turns = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello."},
        {"role": "user", "content": "Color?"},
    ]
    row = {
        "chosen": [*turns, {"role": "assistant", "content": "Red."}],
        "rejected": [*turns, {"role": "assistant", "content": "No."}],
    }
    prompt, chosen, _ = validate_pair(row)
    assert prompt == turns and chosen["content"] == "Red."


def _bad(**changes):
    row = make_row()
    for key, value in changes.items():
        if value is _DROP:
            del row[key]
        else:
            row[key] = value
    return row


_DROP = object()
USER = {"role": "user", "content": "Name a color."}
BAD_ROWS = {
    "missing chosen": (_bad(chosen=_DROP), "missing column 'chosen'"),
    "chosen not a list": (_bad(chosen="Blue."), "chosen: 'messages' must be a non-empty list"),
    "prompts differ": (
        _bad(rejected=[{"role": "user", "content": "Name a colour."}, {"role": "assistant", "content": "Red."}]),
        "chosen and rejected prompts differ",
    ),
    "rejected ends with user": (_bad(rejected=[USER]), "rejected: conversation has no assistant turn"),
    "last turn not assistant": (
        _bad(rejected=[USER, {"role": "assistant", "content": "Red."}, {"role": "user", "content": "More?"}]),
        "rejected: the last turn must be the assistant's",
    ),
    "empty completion": (
        _bad(chosen=[USER, {"role": "assistant", "content": "  "}]),
        r"chosen: turn 1 \(assistant\) has empty content",
    ),
    "identical completions": (
        _bad(rejected=[USER, {"role": "assistant", "content": "Blue."}]),
        "chosen and rejected completions are identical",
    ),
    "no prompt": (
        _bad(
            chosen=[{"role": "system", "content": "x"}, {"role": "assistant", "content": "a"}],
            rejected=[{"role": "system", "content": "x"}, {"role": "assistant", "content": "b"}],
        ),
        "turn 1 is 'assistant' but 'user' was expected",
    ),
    "flipped scores": (_bad(score_chosen=1.0, score_rejected=8.5), "score_chosen 1.0 < score_rejected 8.5"),
    "non-numeric score": (_bad(score_chosen="high"), "'score_chosen' must be a finite number"),
    "prompt not a string": (_bad(prompt=["Name a color."]), "'prompt' must be a string"),
}


@pytest.mark.parametrize("case", sorted(BAD_ROWS))
def test_validate_pair_rejects_bad_rows(case):
    row, message = BAD_ROWS[case]
    with pytest.raises(ConversationError, match=message):
        validate_pair(row)
    assert issubclass(ConversationError, ValueError)


def test_validate_pair_accepts_tied_scores():
    validate_pair(make_row(score_chosen=5.0, score_rejected=5.0))


# ---------------------------------------------------------------- tokenize_pair


def test_tokenize_pair_matches_chat_template_section4_example(tok):
    """Prompt `<|system|>\\n</s>\\n<|user|>\\nName a color.</s>\\n<|assistant|>\\n` is 30 ids with BOS; the chosen
    completion `Blue.</s>\\n` is [17596, 28723, 2, 28705, 13] (`Blue` is 17596 in context, 8836 alone); no extra EOS."""
    ex = tokenize_pair(tok, make_row())
    assert ex["prompt_input_ids"] == COLOR_PROMPT_IDS and len(COLOR_PROMPT_IDS) == 30
    assert ex["chosen_input_ids"] == [17596, 28723, 2, 28705, 13]
    assert tok.decode(ex["rejected_input_ids"]) == "Seven.</s> \n"  # legacy tokenizer: ▁ after </s>
    assert ex["rejected_input_ids"][-3:] == [2, 28705, 13]
    assert ex["truncated"] is False
    # prompt + completion is exactly the joint tokenisation of the rendered conversation
    full = tok.apply_chat_template([{"role": "system", "content": ""}, *make_row()["chosen"]], tokenize=False)
    assert ex["prompt_input_ids"] + ex["chosen_input_ids"] == tok(full)["input_ids"]


def test_tokenize_pair_without_empty_system(tok):
    ex = tokenize_pair(tok, make_row(), insert_empty_system=False)
    assert tok.decode(ex["prompt_input_ids"]) == "<s> <|user|>\nName a color.</s> \n<|assistant|>\n"
    assert ex["chosen_input_ids"] == [17596, 28723, 2, 28705, 13]


def test_tokenize_pair_truncates_long_prompt_keeping_bos_and_end(tok):
    row = make_row(question="word " * 300 + "Which color?", chosen="Blue " * 60, rejected="Red.")
    full = tokenize_pair(tok, row, max_length=4096, max_prompt_length=2048)
    assert full["truncated"] is False and len(full["prompt_input_ids"]) > 300
    ex = tokenize_pair(tok, row, max_length=96, max_prompt_length=40)
    assert ex["truncated"] is True
    assert len(ex["prompt_input_ids"]) == 40
    assert ex["prompt_input_ids"][0] == tok.bos_token_id
    assert ex["prompt_input_ids"][1:] == full["prompt_input_ids"][-39:]  # keep_end: the question survives
    assert tok.decode(ex["prompt_input_ids"]).endswith("Which color?</s> \n<|assistant|>\n")
    # chosen cut to max_length - prompt length; rejected short enough to stay whole
    assert ex["chosen_input_ids"] == full["chosen_input_ids"][:56]
    assert ex["rejected_input_ids"] == full["rejected_input_ids"]
    assert len(ex["prompt_input_ids"]) + len(ex["chosen_input_ids"]) == 96


def test_tokenize_pair_cuts_only_completion_when_prompt_is_short(tok):
    row = make_row(chosen="Blue " * 100)
    ex = tokenize_pair(tok, row, max_length=50, max_prompt_length=40)
    assert ex["truncated"] is True
    assert ex["prompt_input_ids"] == COLOR_PROMPT_IDS  # 30 <= 40: untouched
    assert len(ex["chosen_input_ids"]) == 20 and ex["chosen_input_ids"][0] == 17596


def test_tokenize_pair_long_prompt_that_fits_is_not_truncated(tok):
    row = make_row(question="word " * 60)
    ex = tokenize_pair(tok, row, max_length=1024, max_prompt_length=40)
    assert ex["truncated"] is False and len(ex["prompt_input_ids"]) > 40


def test_tokenize_pairs_counts_truncated_rows(tok):
    rows = [make_row(), make_row(chosen="Blue " * 100), make_row(question="word " * 200)]
    examples, n_truncated = tokenize_pairs(tok, rows, max_length=64, max_prompt_length=32)
    assert len(examples) == 3 and n_truncated == 2
    assert [ex["truncated"] for ex in examples] == [False, True, True]


def test_tokenize_pair_validates_lengths_and_rows(tok):
    with pytest.raises(ValueError, match="max_prompt_length < max_length"):
        tokenize_pair(tok, make_row(), max_length=64, max_prompt_length=64)
    with pytest.raises(ConversationError, match="prompts differ"):
        tokenize_pair(tok, BAD_ROWS["prompts differ"][0])


# ---------------------------------------------------------------- load_preference_rows


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_load_jsonl_json_and_parquet(tmp_path):
    rows = [make_row(), make_row(question="Name a fruit.", chosen="Apple.", rejected="Car.")]
    loaded = load_preference_rows(write_jsonl(tmp_path / "prefs.jsonl", rows))
    assert len(loaded) == 2 and loaded.num_skipped == 0
    assert loaded.rows[1]["chosen"][1]["content"] == "Apple."
    assert loaded.source == str(tmp_path / "prefs.jsonl")

    (tmp_path / "prefs.json").write_text(json.dumps(rows))
    assert [r["prompt"] for r in load_preference_rows(tmp_path / "prefs.json").rows] == [
        "Name a color.",
        "Name a fruit.",
    ]

    import pandas as pd

    pd.DataFrame(rows).to_parquet(tmp_path / "prefs.parquet")
    parquet = load_preference_rows(str(tmp_path / "prefs.parquet"), limit=1)
    assert len(parquet) == 1 and parquet.rows[0]["rejected"][1]["content"] == "Seven."


def test_load_missing_file_names_path(tmp_path):
    missing = tmp_path / "nope.jsonl"
    with pytest.raises(FileNotFoundError, match="nope.jsonl"):
        load_preference_rows(missing)


def test_load_bad_row_error_names_file_and_row(tmp_path):
    rows = [make_row(), make_row(rejected="Blue."), make_row()]
    path = write_jsonl(tmp_path / "bad.jsonl", rows)
    with pytest.raises(ValueError, match=r"bad\.jsonl: row 2: chosen and rejected completions are identical"):
        load_preference_rows(path)


def test_load_skip_counts_and_reports_every_bad_row(tmp_path):
    rows = [make_row(), make_row(rejected="Blue."), BAD_ROWS["prompts differ"][0], make_row(chosen="Green.")]
    loaded = load_preference_rows(write_jsonl(tmp_path / "mixed.jsonl", rows), on_bad_row="skip")
    assert len(loaded) == 2 and loaded.num_skipped == 2
    assert loaded.skipped == [
        (2, "chosen and rejected completions are identical"),
        (3, "chosen and rejected prompts differ"),
    ]


def test_load_rows_arrow_cannot_unify_falls_back_to_per_row(tmp_path):
    """A row whose `chosen` is a string and a line of broken JSON: Arrow cannot build one table, so the rows
    are read one by one and the bad ones still get their row numbers."""
    path = tmp_path / "types.jsonl"
    path.write_text(
        json.dumps(make_row()) + "\n" + json.dumps(make_row(chosen=None) | {"chosen": "Blue."}) + "\n{oops\n"
    )
    with pytest.raises(ValueError, match=r"types\.jsonl: row 2: chosen: 'messages' must be a non-empty list"):
        load_preference_rows(path)
    loaded = load_preference_rows(path, on_bad_row="skip")
    assert len(loaded) == 1 and [i for i, _ in loaded.skipped] == [2, 3]
    assert loaded.skipped[1][1].startswith("invalid JSON")


def test_load_rejects_unknown_options(tmp_path):
    with pytest.raises(ValueError, match="on_bad_row"):
        load_preference_rows(tmp_path / "x.jsonl", on_bad_row="ignore")
    (tmp_path / "x.csv").write_text("a\n")
    with pytest.raises(ValueError, match=r"unknown preference file type '\.csv'"):
        load_preference_rows(tmp_path / "x.csv")


# ---------------------------------------------------------------- PreferenceCollator


def test_collator_layout_labels_and_padding(tok):
    examples = [
        tokenize_pair(tok, make_row()),
        tokenize_pair(
            tok, make_row(question="Name a fruit please.", chosen="Apple.", rejected="A car is not a fruit.")
        ),
    ]
    batch = PreferenceCollator(tok.pad_token_id)(examples)
    n_rows = 4
    lengths = [
        len(ex["prompt_input_ids"]) + len(ex[k]) for k in ("chosen_input_ids", "rejected_input_ids") for ex in examples
    ]
    width = max(lengths)
    for key in ("input_ids", "attention_mask", "labels"):
        assert batch[key].shape == (n_rows, width)
    order = [(ex, k) for k in ("chosen_input_ids", "rejected_input_ids") for ex in examples]  # chosen first
    for i, (ex, key) in enumerate(order):
        p, c = ex["prompt_input_ids"], ex[key]
        n = len(p) + len(c)
        assert batch["input_ids"][i, :n].tolist() == p + c
        assert batch["input_ids"][i, n:].eq(tok.pad_token_id).all()
        assert batch["attention_mask"][i].tolist() == [1] * n + [0] * (width - n)
        assert batch["labels"][i].tolist() == [-100] * len(p) + c + [-100] * (width - n)
        assert batch["prompt_lengths"][i].item() == len(p) and batch["completion_lengths"][i].item() == len(c)


def test_collator_labels_give_per_pair_logps(tok):
    """completion_logps over the collated batch = the sum of log p(completion token | prefix) taken by hand."""
    examples = [tokenize_pair(tok, make_row()), tokenize_pair(tok, make_row(chosen="Dark navy blue."))]
    batch = PreferenceCollator(tok.pad_token_id, pad_to_multiple_of=8)(examples)
    assert batch["input_ids"].shape[1] % 8 == 0
    torch.manual_seed(0)
    logits = torch.randn(*batch["input_ids"].shape, 32000)
    logps = completion_logps(logits, batch["labels"])
    logsm = logits.log_softmax(-1)
    for i in range(4):
        p, c = batch["prompt_lengths"][i].item(), batch["completion_lengths"][i].item()
        ids = batch["input_ids"][i]
        by_hand = sum(logsm[i, p + k - 1, ids[p + k]].item() for k in range(c))
        assert math.isclose(logps[i].item(), by_hand, rel_tol=1e-5)


def test_collator_rejects_empty_batch_and_missing_pad():
    with pytest.raises(ValueError, match="empty"):
        PreferenceCollator(2)([])
    with pytest.raises(ValueError, match="pad_token_id is None"):
        PreferenceCollator(None)


def test_hub_names_are_not_mistaken_for_paths(tmp_path):
    from zephyr.data.preference import _is_local

    assert not _is_local("HuggingFaceH4/ultrafeedback_binarized")
    assert _is_local("data/prefs.jsonl") and _is_local("./prefs") and _is_local(str(tmp_path))
