"""dSFT tokenization, label masking, bad-row policies, packing and the resumable sampler."""

import json

import pytest
import torch

from tests.conftest import write_jsonl
from zephyr.data.collate import ResumableBatchSampler, collate_rows
from zephyr.data.io import DataError, load_numbered_rows, read_local_rows
from zephyr.data.sft import IGNORE_INDEX, build_sft_examples, pack_best_fit, tokenize_conversation

CONV = [
    {"role": "user", "content": "Name a color."},
    {"role": "assistant", "content": "Blue."},
    {"role": "user", "content": "Another one?"},
    {"role": "assistant", "content": "Red it is."},
]


def good_row(i=0):
    return {"prompt": CONV[0]["content"], "prompt_id": f"{i:064x}", "messages": CONV}


def test_labels_cover_exactly_assistant_replies_and_their_eos(tokenizer):
    ex = tokenize_conversation(tokenizer, CONV)
    assert ex.input_ids[0] == 1 and len(ex.labels) == len(ex.input_ids)
    trained = [t for t, lab in zip(ex.input_ids, ex.labels) if lab != IGNORE_INDEX]
    assert tokenizer.decode(trained) == "Blue.</s>Red it is.</s>"
    assert trained.count(2) == 2  # each reply's </s> is learned, the system/user </s> are not
    # the prompt of the first reply ends with the generation prompt and is fully masked
    first = ex.labels.index(next(lab for lab in ex.labels if lab != IGNORE_INDEX))
    prefix = tokenizer.decode(ex.input_ids[1:first])
    assert prefix.endswith("<|assistant|>\n") and "<|system|>" in prefix


def test_loss_on_all_trains_every_token_but_bos(tokenizer):
    ex = tokenize_conversation(tokenizer, CONV, loss_on="all")
    assert ex.labels[0] == IGNORE_INDEX and ex.labels[1:] == ex.input_ids[1:]
    with pytest.raises(ValueError, match="loss_on"):
        tokenize_conversation(tokenizer, CONV, loss_on="prompt")


def test_no_system_insertion_when_disabled(tokenizer):
    ex = tokenize_conversation(tokenizer, CONV, insert_empty_system=False)
    assert "<|system|>" not in tokenizer.decode(ex.input_ids)


BAD_ROWS = {
    "missing messages": ({"prompt": "x"}, "missing 'messages' column"),
    "unknown role": ({"messages": [{"role": "bot", "content": "x"}]}, "unknown role 'bot'"),
    "empty content": ({"messages": [CONV[0], {"role": "assistant", "content": ""}]}, "empty content"),
    "two user turns": ({"messages": [CONV[0], CONV[2], CONV[1]]}, "'user' but 'assistant' was expected"),
    "non-string content": ({"messages": [CONV[0], {"role": "assistant", "content": ["x"]}]}, "must be a string"),
    "no assistant": ({"messages": [CONV[0]]}, "no assistant turn"),
}


@pytest.mark.parametrize("case", sorted(BAD_ROWS))
def test_bad_row_error_names_file_and_row(tokenizer, tmp_path, case):
    row, reason = BAD_ROWS[case]
    path = write_jsonl(tmp_path / "d.jsonl", [good_row(0), good_row(1), row])
    source, numbered = load_numbered_rows(path=str(path))
    rows = [row for _, row in numbered]
    with pytest.raises(DataError) as e:
        build_sft_examples(tokenizer, rows, source=source, max_length=512)
    msg = str(e.value)
    assert msg.startswith(f"{path}: row 3: ") and reason in msg and "\n" not in msg


def test_skip_policy_counts_every_bad_row(tokenizer, tmp_path):
    rows = [good_row(0)] + [BAD_ROWS[k][0] for k in sorted(BAD_ROWS)] + [good_row(1)]
    examples, report = build_sft_examples(tokenizer, rows, source="f.jsonl", max_length=512, on_bad_row="skip")
    assert len(examples) == 2 and report.kept == 2 and report.read == 8 and report.n_skipped == 6
    assert "6 skipped" in report.summary() and report.first_errors[0].startswith("f.jsonl: row 2: ")


def test_overlong_policies(tokenizer):
    long_row = {"messages": [CONV[0], {"role": "assistant", "content": "word " * 200}]}
    with pytest.raises(DataError, match=r"row 1: \d+ tokens > max_length 64"):
        build_sft_examples(tokenizer, [long_row], source="s", max_length=64)
    ex, report = build_sft_examples(tokenizer, [long_row, good_row()], source="s", max_length=64, on_overlong="skip")
    assert len(ex) == 1 and report.n_skipped == 1
    ex, report = build_sft_examples(tokenizer, [long_row], source="s", max_length=64, on_overlong="truncate")
    assert len(ex[0]) == 64 and report.truncated == 1 and "1 truncated" in report.summary()


def test_truncation_that_removes_all_replies_is_a_counted_skip(tokenizer):
    long_prompt = {"messages": [{"role": "user", "content": "word " * 200}, {"role": "assistant", "content": "ok"}]}
    ex, report = build_sft_examples(
        tokenizer, [long_prompt, good_row()], source="s", max_length=64, on_overlong="truncate"
    )
    assert len(ex) == 1 and report.skipped == {"no trainable tokens after truncation": 1}


def test_missing_file_and_malformed_json(tmp_path):
    with pytest.raises(FileNotFoundError, match="data file not found: .*nope.jsonl"):
        read_local_rows(tmp_path / "nope.jsonl")
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(good_row()) + "\n{not json\n")
    with pytest.raises(DataError, match=r"bad.jsonl: row 2: not valid JSON"):
        read_local_rows(bad)
    (tmp_path / "x.csv").write_text("a,b\n")
    with pytest.raises(DataError, match="unsupported file type '.csv'"):
        read_local_rows(tmp_path / "x.csv")


def test_json_and_parquet_files_read_the_same_rows(tmp_path):
    from datasets import Dataset

    rows = [good_row(i) for i in range(3)]
    (tmp_path / "d.json").write_text(json.dumps(rows))
    Dataset.from_list(rows).to_parquet(str(tmp_path / "d.parquet"))
    assert read_local_rows(tmp_path / "d.json") == rows
    assert [r["messages"] for r in read_local_rows(tmp_path / "d.parquet")] == [r["messages"] for r in rows]


def test_pack_best_fit_respects_capacity_and_keeps_every_item():
    lengths = [7, 3, 5, 2, 8, 1, 4, 6]
    bins = pack_best_fit(lengths, 10)
    assert sorted(i for b in bins for i in b) == list(range(8))
    assert all(sum(lengths[i] for i in b) <= 10 for b in bins)
    assert len(bins) == 4  # total 36 -> at least 4 bins of 10; best fit reaches it
    with pytest.raises(ValueError, match="length 11 > capacity 10"):
        pack_best_fit([11], 10)


def test_collate_restarts_positions_and_masks_boundaries():
    rows = [[([1, 5, 6], [-100, 5, 6]), ([1, 7], [1, 7])], [([1, 9], [-100, 9])]]
    b = collate_rows(rows, pad_id=2, pad_to_multiple_of=1)
    assert b["input_ids"].tolist() == [[1, 5, 6, 1, 7], [1, 9, 2, 2, 2]]
    assert b["position_ids"].tolist() == [[0, 1, 2, 0, 1], [0, 1, 0, 1, 2]]
    # the first token of each packed sequence is never a target (it would be predicted across the boundary)
    assert b["labels"].tolist() == [[-100, 5, 6, -100, 7], [-100, 9, -100, -100, -100]]
    assert int(b["num_tokens"]) == 7 and int(b["num_loss_tokens"]) == 4


def test_resumable_sampler_restarts_mid_epoch_exactly():
    s = ResumableBatchSampler(10, 3, shuffle=True, seed=7)
    epoch0, epoch1 = list(s), list(s)
    assert epoch0 != epoch1 and sorted(sum(epoch0, [])) == list(range(10))
    again = ResumableBatchSampler(10, 3, shuffle=True, seed=7)
    again.epoch, again.start_batch = 1, 2
    assert list(again) == epoch1[2:]
    assert (
        again.epoch == 2
        and list(again)[0] == torch.randperm(10, generator=torch.Generator().manual_seed(9)).tolist()[:3]
    )
