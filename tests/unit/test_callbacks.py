"""metrics.csv row by row (resume keeps history), checkpoint choice and clean-up, rank exit status, bar text."""

from __future__ import annotations

import csv
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch
from omegaconf import OmegaConf

from zephyr.callbacks import MetricsFileCallback, StepProgressBar, checkpoint_step, remove_stale_temp_files
from zephyr.run import completed_run, resolve_ckpt_path, wait_for_other_ranks


def rows(path):
    with path.open() as f:
        return [{k: v for k, v in r.items() if v} for r in csv.DictReader(f)]


def test_metrics_file_written_as_logged_and_resume_drops_later_rows(tmp_path):
    cb = MetricsFileCallback(str(tmp_path))
    cb.start(0)
    cb._emit({"step": 1.0, "train/loss": 3.0})
    assert rows(tmp_path / "metrics.csv") == [{"step": "1.0", "train/loss": "3.0"}]  # on disk at once
    cb._emit({"step": 2.0, "train/loss": 2.5})
    cb._emit({"step": 2.0, "eval/loss": 2.7})  # an evaluation at a step already written updates its row
    cb._emit({"step": 3.0, "train/loss": 2.0})
    assert rows(tmp_path / "metrics.csv") == [
        {"step": "1.0", "train/loss": "3.0"},
        {"step": "2.0", "eval/loss": "2.7", "train/loss": "2.5"},
        {"step": "3.0", "train/loss": "2.0"},
    ]
    resumed = MetricsFileCallback(str(tmp_path))
    resumed.start(2)  # resumed from the step-2 checkpoint: the killed run's step 3 is redone
    resumed._emit({"step": 3.0, "train/loss": 2.1})
    assert [(r["step"], r.get("train/loss")) for r in rows(tmp_path / "metrics.csv")] == [
        ("1.0", "3.0"),
        ("2.0", "2.5"),
        ("3.0", "2.1"),
    ]
    MetricsFileCallback(str(tmp_path)).start(0)  # a fresh run in the same folder starts a new file
    assert rows(tmp_path / "metrics.csv") == []


def save_ckpt(path, step):
    torch.save({"global_step": step, "state_dict": {}}, path)


def test_ckpt_path_last_takes_the_newest_checkpoint_and_finished_run_is_left_alone(tmp_path):
    d = tmp_path / "checkpoints"
    d.mkdir()
    save_ckpt(d / "last.ckpt", 10)
    save_ckpt(d / "step000020.ckpt", 20)
    cfg = OmegaConf.create({"ckpt_path": "last", "trainer": {"max_steps": 20}})
    assert resolve_ckpt_path(cfg, tmp_path) == str(d / "step000020.ckpt")
    assert checkpoint_step(d / "last.ckpt") == 10
    save_ckpt(d / "last.ckpt", 20)
    assert resolve_ckpt_path(cfg, tmp_path) == str(d / "last.ckpt")  # a tie: last.ckpt
    (tmp_path / "metrics.json").write_text('{"eval/loss": 1.5, "global_step": 20.0, "runtime_s": 3.0}')
    assert completed_run(cfg, str(d / "last.ckpt"), tmp_path) is None  # killed before its export: fit, export
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text("{}")
    assert completed_run(cfg, str(d / "last.ckpt"), tmp_path) == {
        "eval/loss": 1.5,
        "global_step": 20.0,
        "runtime_s": 3.0,
    }
    cfg.trainer.max_steps = 30
    assert completed_run(cfg, str(d / "last.ckpt"), tmp_path) is None
    (d / ".last.ckpt.abc.tmp").write_bytes(b"x")
    assert [p.name for p in remove_stale_temp_files(d)] == [".last.ckpt.abc.tmp"]
    assert sorted(p.name for p in d.iterdir()) == ["last.ckpt", "step000020.ckpt"]


def test_a_failed_rank_makes_the_launching_process_fail():
    ok = subprocess.Popen([sys.executable, "-c", "pass"])
    bad = subprocess.Popen([sys.executable, "-c", "raise SystemExit(3)"])
    trainer = SimpleNamespace(strategy=SimpleNamespace(launcher=SimpleNamespace(procs=[ok, bad])))
    with pytest.raises(RuntimeError, match=r"1 of 3 processes failed \(rank 2: exit status 3\)"):
        wait_for_other_ranks(trainer)
    wait_for_other_ranks(SimpleNamespace(strategy=SimpleNamespace()))  # one process: nothing to wait for


def test_progress_bar_counts_steps_when_max_epochs_is_unbounded():
    bar = StepProgressBar()
    bar._trainer = SimpleNamespace(max_epochs=-1, max_steps=100, global_step=40)
    assert bar._get_train_description(0).strip() == "Epoch 0 · step 40/100"
    bar._trainer = SimpleNamespace(max_epochs=3, max_steps=-1, global_step=40)
    assert bar._get_train_description(1).strip() == "Epoch 1/2"
