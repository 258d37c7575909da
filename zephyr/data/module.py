"""LightningDataModules: rows -> examples -> resumable batches, for SFT here and preference pairs in DPO.

One source is chosen by config: ``path`` (local jsonl/json/parquet), ``name`` (hub dataset, ``split`` and
``eval_split``), or the built-in toy-world dialogues. Without an eval split, ``eval_size`` rows are held out
with a fixed seed. Every bad or over-long row is either an error naming the file and row or, under the skip
policies, a counted skip printed in one summary line.
"""

from __future__ import annotations

import logging
import random
from functools import partial
from typing import Any

import pytorch_lightning as pl

from zephyr.data.collate import ResumableBatchSampler, ResumableDataLoader, collate_rows
from zephyr.data.io import RowReport, load_rows
from zephyr.data.sft import SFTExample, build_sft_examples, check_source, pack_best_fit

log = logging.getLogger(__name__)


def toy_sft_rows(n: int, seed: int) -> list[dict[str, Any]]:
    """The embedded default dSFT set: ``n`` toy-world dialogues written by the imperfect teacher."""
    from zephyr.toy.teacher import sft_dialogues

    return sft_dialogues(n, seed)


class ChatDataModule(pl.LightningDataModule):
    """Shared loading, eval split and resumable loaders; subclasses turn rows into examples.

    Args:
        tokenizer: the chat tokenizer (its ``pad_token_id`` pads).
        path: local data file.
        name: hub dataset name.
        split: training split of a hub dataset.
        eval_split: eval split of a hub dataset (``None``: hold out ``eval_size`` training rows).
        eval_size: rows held out for eval when there is no eval split (0 disables eval).
        revision: hub dataset revision.
        limit: use only the first ``limit`` rows of each split (quick runs).
        batch_size: micro-batch size per device.
        eval_batch_size: eval micro-batch size (default: ``batch_size``).
        max_length: longest sequence in tokens.
        on_bad_row: ``error`` | ``skip``.
        num_workers: dataloader worker processes.
        seed: shuffling and hold-out seed.
        toy: ``{n, seed}`` for the built-in toy set.
    """

    def __init__(
        self,
        tokenizer,
        *,
        path: str | None = None,
        name: str | None = None,
        split: str = "train",
        eval_split: str | None = None,
        eval_size: int = 0,
        revision: str | None = None,
        limit: int | None = None,
        batch_size: int = 8,
        eval_batch_size: int | None = None,
        max_length: int = 2048,
        on_bad_row: str = "error",
        num_workers: int = 0,
        seed: int = 0,
        toy: dict[str, int] | None = None,
    ):
        super().__init__()
        check_source(path, name)
        self.tokenizer = tokenizer
        self.path, self.name, self.split, self.eval_split = path, name, split, eval_split
        self.eval_size, self.revision, self.limit = eval_size, revision, limit
        self.batch_size, self.eval_batch_size = batch_size, eval_batch_size or batch_size
        self.max_length, self.on_bad_row, self.num_workers, self.seed = max_length, on_bad_row, num_workers, seed
        self.toy = dict(toy or {"n": 2000, "seed": 0})
        self.train_items: list[Any] | None = None
        self.eval_items: list[Any] = []
        self.reports: list[RowReport] = []

    # subclasses: rows -> items (one item = one dataset element the collator understands)
    def build_items(self, rows: list[dict[str, Any]], source: str) -> tuple[list[Any], RowReport]:
        raise TypeError(f"{type(self).__name__} must override this method")

    def collate(self, items: list[Any]) -> dict[str, Any]:
        raise TypeError(f"{type(self).__name__} must override this method")

    def builtin_rows(self) -> list[dict[str, Any]]:
        raise TypeError(f"{type(self).__name__} must override this method")

    def _load(self, split: str) -> tuple[str, list[dict[str, Any]]]:
        return load_rows(
            path=self.path if split == self.split else None,
            name=self.name,
            split=split,
            revision=self.revision,
            limit=self.limit,
            builtin=self.builtin_rows if not (self.path or self.name) else None,
        )

    def setup(self, stage: str | None = None) -> None:
        if self.train_items is not None:
            return
        source, rows = self._load(self.split)
        eval_rows: list[dict[str, Any]] = []
        eval_source = source
        if self.name and self.eval_split:
            eval_source, eval_rows = self._load(self.eval_split)
        elif self.eval_size:
            if self.eval_size >= len(rows):
                raise ValueError(f"data.eval_size={self.eval_size} leaves no training rows ({source} has {len(rows)})")
            order = list(range(len(rows)))
            random.Random(self.seed).shuffle(order)
            held = set(order[: self.eval_size])
            eval_rows = [r for i, r in enumerate(rows) if i in held]
            rows = [r for i, r in enumerate(rows) if i not in held]
            eval_source = f"{source} (held-out eval rows)"
        self.train_items, report = self.build_items(rows, source)
        self.reports = [report]
        if eval_rows:
            self.eval_items, eval_report = self.build_items(eval_rows, eval_source)
            self.reports.append(eval_report)
        for r in self.reports:
            log.info("data: %s", r.summary())
            if r.n_skipped:
                log.warning("data: %s; first: %s", r.summary(), r.first_errors[0])

    def _progress(self) -> int:
        trainer = self.trainer
        if trainer is None:
            return 0
        return int(trainer.fit_loop.epoch_loop.batch_progress.current.processed)

    def train_dataloader(self) -> ResumableDataLoader:
        assert self.train_items is not None, "call setup() first"
        sampler = ResumableBatchSampler(len(self.train_items), self.batch_size, shuffle=True, seed=self.seed)
        return ResumableDataLoader(
            self.train_items,
            sampler,
            progress=self._progress,
            collate_fn=self.collate,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )

    def val_dataloader(self):
        if not self.eval_items:
            return []
        sampler = ResumableBatchSampler(len(self.eval_items), self.eval_batch_size, shuffle=False, seed=self.seed)
        return ResumableDataLoader(self.eval_items, sampler, collate_fn=self.collate, num_workers=self.num_workers)


class SFTDataModule(ChatDataModule):
    """dSFT batches (see :mod:`zephyr.data.sft`).

    Args:
        loss_on: ``assistant`` (default) or ``all``.
        on_overlong: ``error`` | ``skip`` | ``truncate``.
        packing: pack several conversations per row (best fit, no cross-attention).
        insert_empty_system: prepend an empty system turn where there is none (the recipe's choice).
        **kwargs: see :class:`ChatDataModule`.
    """

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
        super().__init__(tokenizer, **kwargs)
        self.loss_on, self.on_overlong, self.packing = loss_on, on_overlong, packing
        self.insert_empty_system = insert_empty_system

    def builtin_rows(self) -> list[dict[str, Any]]:
        return toy_sft_rows(int(self.toy["n"]), int(self.toy.get("seed", 0)))

    def build_items(self, rows, source):
        examples, report = build_sft_examples(
            self.tokenizer,
            rows,
            source=source,
            max_length=self.max_length,
            loss_on=self.loss_on,
            on_bad_row=self.on_bad_row,
            on_overlong=self.on_overlong,
            insert_empty_system=self.insert_empty_system,
        )
        if not self.packing:
            return [[(ex.input_ids, ex.labels)] for ex in examples], report
        bins = pack_best_fit([len(ex) for ex in examples], self.max_length)
        return [[(examples[i].input_ids, examples[i].labels) for i in b] for b in bins], report

    @property
    def collate(self):
        return partial(collate_rows, pad_id=self.tokenizer.pad_token_id)


__all__ = ["ChatDataModule", "SFTDataModule", "SFTExample"]
