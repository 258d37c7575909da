"""Preference pairs for dDPO: schema checks, tokenisation with truncation, and the ``PreferenceDataModule``.

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

The data module (:class:`PreferenceDataModule`): every row is
validated right after loading, before the eval hold-out (``ChatDataModule._load``), so an error or a counted skip
names the row as it is in the file (1-based, the jsonl line). Tokenisation and truncation are
:func:`tokenize_pair`.

Batch layout: a batch of B pairs becomes 2B rows, ``[prompt_1 + chosen_1, ..., prompt_B + chosen_B,
prompt_1 + rejected_1, ...]`` (TRL's ``concatenated_forward`` order), laid out by
:func:`zephyr.data.collate.collate_rows`: right padding, ``position_ids`` restarting at 0 per sequence and no
2-D attention mask, so chosen and rejected go through the model in ONE forward, the same code path as dSFT.
``index`` carries each pair's position in the split so precomputed reference log-probs can be looked up.

``layout="prefix_shared"`` (the default, ``data.layout``) instead lays out each pair as ONE row ``[prompt,
chosen, rejected]`` with a 4-D segment mask (:func:`zephyr.data.collate.collate_pairs_shared`), so each prompt
goes through the model once; the log-probs equal the concatenated layout's within 1e-5. It costs a
``(B, 1, T, T)`` boolean mask per batch (T ≈ prompt + chosen + rejected) and cannot run under FlashAttention-2, where
:class:`zephyr.modules.dpo.DPOModule` switches the data module back to ``concat``. ``num_tokens`` counts
``2·prompt + chosen + rejected`` per pair in both layouts, so throughput figures are comparable.

The embedded default (``conf/data/toy_prefs.yaml``) hands the module its rows as ``toy``, a callable that Hydra
builds by ``_target_`` (:func:`zephyr.toy.pairs.preference_rows`: the feedback pipeline on toy-world questions);
this package imports nothing from the toy world.
"""

from __future__ import annotations

import hashlib
import logging
import math
from collections.abc import Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import torch

from zephyr.data.chat_template import ConversationError, encode, render_prompt, validate_messages, with_system
from zephyr.data.collate import collate_pairs, collate_pairs_shared
from zephyr.data.io import DataError, RowReport
from zephyr.data.module import ChatDataModule

log = logging.getLogger(__name__)

LAYOUTS = ("concat", "prefix_shared")

__all__ = [
    "LAYOUTS",
    "PreferenceDataModule",
    "examples_fingerprint",
    "tokenize_completions",
    "tokenize_pair",
    "validate_pair",
]


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


def examples_fingerprint(items: list[dict[str, Any]]) -> str:
    """SHA-256 over the token ids of every pair, in order: changes with the data, tokenizer or truncation."""
    h = hashlib.sha256()
    for it in items:
        for key in ("prompt", "chosen", "rejected"):
            h.update(key.encode())
            h.update(torch.tensor(it[key], dtype=torch.int32).numpy().tobytes())
    return h.hexdigest()


class PreferenceDataModule(ChatDataModule):
    """dDPO pairs.

    Args:
        tokenizer: the chat tokenizer.
        max_length: longest prompt + completion (the recipe: 1024).
        max_prompt_length: longest prompt after left truncation (the recipe: 512).
        insert_empty_system: prepend an empty system turn to prompts without one (the recipe's choice).
        layout: ``prefix_shared`` (one row per pair, each prompt run once) or ``concat`` (2B rows); see above.
        **kwargs: see :class:`zephyr.data.module.ChatDataModule` (``path``, ``name``, ``split``, ``eval_split``,
            ``eval_size``, ``batch_size`` in pairs, ``on_bad_row``, ``toy`` (the built-in rows), ...).
    """

    kind = "preference"

    def __init__(
        self,
        tokenizer,
        *,
        max_length: int = 1024,
        max_prompt_length: int = 512,
        insert_empty_system: bool = True,
        layout: str = "prefix_shared",
        **kwargs: Any,
    ):
        if layout not in LAYOUTS:
            raise DataError(f"data.layout={layout!r} must be one of {', '.join(LAYOUTS)}")
        if not 1 < max_prompt_length < max_length:
            raise DataError(
                f"data.max_prompt_length={max_prompt_length} must be > 1 and < data.max_length={max_length}"
            )
        super().__init__(tokenizer, max_length=max_length, **kwargs)
        self.max_prompt_length = max_prompt_length
        self.insert_empty_system = insert_empty_system
        self.layout = layout

    def validate_row(self, row: dict[str, Any]) -> None:
        validate_pair(row)

    def build_items(
        self, rows: list[dict[str, Any]], source: str, numbers: list[int] | None = None
    ) -> tuple[list[dict[str, Any]], RowReport]:
        report = RowReport(source=source, read=len(rows))
        items = []
        for i, row in enumerate(rows):
            ex = tokenize_pair(
                self.tokenizer,
                row,
                max_length=self.max_length,
                max_prompt_length=self.max_prompt_length,
                insert_empty_system=self.insert_empty_system,
            )
            report.truncated += int(ex["truncated"])
            items.append(
                {
                    "prompt": ex["prompt_input_ids"],
                    "chosen": ex["chosen_input_ids"],
                    "rejected": ex["rejected_input_ids"],
                    "index": i,
                }
            )
        report.kept = len(items)
        return items, report

    @property
    def collate(self):
        """The batch collator of ``self.layout`` (read when a loader is built, so a layout switch takes effect)."""
        fn = collate_pairs_shared if self.layout == "prefix_shared" else collate_pairs
        return partial(fn, pad_id=self.tokenizer.pad_token_id)

    def fingerprint(self, split: str) -> str:
        """Fingerprint of the tokenised ``train`` or ``eval`` pairs (call after ``setup``)."""
        items = self.train_items if split == "train" else self.eval_items
        if items is None:
            raise RuntimeError("call setup() before fingerprint()")
        return examples_fingerprint(items)

    def local_dir(self) -> Path | None:
        """The folder of a local data file (reference log-probs are cached next to it), else ``None``."""
        return Path(self.path).expanduser().resolve().parent if self.path else None
