"""Preference pairs for dDPO: schema checks, loading, tokenisation with truncation, and the concatenated batch.

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

The batch layout is TRL's ``concatenated_forward``: ``[chosen_1..chosen_B; rejected_1..rejected_B]`` in one
``(2B, T)`` forward pass, labels ``-100`` on prompt and padding.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from zephyr.data.chat_template import ConversationError, render_prompt, validate_messages, with_system

__all__ = [
    "IGNORE_INDEX",
    "PreferenceCollator",
    "PreferenceRows",
    "load_preference_rows",
    "tokenize_pair",
    "tokenize_pairs",
    "validate_pair",
]

IGNORE_INDEX = -100
LOCAL_FORMATS = {".jsonl": "json", ".json": "json", ".parquet": "parquet"}


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
    if insert_empty_system:
        prompt_messages = with_system(prompt_messages)
    prompt_text = render_prompt(tokenizer, prompt_messages, insert_empty_system=False)  # system turn added above

    # Tokenise prompt+completion together and cut at the prompt's own length (TRL 0.7 ``build_tokenized_answer``).
    # If SentencePiece merged the prompt's last token with the completion's first characters, the cut moves back
    # to the longest common prefix (shared by chosen and rejected), so prompt + completion ids are exactly the
    # joint tokenisation. With the Zephyr template the prompt ends in "\n" and this never triggers.
    prompt_ids = tokenizer(prompt_text, add_special_tokens=True)["input_ids"]
    full_ids = {}
    for key, turn in (("chosen", chosen_turn), ("rejected", rejected_turn)):
        full_text = tokenizer.apply_chat_template([*prompt_messages, turn], tokenize=False)
        if not full_text.startswith(prompt_text):
            raise ValueError("the chat template's rendering of the full conversation does not extend the prompt's")
        full_ids[key] = tokenizer(full_text, add_special_tokens=True)["input_ids"]
    cut = min(_common_prefix(prompt_ids, ids) for ids in full_ids.values())
    prompt_ids = prompt_ids[:cut]
    ids = {key: value[cut:] for key, value in full_ids.items()}

    truncated = False
    longest = max(len(ids["chosen"]), len(ids["rejected"]))
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
        "chosen_input_ids": list(ids["chosen"]),
        "rejected_input_ids": list(ids["rejected"]),
        "truncated": truncated,
    }


def tokenize_pairs(tokenizer, rows: Iterable[Mapping[str, Any]], **kwargs: Any) -> tuple[list[dict[str, Any]], int]:
    """:func:`tokenize_pair` over many rows; returns the examples and how many were truncated (to report)."""
    examples = [tokenize_pair(tokenizer, row, **kwargs) for row in rows]
    return examples, sum(1 for ex in examples if ex["truncated"])


@dataclass
class PreferenceRows:
    """Validated rows of one preference source, and every row that was skipped with its reason.

    Attributes:
        source: the file path or dataset name (and split) the rows came from.
        rows: the valid rows, unchanged.
        skipped: ``(row_number, reason)`` (1-based) for each bad row skipped under ``on_bad_row="skip"``.
    """

    source: str
    rows: list[dict[str, Any]]
    skipped: list[tuple[int, str]] = field(default_factory=list)

    @property
    def num_skipped(self) -> int:
        return len(self.skipped)

    def __len__(self) -> int:
        return len(self.rows)


def _is_local(path_or_name: str) -> bool:
    """A file path (known suffix, existing, or explicitly relative/absolute), not a hub name like ``org/name``."""
    return (
        Path(path_or_name).suffix in LOCAL_FORMATS
        or path_or_name.startswith((".", "/", "~"))
        or Path(path_or_name).exists()
    )


def _read_jsonl_rows(path: Path) -> list[Any]:
    """Plain JSON-lines reader, used when Arrow cannot build one table (mixed column types): keeps row numbers."""
    rows: list[Any] = []
    with path.open(encoding="utf-8") as f:
        for line in f:
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                rows.append(ConversationError(f"invalid JSON ({e.msg})"))
    return rows


def load_preference_rows(
    path_or_name: str | os.PathLike,
    split: str = "train",
    *,
    on_bad_row: str = "error",
    limit: int | None = None,
) -> PreferenceRows:
    """Load preference rows from a local jsonl/json/parquet file or a Hugging Face dataset, validating each.

    Local files go through ``datasets.load_dataset("json" | "parquet", data_files=...)`` (``split`` is then
    ignored: a file is one split). Anything else is a dataset name: ``load_dataset(name, split=split)``, e.g.
    ``HuggingFaceH4/ultrafeedback_binarized`` with ``split="train_prefs"`` (needs the hub or its cache).

    Args:
        path_or_name: a file path or a dataset name.
        split: the split of a named dataset.
        on_bad_row: ``"error"`` raises on the first bad row; ``"skip"`` drops bad rows and records them in
            ``skipped`` (never silently).
        limit: keep at most this many valid rows (quick runs).

    Returns:
        :class:`PreferenceRows`.

    Raises:
        FileNotFoundError: a local path that does not exist (naming it).
        ConversationError: (a ValueError, reported as a one-line user error) ``"FILE: row N: reason"`` for a bad
            row under ``on_bad_row="error"`` (N counts from 1, the jsonl line), or an unreadable json/parquet file.
        ValueError: an unknown ``on_bad_row`` or file suffix.
    """
    if on_bad_row not in ("error", "skip"):
        raise ValueError(f"on_bad_row must be 'error' or 'skip', got {on_bad_row!r}")
    import datasets  # heavy; only loaders need it

    name = str(path_or_name)
    if _is_local(name):
        path = Path(name).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"preference data file {path} does not exist")
        fmt = LOCAL_FORMATS.get(path.suffix)
        if fmt is None:
            raise ValueError(f"{path}: unknown preference file type {path.suffix!r} (use .jsonl, .json or .parquet)")
        source = str(path)
        try:
            raw: Sequence[Any] = datasets.load_dataset(fmt, data_files=str(path), split="train")
        except Exception as e:  # Arrow could not unify the rows' types; find the bad row ourselves
            if path.suffix != ".jsonl":
                raise ConversationError(f"{path}: could not be read as {fmt}: {e}") from e
            raw = _read_jsonl_rows(path)
    else:
        source = f"{name} [{split}]"
        raw = datasets.load_dataset(name, split=split)

    rows: list[dict[str, Any]] = []
    skipped: list[tuple[int, str]] = []
    for index, row in enumerate(raw, 1):  # 1-based: the jsonl line number, as zephyr.data.io reports rows
        try:
            if isinstance(row, Exception):
                raise row
            validate_pair(row)
        except ConversationError as e:
            if on_bad_row == "error":
                raise ConversationError(f"{source}: row {index}: {e}") from None
            skipped.append((index, str(e)))
            continue
        rows.append(dict(row))
        if limit is not None and len(rows) >= limit:
            break
    return PreferenceRows(source=source, rows=rows, skipped=skipped)


class PreferenceCollator:
    """Pad tokenised pairs into one concatenated ``(2B, T)`` batch: chosen rows first, then rejected.

    Row ``i`` is ``prompt_i + chosen_i`` and row ``B + i`` is ``prompt_i + rejected_i``, right-padded with
    ``pad_token_id`` to the longest row (rounded up to ``pad_to_multiple_of``). Labels copy the ids on
    completion positions and are ``-100`` on prompt and padding, so
    ``completion_logps(logits, labels)[:B]`` are the chosen log-probs and ``[B:]`` the rejected ones.
    The pad id never matters (attention mask 0, label -100); pad = eos is the recipe's choice.

    Args:
        pad_token_id: the tokenizer's ``pad_token_id``.
        pad_to_multiple_of: round T up to a multiple of this (tensor-core friendly), or ``None``.
        ignore_index: the label value for uncounted positions.
    """

    def __init__(self, pad_token_id: int, *, pad_to_multiple_of: int | None = None, ignore_index: int = IGNORE_INDEX):
        if pad_token_id is None:
            raise ValueError("pad_token_id is None: set tokenizer.pad_token (zephyr uses pad = eos)")
        self.pad_token_id = int(pad_token_id)
        self.pad_to_multiple_of = pad_to_multiple_of
        self.ignore_index = ignore_index

    def __call__(self, examples: Sequence[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
        """Build the batch.

        Args:
            examples: B outputs of :func:`tokenize_pair`.

        Returns:
            ``input_ids``, ``attention_mask``, ``labels``: ``(2B, T)`` int64; ``prompt_lengths`` and
            ``completion_lengths``: ``(2B,)`` int64 (chosen rows first).
        """
        if not examples:
            raise ValueError("cannot collate an empty list of preference examples")
        sequences: list[tuple[list[int], list[int]]] = []
        for key in ("chosen_input_ids", "rejected_input_ids"):
            for ex in examples:
                sequences.append((list(ex["prompt_input_ids"]), list(ex[key])))
        width = max(len(p) + len(c) for p, c in sequences)
        if self.pad_to_multiple_of:
            width = -(-width // self.pad_to_multiple_of) * self.pad_to_multiple_of
        rows = len(sequences)
        input_ids = torch.full((rows, width), self.pad_token_id, dtype=torch.long)  # (2B, T)
        attention_mask = torch.zeros((rows, width), dtype=torch.long)  # (2B, T)
        labels = torch.full((rows, width), self.ignore_index, dtype=torch.long)  # (2B, T)
        for i, (prompt, completion) in enumerate(sequences):
            n_prompt, n = len(prompt), len(prompt) + len(completion)
            input_ids[i, :n] = torch.tensor(prompt + completion, dtype=torch.long)
            attention_mask[i, :n] = 1
            if completion:
                labels[i, n_prompt:n] = torch.tensor(completion, dtype=torch.long)
        return {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "labels": labels,
            "prompt_lengths": torch.tensor([len(p) for p, _ in sequences], dtype=torch.long),
            "completion_lengths": torch.tensor([len(c) for _, c in sequences], dtype=torch.long),
        }
