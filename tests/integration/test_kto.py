"""``objective=kto`` through ``train.py``: overfitting a few unpaired rows, a warm reference cache, a bad row."""

from __future__ import annotations

import csv
import json

import pytest

from tests.integration.helpers_train import run_train
from tests.unit.dpo.helpers_dpo import export_tiny, pref_rows, write_jsonl
from zephyr.feedback.kto import unpair


def common(tmp_path, ckpt, data) -> list[str]:
    return [
        "objective=kto",
        f"paths.root_dir={tmp_path}",
        f"model.path={ckpt}",
        "data=local_kto",
        f"data.path={data}",
        "data.max_length=128",
        "data.max_prompt_length=64",
        "data.eval_size=0",
        "data.batch_size=4",
        "export=false",
        "trainer.max_epochs=-1",
        "trainer.log_every_n_steps=1",
        "trainer.val_check_interval=null",
        "objective.scheduler.name=constant",
        "objective.scheduler.warmup_ratio=0.0",
    ]


@pytest.mark.slow
def test_kto_overfits_a_few_rows_and_a_second_run_reuses_the_reference_cache(tmp_path):
    ckpt = export_tiny(tmp_path / "dsft")
    data = write_jsonl(tmp_path / "kto.jsonl", unpair(pref_rows(4)))  # 4 desirable + 4 undesirable rows
    out = tmp_path / "run"
    run_train(
        *common(tmp_path, ckpt, data),
        f"paths.output_dir={out}",
        "trainer.max_steps=16",
        "objective.optimizer.lr=2e-3",
        "objective.beta=0.5",
    )
    with (out / "metrics.csv").open() as f:
        rows = [r for r in csv.DictReader(f) if r.get("train/loss")]
    assert float(rows[0]["train/loss"]) == pytest.approx(0.5, abs=1e-3)  # step 1: policy = reference
    assert float(rows[0]["train/kl"]) == pytest.approx(0.0, abs=1e-3)
    final = json.loads((out / "metrics.json").read_text())
    assert final["global_step"] == 16
    assert final["train/rewards/chosen"] > final["train/rewards/rejected"]
    assert final["train/rewards/margins"] > 1.0 and final["train/loss"] < 0.3
    log = (out / "train.log").read_text()
    assert "reference log-probs for 8 train pairs cached" in log
    cached = sorted((tmp_path / ".zephyr_cache" / "ref_logps").glob("ref_logps-*.safetensors"))
    assert len(cached) == 1  # next to the data file: completions and KL completions in one table

    again = tmp_path / "again"
    run_train(*common(tmp_path, ckpt, data), f"paths.output_dir={again}", "trainer.max_steps=2")
    log = (again / "train.log").read_text()
    assert "cache hit" in log and "reference model not loaded" in log and "cached in" not in log


@pytest.mark.parametrize(
    ("row", "reason"),
    [({"label": "yes"}, "'label' must be true or false, got 'yes'"), ({"completion": ""}, "'completion' is empty")],
)
def test_bad_row_is_one_line_before_any_model(tmp_path, row, reason):
    good = {"prompt": "Add 1 and 2.", "completion": "3.", "label": True}
    data = write_jsonl(tmp_path / "kto.jsonl", [good, {**good, **row}])
    proc = run_train(
        "objective=kto", "data=local_kto", f"data.path={data}", f"paths.output_dir={tmp_path}/run", check=False
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    hint = "(set data.on_bad_row=skip to skip and count bad rows)"
    assert lines[-1] == f"train.py: error: {data}: row 2: {reason} {hint}"
    assert "Traceback" not in proc.stderr and sum(x.startswith("train.py: error") for x in lines) == 1
    assert not (tmp_path / "run" / "checkpoints").exists()
