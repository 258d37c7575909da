"""Preference pairs for dDPO: schema checks and tokenisation with truncation (batches: ``preference_module``).

Schema: ``HuggingFaceH4/ultrafeedback_binarized`` (``*_prefs`` splits). A row has ``chosen`` and ``rejected``,
each a full conversation (list of ``{"role", "content"}``) ending in the assistant's completion, and usually
``prompt`` (str), ``prompt_id``, ``score_chosen``, ``score_rejected`` and ``messages``. The prompt of a pair
is every turn of ``chosen`` but the last, and it must equal ``rejected``'s (the HEAD handbook's
``chosen[:-1]``; for single-turn UltraFeedback this is the paper-era ``[user]`` prompt).

Tokenisation follows the Zephyr-era handbook + TRL 0.7 ``tokenize_row``: the prompt is the chat template of
``[system(""), *prompt]`` with the generation prompt (``<|system|>\\n</s>\\n<|user|>\\n{q}</s>\\n<|assistant|>\\n``),
tokenised with BOS; each completion is what the template renders for the assistant turn after that
(``{answer}</s>\\n``). Prompt and completion are tokenised **together** and split at the prompt length so
SentencePiece merges across the boundary match what the model sees at generation time.

Loading, bad-row policy and the batch layouts (prefix-shared, or TRL's concatenated ``(2B, T)``) are
:class:`zephyr.data.preference_module.PreferenceDataModule`'s.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from zephyr.data.chat_template import ConversationError, encode, render_prompt, validate_messages, with_system

__all__ = ["tokenize_completions", "tokenize_pair", "validate_pair"]


def validate_pair(row: Mapping[str, Any]) -> tuple[list[dict[str, str]], dict[str, str], dict[str, str]]:
    """Check one preference row and split it into the shared prompt and the two final assistant turns.

    Args:
        row: a mapping with ``chosen`` and ``rejected`` conversations; optional ``prompt`` (str) and numeric
            ``score_chosen`` / ``score_rejected``.

    Returns:
        ``(prompt_messages, chosen_turn, rejected_turn)``: the turns before the last (a system turn included
        when present) and the two last assistant turns.

    Raises:
        ConversationError: naming the column and the broken rule (missing column, bad conversation, the two
            prompts differ, identical completions, inconsistent scores). The loader adds file and row.
    """
    if not isinstance(row, Mapping):
        raise ConversationError(f"row must be a mapping, got {type(row).__name__}")
    convs = {}
    for key in ("chosen", "rejected"):
        if key not in row or row[key] is None:
            raise ConversationError(f"missing column {key!r}")
        try:
            convs[key] = validate_messages(row[key], require_assistant_last=True)
        except ConversationError as e:
            raise ConversationError(f"{key}: {e}") from None
    chosen, rejected = convs["chosen"], convs["rejected"]
    if len(chosen) < 2:
        raise ConversationError("chosen has no prompt turn before the assistant completion")
    if chosen[:-1] != rejected[:-1]:
        raise ConversationError("chosen and rejected prompts differ")
    if chosen[-1]["content"] == rejected[-1]["content"]:
        raise ConversationError("chosen and rejected completions are identical")
    prompt = row.get("prompt")
    if prompt is not None and not isinstance(prompt, str):
        raise ConversationError(f"'prompt' must be a string, got {type(prompt).__name__}")
    scores = {}
    for key in ("score_chosen", "score_rejected"):
        value = row.get(key)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ConversationError(f"{key!r} must be a finite number, got {value!r}")
        scores[key] = value
    if len(scores) == 2 and scores["score_chosen"] < scores["score_rejected"]:
        raise ConversationError(
            f"score_chosen {scores['score_chosen']} < score_rejected {scores['score_rejected']} (pair is flipped)"
        )
    return chosen[:-1], chosen[-1], rejected[-1]


def _common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def tokenize_pair(
    tokenizer,
    row: Mapping[str, Any],
    *,
    max_length: int = 1024,
    max_prompt_length: int = 512,
    insert_empty_system: bool = True,
) -> dict[str, Any]:
    """Tokenise one preference row into prompt and completion ids, truncating as TRL 0.7 does.

    No extra EOS is appended (TRL 0.7 appends a second ``</s>`` after the template's ``</s>\\n``): the rendered
    completion already ends with the template's end of turn ``</s>\\n``, which is what the model emits at
    inference, so an extra ``</s>`` would teach a token sequence the chat template never produces.

    Truncation (``truncation_mode="keep_end"``): when ``len(prompt) + max(len(chosen), len(rejected))`` exceeds
    ``max_length``, the prompt keeps BOS plus its **last** ``max_prompt_length − 1`` tokens (the question is at
    the end of a long prompt); if the pair is still too long, both completions are cut to
    ``max_length − len(prompt)`` tokens (their end, EOS included, is lost).

    Args:
        tokenizer: a transformers tokenizer with the Zephyr chat template (``zephyr.tokenizer.load_tokenizer()``).
        row: a preference row (see :func:`validate_pair`).
        max_length: longest prompt+completion sequence.
        max_prompt_length: longest prompt after truncation (must be < ``max_length``).
        insert_empty_system: prepend an empty system turn when the prompt has none (the handbook's choice).

    Returns:
        ``{"prompt_input_ids", "chosen_input_ids", "rejected_input_ids"}`` (lists of ints; completion ids only)
        and ``"truncated"`` (bool).

    Raises:
        ConversationError: from :func:`validate_pair`.
        ValueError: on inconsistent length limits or a template whose full rendering does not start with the
            rendered prompt.
    """
    if not 1 < max_prompt_length < max_length:
        raise ValueError(f"need 1 < max_prompt_length < max_length, got {max_prompt_length} and {max_length}")
    prompt_messages, chosen_turn, rejected_turn = validate_pair(row)
    return tokenize_completions(
        tokenizer,
        prompt_messages,
        {"chosen": chosen_turn, "rejected": rejected_turn},
        max_length=max_length,
        max_prompt_length=max_prompt_length,
        insert_empty_system=insert_empty_system,
    )


def tokenize_completions(
    tokenizer,
    prompt_messages: Sequence[Mapping[str, str]],
    turns: Mapping[str, Mapping[str, str]],
    *,
    max_length: int = 1024,
    max_prompt_length: int = 512,
    insert_empty_system: bool = True,
) -> dict[str, Any]:
    """Tokenise one prompt and one or more final assistant turns after it, truncating as :func:`tokenize_pair`.

    The tokenisation and truncation of :func:`tokenize_pair` (which calls it with ``chosen`` and ``rejected``);
    KTO's unpaired rows (:mod:`zephyr.data.kto`) call it with one ``completion``.

    Args:
        tokenizer: the chat tokenizer.
        prompt_messages: validated turns before the completion (ending with the user's).
        turns: name -> the assistant turn completing the prompt.
        max_length: longest prompt + completion sequence.
        max_prompt_length: longest prompt after truncation.
        insert_empty_system: prepend an empty system turn when the prompt has none.

    Returns:
        ``{"prompt_input_ids", "<name>_input_ids" for each turn, "truncated"}``.
    """
    if insert_empty_system:
        prompt_messages = with_system(prompt_messages)
    prompt_text = render_prompt(tokenizer, prompt_messages, insert_empty_system=False)  # system turn added above

    # Tokenise prompt+completion together and cut at the prompt's own length (TRL 0.7 ``build_tokenized_answer``).
    # If SentencePiece merged the prompt's last token with the completion's first characters, the cut moves back
    # to the longest common prefix (shared by chosen and rejected), so prompt + completion ids are exactly the
    # joint tokenisation. With the Zephyr template the prompt ends in "\n" and this never triggers.
    prompt_ids = encode(tokenizer, prompt_text)["input_ids"]
    full_ids = {}
    for key, turn in turns.items():
        full_text = tokenizer.apply_chat_template([*prompt_messages, turn], tokenize=False)
        if not full_text.startswith(prompt_text):
            raise ValueError("the chat template's rendering of the full conversation does not extend the prompt's")
        full_ids[key] = encode(tokenizer, full_text)["input_ids"]
    cut = min(_common_prefix(prompt_ids, ids) for ids in full_ids.values())
    prompt_ids = prompt_ids[:cut]
    ids = {key: value[cut:] for key, value in full_ids.items()}

    truncated = False
    longest = max(len(value) for value in ids.values())
    if len(prompt_ids) + longest > max_length:
        if len(prompt_ids) > max_prompt_length:
            bos = tokenizer.bos_token_id
            if bos is not None and prompt_ids[0] == bos:
                prompt_ids = [bos, *prompt_ids[len(prompt_ids) - (max_prompt_length - 1) :]]
            else:
                prompt_ids = prompt_ids[-max_prompt_length:]
            truncated = True
        room = max_length - len(prompt_ids)
        if longest > room:
            ids = {key: value[:room] for key, value in ids.items()}
            truncated = True
    return {
        "prompt_input_ids": list(prompt_ids),
        **{f"{key}_input_ids": list(value) for key, value in ids.items()},
        "truncated": truncated,
    }
