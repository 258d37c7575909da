"""Callbacks zephyr adds to every run: metric files for sweeps, atomic checkpoint writes, checkpoint hygiene.

``MetricsFileCallback`` writes ``metrics.csv`` (one row per logging step, appended as it is logged, so a killed
run keeps its curve and a resumed one continues it) and, at the end, ``metrics.json`` (final values) into the
run directory whatever logger is configured, so a sweep summary never depends on W&B.
``AtomicCheckpointIO`` writes each checkpoint to a temporary file in the same directory, fsyncs it and renames
it over the old one, so a kill -9 during a save leaves the previous checkpoint intact.
``StepCheckpoint`` is Lightning's ``ModelCheckpoint`` that also removes what a crash leaves in its folder
(temporary files of an interrupted save, step checkpoints beyond ``save_top_k``).
``StepProgressBar`` shows the optimizer step (``step 40/100``) when a run is bounded by ``max_steps``.
"""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO
from pytorch_lightning.callbacks import ModelCheckpoint, RichProgressBar

from zephyr.fileio import atomic_open, atomic_write_text

STEP_CKPT = re.compile(r"^step(\d+)\.ckpt$")  # conf/callbacks/default.yaml names step checkpoints step{step:06d}


def _scalar(v: Any) -> float | None:
    if isinstance(v, torch.Tensor):
        if v.numel() != 1:
            return None
        v = v.item()
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        return float(v)
    return None


class MetricsFileCallback(pl.Callback):
    """Write logged scalars to ``<dir>/metrics.csv`` as they are logged, final values to ``<dir>/metrics.json``.

    One row per step: an evaluation at a step already written updates that row. When training starts at step
    ``S`` (a resume), the rows an earlier run wrote for steps up to ``S`` are kept and later ones (the killed
    run's steps after its checkpoint, redone now) are dropped, so every step appears once. A fresh run (step 0)
    starts a new file.

    Args:
        dirpath: the run directory.
    """

    def __init__(self, dirpath: str):
        self.dirpath = Path(dirpath)
        self.csv_path = self.dirpath / "metrics.csv"
        self.fields: list[str] = []
        self._row: dict[str, float] | None = None  # the last row in the file (merged while its step repeats)
        self._row_offset = 0  # where that row starts in the file
        self._last_step = -1
        self._started = False

    # ---- file ------------------------------------------------------------------------------------------------
    def start(self, step: int) -> None:
        """Begin the file at training step ``step``: keep an earlier run's rows up to it (none when 0)."""
        kept: list[dict[str, Any]] = []
        if step > 0 and self.csv_path.exists():
            kept = [r for r in self._read() if float(r["step"]) <= step]
        self._rewrite(kept)
        self._started = True

    def _read(self) -> list[dict[str, Any]]:
        with self.csv_path.open(newline="") as f:
            return [{k: v for k, v in r.items() if v not in ("", None)} for r in csv.DictReader(f)]

    def _rewrite(self, rows: list[dict[str, Any]]) -> None:
        self.dirpath.mkdir(parents=True, exist_ok=True)
        self.fields = ["step"] + sorted({k for r in rows for k in r} - {"step"})
        with atomic_open(self.csv_path, "w", encoding="utf-8") as f:
            w = csv.DictWriter(f, fieldnames=self.fields, lineterminator="\n")
            w.writeheader()
            for r in rows[:-1]:
                w.writerow(r)
            self._row_offset = f.tell()
            if rows:
                w.writerow(rows[-1])
        self._row = dict(rows[-1]) if rows else None
        if not rows:
            self._row_offset = self.csv_path.stat().st_size

    def _emit(self, row: dict[str, float]) -> None:
        if not self._started:
            self.start(int(row["step"]))
        merge = self._row is not None and float(self._row["step"]) == row["step"]
        if merge:
            row = {**self._row, **row}
        if not set(row) <= set(self.fields):  # a new metric: rewrite with the wider header (rare)
            rows = self._read()
            self._rewrite((rows[:-1] if merge else rows) + [row])
            return
        with self.csv_path.open("r+" if merge else "a", newline="", encoding="utf-8") as f:
            if merge:
                f.seek(self._row_offset)
                f.truncate()
            else:
                f.seek(0, 2)
                self._row_offset = f.tell()
            csv.DictWriter(f, fieldnames=self.fields, lineterminator="\n").writerow(row)
        self._row = row

    # ---- hooks -----------------------------------------------------------------------------------------------
    def _collect(self, trainer: pl.Trainer) -> None:
        if not trainer.is_global_zero:
            return
        values = {k: _scalar(v) for k, v in trainer.callback_metrics.items()}
        row = {k: v for k, v in values.items() if v is not None}
        if row:
            self._emit({"step": float(trainer.global_step), **row})

    def on_train_start(self, trainer, pl_module) -> None:
        self._last_step = trainer.global_step
        if trainer.is_global_zero:
            self.start(trainer.global_step)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step != self._last_step and trainer.global_step % max(trainer.log_every_n_steps, 1) == 0:
            self._last_step = trainer.global_step
            self._collect(trainer)

    def on_validation_end(self, trainer, pl_module) -> None:
        if not trainer.sanity_checking:
            self._collect(trainer)

    def write(self, final: dict[str, Any]) -> None:
        """Write ``metrics.json`` (``metrics.csv`` is already on disk, row by row)."""
        self.dirpath.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.dirpath / "metrics.json", json.dumps(final, indent=2, sort_keys=True) + "\n")


class AtomicCheckpointIO(TorchCheckpointIO):
    """``torch.save`` to a temp file, fsync, then ``os.replace`` onto the checkpoint path."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options=None) -> None:
        with atomic_open(path, "wb") as f:
            torch.save(checkpoint, f)


# ---- checkpoints on disk ---------------------------------------------------------------------------------------
def step_checkpoints(dirpath: str | Path) -> dict[int, Path]:
    """``{global step: path}`` of the ``stepNNNNNN.ckpt`` checkpoints (files or shard folders) in ``dirpath``."""
    d = Path(dirpath)
    if not d.is_dir():
        return {}
    return {int(m.group(1)): p for p in d.iterdir() if (m := STEP_CKPT.match(p.name))}


def checkpoint_step(path: str | Path) -> int | None:
    """The ``global_step`` stored in a single-file checkpoint (memory-mapped, weights not read); None if unknown."""
    p = Path(path)
    if m := STEP_CKPT.match(p.name):
        return int(m.group(1))
    if not p.is_file():
        return None  # a folder of shards (FSDP / DeepSpeed)
    try:
        ckpt = torch.load(p, map_location="cpu", mmap=True, weights_only=False)
    except Exception:  # noqa: BLE001 - a torn or foreign file: no step to compare
        return None
    step = ckpt.get("global_step") if isinstance(ckpt, dict) else None
    return int(step) if step is not None else None


def remove_stale_temp_files(dirpath: str | Path) -> list[Path]:
    """Delete ``.NAME.*.tmp`` files an interrupted atomic save left in ``dirpath``; return them."""
    d = Path(dirpath)
    stale = sorted(d.glob(".*.tmp")) if d.is_dir() else []
    for p in stale:
        p.unlink(missing_ok=True)
    return stale


class StepCheckpoint(ModelCheckpoint):
    """``ModelCheckpoint`` that keeps its folder tidy across crashes and resumes.

    At setup (rank 0) it deletes temp files of a save that was killed; after each save, when no metric is
    monitored, it keeps only the newest ``save_top_k`` step checkpoints (Lightning never deletes the file a run
    resumed from, nor files an earlier, killed process wrote after it).
    """

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        if trainer.is_global_zero and self.dirpath:
            remove_stale_temp_files(self.dirpath)

    def _save_checkpoint(self, trainer: pl.Trainer, filepath: str) -> None:
        super()._save_checkpoint(trainer, filepath)
        if self.monitor is None and self.save_top_k > 0 and trainer.is_global_zero and self.dirpath:
            steps = step_checkpoints(self.dirpath)
            keep = set(sorted(steps)[-self.save_top_k :])
            for step, path in steps.items():
                if step not in keep and str(path) != str(filepath):
                    trainer.strategy.remove_checkpoint(path)


class StepProgressBar(RichProgressBar):
    """Rich progress bar whose description counts optimizer steps when the run is bounded by ``max_steps``.

    Lightning's reads ``Epoch 0/-2`` with ``max_epochs=-1``; this one reads ``Epoch 0 · step 40/100``.
    """

    def _get_train_description(self, current_epoch: int) -> str:
        t = self.trainer
        if t.max_steps is None or t.max_steps < 0:
            return super()._get_train_description(current_epoch)
        text = f"Epoch {current_epoch} · step {t.global_step}/{t.max_steps}"
        if t.max_epochs is not None and t.max_epochs > 0:
            text = f"Epoch {current_epoch}/{t.max_epochs - 1} · step {t.global_step}/{t.max_steps}"
        return f"{text:{len(self.validation_description)}}"

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        if self.progress is not None and self.train_progress_bar_id is not None:
            self.progress.update(
                self.train_progress_bar_id, description=self._get_train_description(trainer.current_epoch)
            )
