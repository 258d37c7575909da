"""The LightningDataModule base: rows -> examples -> resumable batches (``SFTDataModule`` in :mod:`zephyr.data.sft`,
``PreferenceDataModule`` in :mod:`zephyr.data.preference`, ``KTODataModule`` in :mod:`zephyr.data.kto`).

One source is chosen by config: ``path`` (local jsonl/json/parquet), ``name`` (hub dataset, ``split`` and
``eval_split``), or the built-in toy-world dialogues. Eval rows come from ``eval_split`` (hub), ``eval_path`` (a
local file, e.g. the ``test_sft.jsonl`` / ``test_prefs.jsonl`` that ``zephyr data`` writes), or else are held out
with a fixed seed: ``eval_size`` rows, or 10 % of the rows (at least 1) when ``eval_size`` is more than half of
them, so the defaults run on any file with 2 valid rows (one log line says which). Rows are validated before the
hold-out, so every bad or over-long row is either an error naming the file and row as numbered in the file (the
1-based jsonl line) or, under the skip policies, a counted skip printed in one summary line.
"""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Callable, Iterable
from typing import Any

import pytorch_lightning as pl

from zephyr.data.chat_template import ConversationError
from zephyr.data.collate import ResumableBatchSampler, ResumableDataLoader
from zephyr.data.io import DataError, RowReport, load_numbered_rows

log = logging.getLogger(__name__)


def holdout_size(eval_size: int, n_rows: int) -> int:
    """Rows to hold out for eval: ``eval_size``, or 10 % of ``n_rows`` (rounded up, at least 1 training row left)
    when ``eval_size`` is more than half of them; 0 for a single row.
    """
    if n_rows < 2 or eval_size <= 0:
        return 0
    if eval_size <= n_rows // 2:
        return eval_size
    return min(eval_size, max(1, math.ceil(n_rows / 10)), n_rows - 1)


def check_source(path: str | None, name: str | None) -> None:
    """Refuse a config that names both a local file and a hub dataset."""
    if path and name:
        raise DataError(f"data.path={path} and data.name={name} are both set; keep one")


class ChatDataModule(pl.LightningDataModule):
    """Shared loading, eval split and resumable loaders; subclasses turn rows into examples.

    Args:
        tokenizer: the chat tokenizer (its ``pad_token_id`` pads).
        path: local data file.
        name: hub dataset name.
        split: training split of a hub dataset.
        eval_split: eval split of a hub dataset (``None``: hold out ``eval_size`` training rows).
        eval_path: local eval file (same schema), instead of a hold-out.
        eval_size: rows held out for eval when there is no eval split or file (0 disables eval); more than half
            of the rows holds out 10 % of them instead (see :func:`holdout_size`).
        revision: hub dataset revision.
        limit: use only the first ``limit`` rows of each split (quick runs).
        batch_size: micro-batch size per device.
        eval_batch_size: eval micro-batch size (default: ``batch_size``).
        max_length: longest sequence in tokens.
        on_bad_row: ``error`` | ``skip``.
        num_workers: dataloader worker processes.
        seed: shuffling and hold-out seed.
        toy: the built-in rows when neither ``path`` nor ``name`` is set: a no-argument callable, which the
            ``conf/data/toy_*`` options build by ``_target_`` (``_partial_``) from ``zephyr.toy``.
    """

    def __init__(
        self,
        tokenizer,
        *,
        path: str | None = None,
        name: str | None = None,
        split: str = "train",
        eval_split: str | None = None,
        eval_path: str | None = None,
        eval_size: int = 0,
        revision: str | None = None,
        limit: int | None = None,
        batch_size: int = 8,
        eval_batch_size: int | None = None,
        max_length: int = 2048,
        on_bad_row: str = "error",
        num_workers: int = 0,
        seed: int = 0,
        toy: Callable[[], Iterable[dict[str, Any]]] | None = None,
    ):
        super().__init__()
        check_source(path, name)
        if eval_path and name and eval_split:
            raise DataError(f"data.eval_path={eval_path} and data.eval_split={eval_split} are both set; keep one")
        if on_bad_row not in ("error", "skip"):
            raise DataError(f"data.on_bad_row={on_bad_row!r} must be one of error, skip")
        if isinstance(eval_size, bool) or not isinstance(eval_size, int) or eval_size < 0:
            raise DataError(f"data.eval_size={eval_size!r} must be an integer >= 0")
        self.tokenizer = tokenizer
        self.path, self.name, self.split, self.eval_split = path, name, split, eval_split
        self.eval_path = eval_path
        self.eval_size, self.revision, self.limit = eval_size, revision, limit
        self.batch_size, self.eval_batch_size = batch_size, eval_batch_size or batch_size
        self.max_length, self.on_bad_row, self.num_workers, self.seed = max_length, on_bad_row, num_workers, seed
        self.toy = toy
        self.train_items: list[Any] | None = None
        self.eval_items: list[Any] = []
        self.reports: list[RowReport] = []
        self.load_reports: list[RowReport] = []

    # subclasses: rows -> items (one item = one dataset element the collator understands)
    def validate_row(self, row: dict[str, Any]) -> None:
        """Raise :class:`ConversationError` for a row of the wrong shape (checked before the eval hold-out)."""
        raise TypeError(f"{type(self).__name__} must override this method")

    def build_items(
        self, rows: list[dict[str, Any]], source: str, numbers: list[int] | None = None
    ) -> tuple[list[Any], RowReport]:
        raise TypeError(f"{type(self).__name__} must override this method")

    def collate(self, items: list[Any]) -> dict[str, Any]:
        raise TypeError(f"{type(self).__name__} must override this method")

    def _load(self, split: str, path: str | None = None) -> tuple[str, list[tuple[int, dict[str, Any]]]]:
        """Load and validate one split's rows, numbered as in their file (before any hold-out)."""
        source, numbered = load_numbered_rows(
            path=path,
            name=None if path else self.name,
            split=split,
            revision=self.revision,
            limit=self.limit,
            builtin=self.toy if not (path or self.name) else None,
        )
        report = RowReport(source=source, read=len(numbered))
        valid = []
        for n, row in numbered:
            try:
                self.validate_row(row)
            except ConversationError as e:
                if self.on_bad_row == "error":
                    raise DataError(
                        f"{source}: row {n}: {e} (set data.on_bad_row=skip to skip and count bad rows)"
                    ) from None
                report.skip(str(e), f"{source}: row {n}")
                continue
            valid.append((n, row))
        report.kept = len(valid)
        self.load_reports.append(report)
        if report.n_skipped:
            log.warning("data: %s; first: %s", report.summary(), report.first_errors[0])
        if not valid:
            raise DataError(f"{source}: no valid rows ({report.summary()})")
        return source, valid

    def setup(self, stage: str | None = None) -> None:
        if self.train_items is not None:
            return
        source, rows = self._load(self.split, self.path)
        eval_rows: list[tuple[int, dict[str, Any]]] = []
        eval_source = source
        if self.eval_path:
            eval_source, eval_rows = self._load(self.eval_split or self.split, self.eval_path)
            log.info("data: eval rows from data.eval_path=%s (%d rows)", eval_source, len(eval_rows))
        elif self.name and self.eval_split:
            eval_source, eval_rows = self._load(self.eval_split)
        elif self.eval_size:
            n_eval = holdout_size(self.eval_size, len(rows))
            if n_eval != self.eval_size:
                log.info(
                    "data: data.eval_size=%d is more than half of the %d valid rows of %s: holding out %d "
                    "(10 %%) for eval instead (set data.eval_size, or data.eval_path=FILE)",
                    self.eval_size,
                    len(rows),
                    source,
                    n_eval,
                )
            order = list(range(len(rows)))
            random.Random(self.seed).shuffle(order)
            held = set(order[:n_eval])
            eval_rows = [r for i, r in enumerate(rows) if i in held]
            rows = [r for i, r in enumerate(rows) if i not in held]
            eval_source = f"{source} (held-out eval rows)"
        self.train_items, report = self.build_items([r for _, r in rows], source, [n for n, _ in rows])
        self.reports = [report]
        if eval_rows:
            self.eval_items, eval_report = self.build_items(
                [r for _, r in eval_rows], eval_source, [n for n, _ in eval_rows]
            )
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
        trainer = self.trainer  # attached inside fit, once the process group (and so the rank) exists
        return self.train_loader(*((trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)))

    def train_loader(self, rank: int = 0, world_size: int = 1) -> ResumableDataLoader:
        """The resumable training batches of rank ``rank`` of ``world_size`` (see ``ResumableBatchSampler``)."""
        assert self.train_items is not None, "call setup() first"
        sampler = ResumableBatchSampler(
            len(self.train_items), self.batch_size, shuffle=True, seed=self.seed, rank=rank, world_size=world_size
        )
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


__all__ = ["ChatDataModule", "check_source", "holdout_size"]
