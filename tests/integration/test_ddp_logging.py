"""A 2-process DDP run (gloo) with the default W&B logger (offline) exits 0 without a traceback, and its
train/loss is the global batch's token-mean: equal to the one-process run's at the same global batch."""

from __future__ import annotations

import csv
import sys

import pytest

from tests.integration.helpers_scale import REPO, TINY, run

pytestmark = pytest.mark.slow


def train_losses(out):
    with (out / "metrics.csv").open() as f:
        return {int(float(r["step"])): float(r["train/loss"]) for r in csv.DictReader(f) if r.get("train/loss")}


def test_ddp_two_processes_log_the_global_train_loss(tmp_path):
    base = [sys.executable, str(REPO / "train.py"), *TINY, "export=false"]
    single = run([*base, f"paths.output_dir={tmp_path / 'one'}"])  # 4-row micro-batches x 2 accumulation
    assert single.returncode == 0, single.stderr[-3000:]
    tiny_wandb = [o if o != "logger=none" else "logger=wandb" for o in base]
    ddp = run([*tiny_wandb, f"paths.output_dir={tmp_path / 'ddp'}", "strategy=ddp", "hardware.devices=2"])
    out = ddp.stdout + ddp.stderr
    assert ddp.returncode == 0, out[-3000:]
    assert "Traceback" not in out and "Error executing job" not in out
    a, b = train_losses(tmp_path / "one"), train_losses(tmp_path / "ddp")
    assert sorted(a) == sorted(b) == [1, 2, 3, 4]
    for step in a:  # the tolerance of test_scale_parallel's loss comparison
        assert b[step] == pytest.approx(a[step], rel=1e-4), step
