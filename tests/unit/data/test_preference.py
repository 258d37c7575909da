"""Preference data: pair validation, tokenisation against the chat_template §4 example, truncation.

Loading with bad rows and the batch layouts are tested with the data module (test_prefix_layout, test_row_numbers).
"""

import pytest

from zephyr.data.chat_template import ConversationError
from zephyr.data.preference import tokenize_pair, validate_pair
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


def test_tokenize_pair_validates_lengths_and_rows(tok):
    with pytest.raises(ValueError, match="max_prompt_length < max_length"):
        tokenize_pair(tok, make_row(), max_length=64, max_prompt_length=64)
    with pytest.raises(ConversationError, match="prompts differ"):
        tokenize_pair(tok, BAD_ROWS["prompts differ"][0])
