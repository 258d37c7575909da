"""The tokenizer's chat template renders exactly like the released Zephyr template, with the real Mistral ids."""

import pytest

from zephyr.data.chat_template import ConversationError, render, validate_messages, with_system
from zephyr.tokenizer import load_tokenizer, save_tokenizer

SYS = {"role": "system", "content": "You are a helpful assistant."}
USER = {"role": "user", "content": "What is 2+2?"}
ASSIST = {"role": "assistant", "content": "2+2 equals 4."}
USER2 = {"role": "user", "content": "And 3+3?"}
ASSIST2 = {"role": "assistant", "content": "6."}

TEXT_A = "<|system|>\nYou are a helpful assistant.</s>\n<|user|>\nWhat is 2+2?</s>\n<|assistant|>\n2+2 equals 4.</s>\n"
IDS_A = [1, 523, 28766, 6574, 28766, 28767, 13, 1976, 460, 264, 10865, 13892, 28723, 2,
         28705, 13, 28789, 28766, 1838, 28766, 28767, 13, 3195, 349, 28705, 28750, 28806, 28750, 28804, 2,
         28705, 13, 28789, 28766, 489, 11143, 28766, 28767, 13, 28750, 28806, 28750, 21588, 28705, 28781, 28723, 2,
         28705, 13]  # fmt: skip

SHAPES = {
    "system_user_assistant": ([SYS, USER, ASSIST], False, TEXT_A),
    "system_user_genprompt": (
        [SYS, USER],
        True,
        "<|system|>\nYou are a helpful assistant.</s>\n<|user|>\nWhat is 2+2?</s>\n<|assistant|>\n",
    ),
    "system_user_no_genprompt": (
        [SYS, USER],
        False,
        "<|system|>\nYou are a helpful assistant.</s>\n<|user|>\nWhat is 2+2?</s>\n",
    ),
    "no_system": ([USER, ASSIST], False, "<|user|>\nWhat is 2+2?</s>\n<|assistant|>\n2+2 equals 4.</s>\n"),
    "empty_system": (
        [{"role": "system", "content": ""}, USER],
        True,
        "<|system|>\n</s>\n<|user|>\nWhat is 2+2?</s>\n<|assistant|>\n",
    ),
    "multi_turn": (
        [USER, ASSIST, USER2, ASSIST2],
        False,
        "<|user|>\nWhat is 2+2?</s>\n<|assistant|>\n2+2 equals 4.</s>\n<|user|>\nAnd 3+3?</s>\n<|assistant|>\n6.</s>\n",
    ),
    "multi_turn_genprompt": (
        [SYS, USER, ASSIST, USER2],
        True,
        "<|system|>\nYou are a helpful assistant.</s>\n<|user|>\nWhat is 2+2?</s>\n<|assistant|>\n2+2 equals 4.</s>\n"
        "<|user|>\nAnd 3+3?</s>\n<|assistant|>\n",
    ),
    "unknown_role_renders_nothing": ([{"role": "tool", "content": "x"}, USER], False, "<|user|>\nWhat is 2+2?</s>\n"),
    "genprompt_after_assistant": (
        [USER, ASSIST],
        True,
        "<|user|>\nWhat is 2+2?</s>\n<|assistant|>\n2+2 equals 4.</s>\n<|assistant|>\n",
    ),
}


@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_template_matches_official_rendering(tokenizer, shape):
    messages, gen, expected = SHAPES[shape]
    assert tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=gen) == expected
    assert render(messages, add_generation_prompt=gen) == expected


def test_real_mistral_vocabulary(tokenizer):
    assert len(tokenizer) == 32000
    assert tokenizer("Hello").input_ids == [1, 22557]
    assert (tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id) == (1, 2, 2)
    assert tokenizer.convert_ids_to_tokens(13) == "<0x0A>"


def test_reference_token_ids_legacy_mode(tokenizer):
    assert tokenizer(TEXT_A).input_ids == IDS_A  # 49 ids: </s>\n is 2, 28705, 13 (legacy)
    gen = tokenizer.apply_chat_template([SYS, USER], tokenize=False, add_generation_prompt=True)
    assert tokenizer(gen).input_ids == IDS_A[:39]


def test_empty_system_generation_prompt_ids(tokenizer):
    text = tokenizer.apply_chat_template(
        [{"role": "system", "content": ""}, {"role": "user", "content": "Hi"}],
        tokenize=False,
        add_generation_prompt=True,
    )
    assert tokenizer(text).input_ids == [1, 523, 28766, 6574, 28766, 28767, 13, 2, 28705, 13, 28789, 28766, 1838,
                                         28766, 28767, 13, 23809, 2, 28705, 13, 28789, 28766, 489, 11143, 28766,
                                         28767, 13]  # fmt: skip


def test_apply_chat_template_tokenize_has_no_bos(tokenizer):
    enc = tokenizer.apply_chat_template([SYS, USER, ASSIST], tokenize=True)
    ids = enc["input_ids"] if isinstance(enc, dict) or hasattr(enc, "keys") else enc
    assert ids == IDS_A[1:]


def test_saved_tokenizer_reloads_identically(tokenizer, tmp_path):
    from transformers import AutoTokenizer

    save_tokenizer(tokenizer, tmp_path)
    again = AutoTokenizer.from_pretrained(tmp_path)
    assert again(TEXT_A).input_ids == IDS_A
    assert again.apply_chat_template([SYS, USER, ASSIST], tokenize=False) == TEXT_A


def test_load_tokenizer_from_dir_keeps_or_sets_template(tokenizer, tmp_path):
    save_tokenizer(tokenizer, tmp_path)
    assert load_tokenizer(tmp_path).apply_chat_template([USER], tokenize=False) == "<|user|>\nWhat is 2+2?</s>\n"
    custom = "{% for m in messages %}{{ m['content'] }}{% endfor %}"
    assert load_tokenizer(tmp_path, chat_template=custom).apply_chat_template([USER], tokenize=False) == "What is 2+2?"


def test_load_tokenizer_missing_dir(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_tokenizer(tmp_path / "nope")


def test_with_system_inserts_empty_system_once():
    assert with_system([USER])[0] == {"role": "system", "content": ""}
    assert with_system([SYS, USER]) == [SYS, USER]


@pytest.mark.parametrize(
    "messages, match",
    [
        ([], "non-empty list"),
        ("hello", "non-empty list"),
        ([{"role": "user"}], "turn 0 must be a mapping"),
        ([{"role": "robot", "content": "x"}, ASSIST], "unknown role 'robot'"),
        ([USER, {"role": "assistant", "content": "  "}], r"turn 1 \(assistant\) has empty content"),
        ([USER, USER2, ASSIST], "turn 1 is 'user' but 'assistant' was expected"),
        ([USER, {"role": "assistant", "content": 5}], "content must be a string, got int"),
        ([SYS, USER], "no assistant turn"),
        ([ASSIST, USER], "turn 0 is 'assistant' but 'user' was expected"),
        ([USER, ASSIST, SYS], "only the first turn may be system"),
    ],
)
def test_validate_messages_rejects(messages, match):
    with pytest.raises(ConversationError, match=match):
        validate_messages(messages)


def test_validate_messages_requires_assistant_last():
    with pytest.raises(ConversationError, match="last turn must be the assistant"):
        validate_messages([USER, ASSIST, USER2], require_assistant_last=True)
    assert validate_messages([SYS, USER, ASSIST], require_assistant_last=True)[2] == ASSIST
