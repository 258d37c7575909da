"""Unpaired feedback for KTO: rows ``prompt``, ``completion``, ``label`` (TRL's unpaired preference schema) as batches.

Schema (TRL ``KTOTrainer``; ``trl-lib/kto-mix-14k``): ``prompt`` is a string (one user turn) or a conversation
(``{"role", "content"}`` turns ending with the user's, an optional system turn first); ``completion`` is a
string or a one-turn list ``[{"role": "assistant", "content": ...}]``; ``label`` is ``true`` (desirable) or
``false`` (undesirable), a JSON boolean. A non-boolean label or an empty completion is a bad row: an error naming
the file and row (``data.on_bad_row=skip`` counts and skips it), raised while the data loads, before any model.
Rows are tokenised like the preference pairs' prompts and completions
(:func:`zephyr.data.preference.tokenize_completions`: chat template, empty system turn, keep-end truncation).

**The KL completion.** KTO's reference point z (:func:`zephyr.objectives.kto.kto_reference_point`) is estimated
from mismatched prompt/completion pairs (the KTO paper §4.2; TRL ``_prepare_dataset``): row i is paired with the
completion of row i − 1 within consecutive chunks of ``batch_size`` rows in file order (TRL rotates each chunk
of ``per_device_train_batch_size`` by one). The pairing is fixed when the data loads, so the reference log-prob
of every mismatched pair is computed once and cached by row index, like the completions'
(:class:`zephyr.modules.reference.Reference`). A neighbour with the same prompt (the two halves of one split pair)
is passed over for the next one back, so each KL pair is a real mismatch; a chunk of one row borrows from the
chunk before it. Batches are shuffled, so the mismatched completions of a batch are the rows' file neighbours
rather than its batch-mates (TRL needs sequential sampling for that); z is a detached batch mean of the same
kind of pairs either way.

**Batches.** Each row is laid out as a pair whose two completions share the prompt: the completion (the
collators' ``chosen`` slot) and the KL completion (``rejected`` slot), so ``data.layout`` works as for DPO
(``prefix_shared``: one row ``[prompt, completion, kl_completion]``; ``concat``: 2B rows, completions first) and
:func:`zephyr.modules.pair_forward.pair_logps` scores both in one forward. ``label`` ``(B,)`` bool is added.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from functools import partial
from typing import Any

import torch

from zephyr.data.chat_template import ConversationError, validate_messages
from zephyr.data.collate import collate_pairs, collate_pairs_shared
from zephyr.data.io import RowReport
from zephyr.data.preference import PreferenceDataModule, examples_fingerprint, tokenize_completions

log = logging.getLogger(__name__)

__all__ = ["KTODataModule", "collate_unpaired", "kl_partners", "validate_unpaired"]


def _completion_text(value: Any) -> str:
    """The completion's text from a string or TRL's one-turn ``[{"role": "assistant", ...}]`` list."""
    if isinstance(value, str):
        text = value
    elif isinstance(value, (list, tuple)):
        if len(value) != 1 or not isinstance(value[0], Mapping) or value[0].get("role") != "assistant":
            raise ConversationError("'completion' as a list must be one turn {'role': 'assistant', 'content': ...}")
        text = value[0].get("content")
        if not isinstance(text, str):
            raise ConversationError(f"'completion' content must be a string, got {type(text).__name__}")
    else:
        raise ConversationError(f"'completion' must be a string or a one-turn list, got {type(value).__name__}")
    if not text.strip():
        raise ConversationError("'completion' is empty")
    return text


def validate_unpaired(row: Mapping[str, Any]) -> tuple[list[dict[str, str]], dict[str, str], bool]:
    """Check one unpaired row and return ``(prompt_messages, completion_turn, label)``.

    Raises:
        ConversationError: a missing column, a label that is not a boolean, an empty completion, or a prompt that
            is not a string / a conversation ending with the user's turn. The loader adds file and row.
    """
    if not isinstance(row, Mapping):
        raise ConversationError(f"row must be a mapping, got {type(row).__name__}")
    if "completion" not in row and "chosen" in row and "rejected" in row:
        raise ConversationError(
            "a preference pair, not an unpaired row (prompt, completion, label): use objective=dpo, or split the "
            "pairs with zephyr.feedback.kto.unpair"
        )
    for key in ("prompt", "completion", "label"):
        if key not in row or row[key] is None:
            raise ConversationError(f"missing column {key!r} (an unpaired row has prompt, completion, label)")
    label = row["label"]
    if not isinstance(label, bool):
        raise ConversationError(f"'label' must be true or false, got {label!r}")
    text = _completion_text(row["completion"])
    prompt = row["prompt"]
    if isinstance(prompt, str):
        if not prompt.strip():
            raise ConversationError("'prompt' is empty")
        prompt = [{"role": "user", "content": prompt}]
    elif not isinstance(prompt, (list, tuple)):
        raise ConversationError(f"'prompt' must be a string or a list of turns, got {type(prompt).__name__}")
    turn = {"role": "assistant", "content": text}
    try:
        conversation = validate_messages([*prompt, turn], require_assistant_last=True)
    except ConversationError as e:
        raise ConversationError(f"prompt: {e}") from None
    return conversation[:-1], turn, label


def kl_partners(prompts: list[list[int]], chunk: int) -> list[int]:
    """For each row, the row whose completion makes its mismatched KL pair (TRL's rotation by one per chunk).

    Row ``i`` of a chunk of ``chunk`` consecutive rows takes row ``i − 1`` (the first takes the chunk's last),
    skipping rows with the same prompt ids; a trailing chunk of one row is merged with the one before. When no
    row of the chunk has another prompt, the nearest earlier row of the whole split with one is taken; a split
    whose rows all share one prompt pairs each row with the previous one (logged).

    Args:
        prompts: the prompt token ids of every row, in order.
        chunk: rows per chunk (``data.batch_size``).

    Returns:
        One partner index per row.
    """
    n = len(prompts)
    starts = list(range(0, n, max(1, chunk)))
    if len(starts) > 1 and n - starts[-1] == 1:
        starts.pop()
    bounds = [(s, starts[k + 1] if k + 1 < len(starts) else n) for k, s in enumerate(starts)]
    partners, fallback = [], 0
    for s, e in bounds:
        size = e - s
        for i in range(s, e):
            picks = [s + (i - s - d) % size for d in range(1, size)]
            picks += [(i - d) % n for d in range(1, n)]
            j = next((j for j in picks if prompts[j] != prompts[i]), None)
            if j is None:
                j, fallback = (i - 1) % n, fallback + 1
            partners.append(j)
    if fallback:
        log.warning("data: %d rows share one prompt with every other row: their KL pairs are not mismatched", fallback)
    return partners


def collate_unpaired(items: list[dict[str, Any]], pad_id: int, layout: str = "prefix_shared") -> dict[str, Any]:
    """Lay out B unpaired rows as pairs (completion, KL completion) in ``layout`` and add ``label`` ``(B,)`` bool."""
    pairs = [
        {"prompt": it["prompt"], "chosen": it["completion"], "rejected": it["kl_completion"], "index": it["index"]}
        for it in items
    ]
    batch = (collate_pairs_shared if layout == "prefix_shared" else collate_pairs)(pairs, pad_id=pad_id)
    batch["label"] = torch.tensor([bool(it["label"]) for it in items], dtype=torch.bool)
    return batch


class KTODataModule(PreferenceDataModule):
    """KTO's unpaired rows: a local file (``path``), a hub dataset (``name``) or the built-in ``toy`` rows.

    Args:
        tokenizer: the chat tokenizer.
        **kwargs: see :class:`zephyr.data.preference.PreferenceDataModule` (``max_length``,
            ``max_prompt_length``, ``layout``, ``batch_size`` in rows, which is also the KL chunk size, ...).
    """

    kind = "unpaired"

    def validate_row(self, row: dict[str, Any]) -> None:
        validate_unpaired(row)

    def build_items(
        self, rows: list[dict[str, Any]], source: str, numbers: list[int] | None = None
    ) -> tuple[list[dict[str, Any]], RowReport]:
        report = RowReport(source=source, read=len(rows))
        items = []
        for row in rows:
            prompt_messages, turn, label = validate_unpaired(row)
            ex = tokenize_completions(
                self.tokenizer,
                prompt_messages,
                {"completion": turn},
                max_length=self.max_length,
                max_prompt_length=self.max_prompt_length,
                insert_empty_system=self.insert_empty_system,
            )
            report.truncated += int(ex["truncated"])
            items.append({"prompt": ex["prompt_input_ids"], "completion": ex["completion_input_ids"], "label": label})
        for i, j in enumerate(kl_partners([it["prompt"] for it in items], self.batch_size)):
            room = self.max_length - len(items[i]["prompt"])
            items[i].update(kl_completion=items[j]["completion"][:room], index=i)
        report.kept = len(items)
        desirable = sum(it["label"] for it in items)
        log.info("data: %s: %d desirable, %d undesirable rows", source, desirable, len(items) - desirable)
        return items, report

    @property
    def collate(self):
        """The batch collator of ``self.layout`` (read when a loader is built, so a layout switch takes effect)."""
        return partial(collate_unpaired, pad_id=self.tokenizer.pad_token_id, layout=self.layout)

    def fingerprint(self, split: str) -> str:
        """Fingerprint of the tokenised rows of ``train`` or ``eval``: prompts, completions and KL completions."""
        items = self.train_items if split == "train" else self.eval_items
        if items is None:
            raise RuntimeError("call setup() before fingerprint()")
        pairs = [{"prompt": it["prompt"], "chosen": it["completion"], "rejected": it["kl_completion"]} for it in items]
        return "kto:" + examples_fingerprint(pairs)
