"""dDPO end to end through ``train.py``: the missing-dSFT hint, overfitting a tiny set, a 2-point sweep table."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import time

import pytest

from tests.integration.helpers_train import REPO, run_train, train_cmd
from tests.unit.dpo.helpers_dpo import export_tiny, pref_rows, write_jsonl


def common(tmp_path, ckpt, data) -> list[str]:
    return [
        "+experiment=dpo_toy",
        f"paths.root_dir={tmp_path}",
        f"model.path={ckpt}",
        "data=local_prefs",
        f"data.path={data}",
        "data.max_length=128",
        "data.max_prompt_length=64",
        "export=false",
    ]


def test_missing_dsft_checkpoint_says_which_command_makes_it(tmp_path):
    proc = run_train("+experiment=dpo_beta", f"paths.root_dir={tmp_path}", check=False, timeout=120)
    assert proc.returncode == 2
    line = proc.stderr.strip().splitlines()[-1]
    assert line.startswith(f"train.py: error: model.path={tmp_path}/runs/dsft/model has no checkpoint")
    assert "`python train.py trainer.max_steps=500 paths.output_dir=runs/dsft`" in line


@pytest.mark.slow
def test_dpo_overfits_a_tiny_set(tmp_path):
    ckpt = export_tiny(tmp_path / "dsft")
    data = write_jsonl(tmp_path / "prefs.jsonl", pref_rows(8))
    out = tmp_path / "run"
    run_train(
        *common(tmp_path, ckpt, data),
        f"paths.output_dir={out}",
        "data.eval_size=0",
        "data.batch_size=4",
        "trainer.max_epochs=-1",
        "trainer.max_steps=24",
        "trainer.log_every_n_steps=1",
        "objective.optimizer.lr=2e-3",
        "objective.scheduler.name=constant",
        "objective.beta=0.5",
    )
    with (out / "metrics.csv").open() as f:
        rows = [r for r in csv.DictReader(f) if r.get("train/loss")]
    assert float(rows[0]["train/loss"]) == pytest.approx(0.6931, abs=1e-3)  # step 1: policy = reference
    last = rows[-4:]
    assert all(float(r["train/rewards/accuracies"]) == 1.0 for r in last)
    assert all(float(r["train/loss"]) < 0.2 for r in last)
    assert all(float(r["train/rewards/margins"]) > 2.0 for r in last)
    final = json.loads((out / "metrics.json").read_text())
    assert final["global_step"] == 24 and final["train/rewards/accuracies"] == 1.0


@pytest.mark.slow
def test_two_point_sweep_writes_summary_and_shares_the_reference_cache(tmp_path):
    ckpt = export_tiny(tmp_path / "dsft")
    data = write_jsonl(tmp_path / "prefs.jsonl", pref_rows(16))
    sweep_dir = tmp_path / "sweep"
    python, script, *tiny = train_cmd()
    cmd = [
        python,
        script,
        "-m",
        *tiny,
        *common(tmp_path, ckpt, data),
        "objective.beta=0.1,0.5",
        f"hydra.sweep.dir={sweep_dir}",
        "data.eval_size=4",
        "data.batch_size=4",
        "trainer.max_epochs=1",
        "trainer.val_check_interval=2",
    ]
    started = time.perf_counter()
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    wall = time.perf_counter() - started
    with (sweep_dir / "summary.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [r["job"] for r in rows] == ["0", "1"]
    assert [r["objective.beta"] for r in rows] == ["0.1", "0.5"]
    assert all(r["status"] == "ok" and float(r["runtime_s"]) > 0 for r in rows)
    assert all(0.0 <= float(r["eval/rewards/accuracies"]) <= 1.0 and float(r["global_step"]) == 3 for r in rows)
    assert "objective.beta=0.5" in rows[1]["overrides"]
    assert float(rows[0]["eval/loss"]) != float(rows[1]["eval/loss"])
    # both jobs used one cache entry per split, written next to the data file
    cached = sorted((tmp_path / ".zephyr_cache" / "ref_logps").glob("ref_logps-*.safetensors"))
    assert len(cached) == 2
    assert "cache hit" in (sweep_dir / "1" / "train.log").read_text()
    assert wall < 300
