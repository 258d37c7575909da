"""kill -9 a DPO run mid-way, then ckpt_path=last: every later step's loss equals the uninterrupted run's."""

from __future__ import annotations

import csv

import pytest

from tests.integration.helpers_train import kill_when, run_train
from tests.unit.dpo.helpers_dpo import export_tiny, pref_rows, write_jsonl

STEPS = 16


def losses(run_dir):
    with open(run_dir / "metrics.csv") as f:
        return {int(float(r["step"])): float(r["train/loss"]) for r in csv.DictReader(f) if r.get("train/loss")}


@pytest.mark.slow
def test_dpo_kill_and_resume_reproduces_loss_curve(tmp_path):
    ckpt = export_tiny(tmp_path / "dsft")
    data = write_jsonl(tmp_path / "prefs.jsonl", pref_rows(14))  # 14 / 4 -> 4 batches: crosses epochs
    common = [
        "+experiment=dpo_toy",
        f"paths.root_dir={tmp_path}",
        f"model.path={ckpt}",
        "data=local_prefs",
        f"data.path={data}",
        "data.eval_size=0",
        "data.batch_size=4",
        "data.max_length=128",
        "data.max_prompt_length=64",
        "trainer.max_epochs=-1",
        f"trainer.max_steps={STEPS}",
        "trainer.log_every_n_steps=1",
        "callbacks.model_checkpoint.every_n_train_steps=3",
        "export=false",
        "objective.optimizer.lr=1e-3",
    ]
    ref_dir, kill_dir = tmp_path / "ref", tmp_path / "killed"
    run_train(*common, f"paths.output_dir={ref_dir}")
    reference = losses(ref_dir)
    assert sorted(reference) == list(range(1, STEPS + 1))

    ckpt_dir = kill_dir / "checkpoints"
    kill_when(*common, f"paths.output_dir={kill_dir}", ready=lambda: list(ckpt_dir.glob("step00000[6-9].ckpt")))
    saved = sorted(int(p.stem[4:]) for p in ckpt_dir.glob("step*.ckpt"))
    assert saved and saved[-1] < STEPS, "the run finished before it could be killed"

    newest = kill_dir / "checkpoints" / f"step{saved[-1]:06d}.ckpt"
    proc = run_train(*common, f"paths.output_dir={kill_dir}", "ckpt_path=last")
    # resumed from the newest complete checkpoint, not from scratch
    assert f"resuming from {newest}" in proc.stdout + proc.stderr
    resumed = losses(kill_dir)  # metrics.csv keeps the killed run's steps before the resume point
    assert sorted(resumed) == list(range(1, STEPS + 1))
    for step in range(1, STEPS + 1):
        assert resumed[step] == pytest.approx(reference[step], abs=1e-5), f"step {step}"
