"""``python train.py -m +experiment=loss_study`` at ci size: one row per loss, held-out accuracy and KL, the report."""

from __future__ import annotations

import csv
import json
import math
import os
import subprocess
import time

import pytest

from tests.integration.helpers_train import REPO, run_train, train_cmd
from tests.unit.dpo.helpers_dpo import export_tiny, pref_rows, write_jsonl
from zephyr.cli import main

# the dSFT loss (reference log-probs), a reference-free one, KTO on the pairs' halves
LOSSES = ("sigmoid", "simpo", "kto")


def fake_demo(root):
    """What ``zephyr demo --out DIR`` leaves for the study: DIR/dsft/model and DIR/data/pairs.jsonl (tiny here)."""
    export_tiny(root / "dsft" / "model")
    (root / "data").mkdir(parents=True)
    write_jsonl(root / "data" / "pairs.jsonl", pref_rows(8))
    return root


@pytest.mark.slow
def test_loss_study_multirun_one_row_per_loss_with_heldout_accuracy_and_kl(tmp_path):
    demo = fake_demo(tmp_path / "demo")
    python, script, *tiny = train_cmd()
    cmd = [
        python,
        script,
        "-m",
        *tiny,
        "+experiment=loss_study",
        f"loss={','.join(LOSSES)}",
        f"loss_study.demo_dir={demo}",
        f"paths.root_dir={tmp_path}",
        "trainer.max_epochs=1",  # 8 pairs (16 KTO rows): one optimizer step per job
        "export=false",
        "heldout.n=6",
        "heldout.kl_n=3",
        "heldout.max_new_tokens=8",
    ]
    started = time.perf_counter()
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    elapsed = time.perf_counter() - started
    (sweep,) = list((tmp_path / "runs" / "multirun" / "loss_study").iterdir())
    with open(sweep / "summary.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["loss"] for r in rows] == list(LOSSES)
    assert all(r["status"] == "ok" and float(r["global_step"]) == 1.0 for r in rows)
    for r in rows:
        acc, kl = float(r["heldout_accuracy"]), float(r["heldout_kl"])
        assert 0.0 <= acc <= 1.0 and math.isfinite(kl), r
        assert set(r) >= {f"heldout_accuracy/{f}" for f in ("unit_conversion", "reverse_list", "count_letter")}
    record = json.loads((sweep / "2" / "heldout.json").read_text())
    assert (record["n"], record["kl_n"]) == (6, 3) and record["metrics"]["heldout_kl"] == float(rows[2]["heldout_kl"])
    # the reference-free job needs no reference cache, yet has a KL to the dSFT model
    assert json.loads((sweep / "1" / "metrics.json").read_text())["heldout_kl"] == float(rows[1]["heldout_kl"])

    assert main(["report", str(sweep)]) == 0
    png = sweep / "report" / "loss_heldout.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "swept: loss" in (sweep / "report" / "report.md").read_text()
    per_job = ", ".join(f"{r['loss']} {float(r['runtime_s']):.1f} s" for r in rows)
    print(f"loss_study ci multirun: {len(rows)} jobs in {elapsed:.1f} s ({per_job})")


def test_loss_study_without_the_demo_outputs_says_run_zephyr_demo_first(tmp_path):
    proc = run_train("+experiment=loss_study", f"paths.root_dir={tmp_path}", check=False, timeout=60)
    assert proc.returncode == 2
    line = proc.stderr.strip().splitlines()[-1]
    assert line.startswith(f"train.py: error: model.path={tmp_path}/runs/demo/dsft/model has no checkpoint; ")
    assert "run `zephyr demo` first" in line
