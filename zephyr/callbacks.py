"""Callbacks zephyr adds to every run: metric files for sweeps, atomic checkpoint writes.

``MetricsFileCallback`` writes ``metrics.csv`` (one row per logging step) and, at the end, ``metrics.json``
(final values) into the run directory whatever logger is configured, so a sweep summary never depends on W&B.
``AtomicCheckpointIO`` writes each checkpoint to a temporary file in the same directory, fsyncs it and renames
it over the old one, so a kill -9 during a save leaves the previous checkpoint intact.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO

from zephyr.fileio import atomic_open


def _scalar(v: Any) -> float | None:
    if isinstance(v, torch.Tensor):
        if v.numel() != 1:
            return None
        v = v.item()
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        return float(v)
    return None


class MetricsFileCallback(pl.Callback):
    """Append logged scalars to ``<dir>/metrics.csv`` and write final values to ``<dir>/metrics.json``.

    Args:
        dirpath: the run directory.
    """

    def __init__(self, dirpath: str):
        self.dirpath = Path(dirpath)
        self.rows: list[dict[str, float]] = []
        self._last_step = -1

    def _collect(self, trainer: pl.Trainer) -> None:
        if not trainer.is_global_zero:
            return
        values = {k: _scalar(v) for k, v in trainer.callback_metrics.items()}
        row = {k: v for k, v in values.items() if v is not None}
        if row:
            row = {"step": float(trainer.global_step), **row}
            if self.rows and self.rows[-1]["step"] == row["step"]:
                self.rows[-1].update(row)
            else:
                self.rows.append(row)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step != self._last_step and trainer.global_step % max(trainer.log_every_n_steps, 1) == 0:
            self._last_step = trainer.global_step
            self._collect(trainer)

    def on_validation_end(self, trainer, pl_module) -> None:
        self._collect(trainer)

    def write(self, final: dict[str, Any]) -> None:
        """Write the CSV of everything collected (appending to an earlier, resumed run's rows) and the JSON."""
        self.dirpath.mkdir(parents=True, exist_ok=True)
        csv_path = self.dirpath / "metrics.csv"
        old: list[dict[str, Any]] = []
        if csv_path.exists():
            with csv_path.open() as f:
                first_new = self.rows[0]["step"] if self.rows else math.inf
                old = [r for r in csv.DictReader(f) if float(r["step"]) < first_new]
        keys = ["step"] + sorted({k for r in old + self.rows for k in r} - {"step"})
        with csv_path.open("w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=keys)
            w.writeheader()
            for r in old + self.rows:
                w.writerow(r)
        atomic_write_text(self.dirpath / "metrics.json", json.dumps(final, indent=2, sort_keys=True) + "\n")


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` through a temporary file and a rename (no torn files)."""
    with atomic_open(path, "w") as f:
        f.write(text)


class AtomicCheckpointIO(TorchCheckpointIO):
    """``torch.save`` to a temp file, fsync, then ``os.replace`` onto the checkpoint path."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options=None) -> None:
        with atomic_open(path, "wb") as f:
            torch.save(checkpoint, f)
