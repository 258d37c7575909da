"""Preference-pair data for dDPO: the built-in toy-world pairs, a local file, or a hub dataset, as padding-free batches.

Rows use the ``HuggingFaceH4/ultrafeedback_binarized`` schema (see :mod:`zephyr.data.preference`). Every row is
validated right after loading, before the eval hold-out (``ChatDataModule._load``), so an error or a counted skip
names the row as it is in the file (1-based, the jsonl line). Tokenisation and truncation are
:func:`zephyr.data.preference.tokenize_pair`.

Batch layout: a batch of B pairs becomes 2B rows, ``[prompt_1 + chosen_1, ..., prompt_B + chosen_B,
prompt_1 + rejected_1, ...]`` (TRL's ``concatenated_forward`` order), laid out by
:func:`zephyr.data.collate.collate_rows`: right padding, ``position_ids`` restarting at 0 per sequence and no
2-D attention mask, so chosen and rejected go through the model in ONE forward, the same code path as dSFT.
``index`` carries each pair's position in the split so precomputed reference log-probs can be looked up.

``layout="prefix_shared"`` (the default, ``data.layout``) instead lays out each pair as ONE row ``[prompt,
chosen, rejected]`` with a 4-D segment mask (:mod:`zephyr.data.prefix_share`), so each prompt goes through the
model once; the log-probs equal the concatenated layout's within 1e-5. It costs a ``(B, 1, T, T)`` boolean mask
per batch (T ≈ prompt + chosen + rejected) and cannot run under FlashAttention-2, where
:class:`zephyr.modules.dpo.DPOModule` switches the data module back to ``concat``. ``num_tokens`` counts
``2·prompt + chosen + rejected`` per pair in both layouts, so throughput figures are comparable.

The embedded default (``conf/data/toy_prefs.yaml``) hands the module its rows as ``toy``, a callable that Hydra
builds by ``_target_`` (:func:`zephyr.toy.pairs.preference_rows`: the feedback pipeline on toy-world questions);
this package imports nothing from the toy world.
"""

from __future__ import annotations

import hashlib
import logging
from functools import partial
from pathlib import Path
from typing import Any

import torch

from zephyr.data.collate import IGNORE_INDEX, collate_rows
from zephyr.data.io import DataError, RowReport
from zephyr.data.module import ChatDataModule
from zephyr.data.preference import tokenize_pair, validate_pair
from zephyr.data.prefix_share import collate_pairs_prefix_shared

log = logging.getLogger(__name__)

LAYOUTS = ("concat", "prefix_shared")


def collate_pairs(items: list[dict[str, Any]], pad_id: int, pad_to_multiple_of: int = 8) -> dict[str, torch.Tensor]:
    """Lay out B tokenised pairs as 2B padding-free rows, chosen first.

    Args:
        items: B dicts with ``prompt``, ``chosen``, ``rejected`` (token id lists) and ``index`` (int).
        pad_id: padding token id (labels of padding are ``-100``).
        pad_to_multiple_of: round the row length up to a multiple of this.

    Returns:
        ``input_ids``, ``labels``, ``position_ids``: ``(2B, T)``; ``index``: ``(B,)``; ``num_tokens``,
        ``num_loss_tokens``: ``()``. Labels are ``-100`` on the prompt, so only completion tokens count.
    """
    rows = []
    for key in ("chosen", "rejected"):
        for it in items:
            prompt, completion = it["prompt"], it[key]
            rows.append([(prompt + completion, [IGNORE_INDEX] * len(prompt) + completion)])
    batch = collate_rows(rows, pad_id=pad_id, pad_to_multiple_of=pad_to_multiple_of)
    batch["index"] = torch.tensor([int(it["index"]) for it in items], dtype=torch.long)
    return batch


def collate_pairs_shared(
    items: list[dict[str, Any]], pad_id: int, pad_to_multiple_of: int = 8
) -> dict[str, torch.Tensor]:
    """Lay out B tokenised pairs as B prefix-shared rows ``[prompt, chosen, rejected]``.

    :func:`zephyr.data.prefix_share.collate_pairs_prefix_shared`, with ``num_tokens`` set to the pair token count
    (``2·prompt + chosen + rejected``, what the concatenated layout's ``num_tokens`` counts) so logged
    throughput does not change meaning with the layout; the tokens actually in the rows are ``num_row_tokens``.

    Returns:
        ``input_ids``, ``position_ids``, ``chosen_targets``, ``rejected_targets``: ``(B, T)``;
        ``attention_mask``: ``(B, 1, T, T)`` bool; ``index``: ``(B,)``; ``num_tokens``, ``num_pair_tokens``,
        ``num_row_tokens``: ``()``.
    """
    batch = collate_pairs_prefix_shared(items, pad_id=pad_id, pad_to_multiple_of=pad_to_multiple_of)
    batch["num_row_tokens"] = batch["num_tokens"]
    batch["num_tokens"] = batch["num_pair_tokens"]
    return batch


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


__all__ = [
    "LAYOUTS",
    "PreferenceDataModule",
    "collate_pairs",
    "collate_pairs_shared",
    "examples_fingerprint",
]
