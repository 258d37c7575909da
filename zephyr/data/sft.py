"""dSFT data: ultrachat_200k-schema conversations -> token ids with assistant-only labels, packing, the data module.

Schema (``HuggingFaceH4/ultrachat_200k``): ``messages: [{role, content}]`` alternating user/assistant, with
optional ``prompt`` and ``prompt_id``. Each conversation gets an empty system turn when it has none (as the
handbook does), is rendered with the tokenizer's chat template and tokenized once with BOS. Labels come from
character offsets: a token is trained on when it lies inside an assistant reply or its closing ``</s>``, so the
model learns to stop; the ``\\n`` after ``</s>`` and all user/system text are masked (``-100``).
``loss_on: all`` trains on every token instead (the paper-era handbook recipe).

Packing puts several conversations in one row with best-fit decreasing bin packing. Position ids restart at 0
for each conversation and the model is called without a 2-D attention mask, so transformers builds a
block-diagonal causal mask: packed conversations never attend to each other, and a packed conversation's
logits equal its unpacked logits (tested).

:class:`SFTDataModule` serves these as resumable batches (loading and the eval split: :mod:`zephyr.data.module`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import partial
from typing import Any

from zephyr.data.chat_template import ConversationError, encode, validate_messages, with_system
from zephyr.data.collate import IGNORE_INDEX, collate_rows
from zephyr.data.io import DataError, RowReport
from zephyr.data.module import ChatDataModule

log = logging.getLogger(__name__)

ON_BAD_ROW = ("error", "skip")
ON_OVERLONG = ("error", "skip", "truncate")
LOSS_ON = ("assistant", "all")


def check_sft_options(*, loss_on: str = "assistant", on_bad_row: str = "error", on_overlong: str = "error") -> None:
    """Refuse an unknown ``data.loss_on`` / ``data.on_bad_row`` / ``data.on_overlong`` (a :class:`DataError`)."""
    for key, value, allowed in (
        ("loss_on", loss_on, LOSS_ON),
        ("on_bad_row", on_bad_row, ON_BAD_ROW),
        ("on_overlong", on_overlong, ON_OVERLONG),
    ):
        if value not in allowed:
            raise DataError(f"data.{key}={value!r} must be one of {', '.join(allowed)}")


def validate_sft_row(row: dict[str, Any]) -> list[dict[str, str]]:
    """The row's validated ``messages``; raises :class:`ConversationError` saying what is wrong."""
    if "messages" not in row:
        raise ConversationError(f"missing 'messages' column (row has {', '.join(sorted(row)) or 'no keys'})")
    return validate_messages(row["messages"])


@dataclass
class SFTExample:
    """One tokenized conversation: ``input_ids`` and ``labels`` of equal length (``-100`` = no loss)."""

    input_ids: list[int]
    labels: list[int]

    def __len__(self) -> int:
        return len(self.input_ids)


def _assistant_spans(tokenizer, messages: list[dict[str, str]]) -> tuple[str, list[tuple[int, int]]]:
    """Render ``messages`` and return the text plus the character spans of each assistant reply + eos."""
    text = tokenizer.apply_chat_template(messages, tokenize=False)
    eos = tokenizer.eos_token
    spans = []
    for k, m in enumerate(messages):
        # the rendered prefix up to and including message k tells us where message k ends
        end_text = tokenizer.apply_chat_template(messages[: k + 1], tokenize=False)
        if not text.startswith(end_text):
            raise ConversationError("chat template does not render conversations incrementally")
        if m["role"] == "assistant":
            content_end = end_text.rindex(eos) + len(eos)
            content_start = content_end - len(eos) - len(m["content"])
            spans.append((content_start, content_end))
    return text, spans


def tokenize_conversation(
    tokenizer, messages: list[dict[str, str]], *, loss_on: str = "assistant", insert_empty_system: bool = True
) -> SFTExample:
    """Tokenize one validated conversation with BOS and build its labels.

    Args:
        tokenizer: a fast tokenizer with the Zephyr chat template.
        messages: the conversation (already validated).
        loss_on: ``"assistant"`` (replies and their ``</s>``) or ``"all"`` (every token but BOS).
        insert_empty_system: prepend ``{"role": "system", "content": ""}`` when there is no system turn.

    Returns:
        The example; ``labels[i]`` is ``input_ids[i]`` where the loss counts and ``-100`` elsewhere. The
        one-token shift happens in the loss.
    """
    check_sft_options(loss_on=loss_on)
    if insert_empty_system:
        messages = with_system(messages)
    text, spans = _assistant_spans(tokenizer, messages)
    enc = encode(tokenizer, text, return_offsets_mapping=True)
    ids = list(enc["input_ids"])
    if loss_on == "all":
        labels = [IGNORE_INDEX] + ids[1:]
    else:
        labels = [IGNORE_INDEX] * len(ids)
        for i, (start, end) in enumerate(enc["offset_mapping"]):
            if end > start and any(s <= start and end <= e for s, e in spans):
                labels[i] = ids[i]
    return SFTExample(ids, labels)


def build_sft_examples(
    tokenizer,
    rows: list[dict[str, Any]],
    *,
    source: str,
    max_length: int,
    loss_on: str = "assistant",
    on_bad_row: str = "error",
    on_overlong: str = "error",
    insert_empty_system: bool = True,
    numbers: list[int] | None = None,
) -> tuple[list[SFTExample], RowReport]:
    """Validate and tokenize every row.

    Args:
        tokenizer: the chat tokenizer.
        rows: rows with a ``messages`` column.
        source: file or dataset name used in messages.
        max_length: longest allowed sequence in tokens.
        loss_on: see :func:`tokenize_conversation`.
        on_bad_row: ``"error"`` stops at the first bad row; ``"skip"`` counts it in the report.
        on_overlong: ``"error"``, ``"skip"`` (counted) or ``"truncate"`` (cut at ``max_length``, counted).
        insert_empty_system: see :func:`tokenize_conversation`.
        numbers: each row's number in its file, for messages (default: 1, 2, ...; see
            :func:`zephyr.data.io.load_numbered_rows`).

    Returns:
        ``(examples, report)``.

    Raises:
        DataError: ``"{source}: row {n}: {reason}"`` under the error policies.
    """
    check_sft_options(loss_on=loss_on, on_bad_row=on_bad_row, on_overlong=on_overlong)
    if numbers is None:
        numbers = list(range(1, len(rows) + 1))
    report = RowReport(source)
    examples: list[SFTExample] = []
    for n, row in zip(numbers, rows, strict=True):
        report.read += 1
        where = f"{source}: row {n}"
        try:
            messages = validate_sft_row(row)
        except ConversationError as e:
            if on_bad_row == "error":
                raise DataError(f"{where}: {e} (set data.on_bad_row=skip to skip and count bad rows)") from None
            report.skip(str(e), where)
            continue
        ex = tokenize_conversation(tokenizer, messages, loss_on=loss_on, insert_empty_system=insert_empty_system)
        if len(ex) > max_length:
            reason = f"{len(ex)} tokens > max_length {max_length}"
            if on_overlong == "error":
                raise DataError(f"{where}: {reason} (raise data.max_length, or set data.on_overlong=truncate or skip)")
            if on_overlong == "skip":
                report.skip(f"over-long: {reason}", where)
                continue
            ex = SFTExample(ex.input_ids[:max_length], ex.labels[:max_length])
            report.truncated += 1
        if all(label == IGNORE_INDEX for label in ex.labels[1:]):
            # truncation removed every reply: nothing to learn from this row
            report.skip("no trainable tokens after truncation", where)
            continue
        examples.append(ex)
        report.kept += 1
    if not examples:
        raise DataError(f"{source}: no usable rows ({report.summary()})")
    return examples, report


def pack_best_fit(lengths: list[int], capacity: int) -> list[list[int]]:
    """Best-fit decreasing bin packing.

    Args:
        lengths: length of each item; every length must be ``<= capacity``.
        capacity: bin size (``max_length``).

    Returns:
        Bins as lists of item indices; each bin's total length is ``<= capacity``. Deterministic.
    """
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    bins: list[list[int]] = []
    space: list[int] = []
    for i in order:
        n = lengths[i]
        if n > capacity:
            raise ValueError(f"item {i} has length {n} > capacity {capacity}")
        best, best_left = -1, capacity + 1
        for b, left in enumerate(space):
            if n <= left < best_left:
                best, best_left = b, left
        if best < 0:
            bins.append([i])
            space.append(capacity - n)
        else:
            bins[best].append(i)
            space[best] -= n
    return bins


class SFTDataModule(ChatDataModule):
    """dSFT batches (see :mod:`zephyr.data.sft`).

    Args:
        loss_on: ``assistant`` (default) or ``all``.
        on_overlong: ``error`` | ``skip`` | ``truncate``.
        packing: pack several conversations per row (best fit, no cross-attention).
        insert_empty_system: prepend an empty system turn where there is none (the recipe's choice).
        **kwargs: see :class:`ChatDataModule`.
    """

    kind = "sft"

    def __init__(
        self,
        tokenizer,
        *,
        loss_on: str = "assistant",
        on_overlong: str = "error",
        packing: bool = False,
        insert_empty_system: bool = True,
        **kwargs: Any,
    ):
        check_sft_options(loss_on=loss_on, on_bad_row=kwargs.get("on_bad_row", "error"), on_overlong=on_overlong)
        super().__init__(tokenizer, **kwargs)
        self.loss_on, self.on_overlong, self.packing = loss_on, on_overlong, packing
        self.insert_empty_system = insert_empty_system

    def validate_row(self, row: dict[str, Any]) -> None:
        validate_sft_row(row)

    def build_items(self, rows, source, numbers=None):
        examples, report = build_sft_examples(
            self.tokenizer,
            rows,
            source=source,
            max_length=self.max_length,
            loss_on=self.loss_on,
            on_bad_row=self.on_bad_row,
            on_overlong=self.on_overlong,
            insert_empty_system=self.insert_empty_system,
            numbers=numbers,
        )
        if not self.packing:
            return [[(ex.input_ids, ex.labels)] for ex in examples], report
        bins = pack_best_fit([len(ex) for ex in examples], self.max_length)
        return [[(examples[i].input_ids, examples[i].labels) for i in b] for b in bins], report

    @property
    def collate(self):
        return partial(collate_rows, pad_id=self.tokenizer.pad_token_id)


__all__ = [
    "IGNORE_INDEX",
    "SFTDataModule",
    "SFTExample",
    "DataError",
    "build_sft_examples",
    "check_sft_options",
    "pack_best_fit",
    "tokenize_conversation",
    "validate_sft_row",
]
