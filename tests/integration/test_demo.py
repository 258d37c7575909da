"""The demo pipeline end to end at reduced size: every stage runs, report.json keeps its contract, files exist.

The sizes here are smaller still than ``--size ci`` (a few dSFT steps), so the accuracies are near zero and
not compared; what is checked is the wiring of ``zephyr demo``: the dSFT export joins the completion pool,
the verifier's UltraFeedback ratings become pairs, dDPO starts from the dSFT export, and all five models
are graded on the same held-out questions.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from zephyr.demo import MODELS
from zephyr.feedback.store import read_jsonl

pytestmark = [pytest.mark.integration, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]

STAGES = [
    "sft_data", "dsft", "sampling", "judging", "binarize", "ddpo", "dsft_compute_matched", "dpo_from_base", "eval",
]  # fmt: skip


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    overrides = [
        "sft_data.n=48",
        "dsft=[trainer.max_steps=4,data.batch_size=8,data.max_length=256,data.packing=true]",
        "feedback.prompts=16",
        "feedback.max_tokens=12",
        "eval.n=20",
        "eval.max_new_tokens=12",
    ]
    cmd = [sys.executable, "-m", "zephyr.cli", "demo", "--out", str(out), "--size", "ci", "--seed", "3"]
    cmd += ["--set", *overrides]
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "WANDB_MODE": "offline"}
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "held-out accuracy" in proc.stdout and "dsft_compute_matched" in proc.stdout  # the printed report
    return out, json.loads((out / "report.json").read_text())


def test_report_json_contract(demo):
    out, report = demo
    assert list(report["stages"]) == STAGES
    assert all(isinstance(v, float) and v >= 0 for v in report["stages"].values())
    assert report["total_s"] == pytest.approx(sum(report["stages"].values()), abs=0.2)
    assert list(report["accuracy"]) == list(MODELS)
    assert all(0.0 <= v <= 1.0 for v in report["accuracy"].values())
    assert report["heldout_n"] == 20 and report["seed"] == 3
    assert report["accuracy"]["base"] == 0.0  # a random-init model cannot produce a right toy answer


def test_every_stage_wrote_its_files(demo):
    out, _ = demo
    assert len(read_jsonl(out / "data" / "sft.jsonl")) == 48
    for name in MODELS[1:]:
        assert (out / name / "model" / "config.json").is_file(), name
    for name in ("report.md", "accuracy.png", "stages.png"):
        assert (out / name).stat().st_size > 0, name
    md = (out / "report.md").read_text()
    assert "dsft_compute_matched" in md and "dpo_from_base" in md


def test_dsft_model_is_in_the_pool_and_pairs_are_binarized(demo):
    out, report = demo
    rows = read_jsonl(out / "feedback" / "ultrafeedback.jsonl")
    assert len(rows) == 16
    models = {c["model"] for r in rows for c in r["completions"]}
    assert "dsft" in models and "rule-careful" in models
    ratings = [c["annotations"]["truthfulness"]["Rating"] for r in rows for c in r["completions"]]
    assert set(ratings) <= {"1", "2", "3", "4", "5"}
    pairs = read_jsonl(out / "data" / "pairs.jsonl")
    assert len(pairs) == report["pairs"] > 0
    for p in pairs:
        assert p["score_chosen"] > p["score_rejected"]  # ties are dropped
        assert p["chosen"][0] == p["rejected"][0] == {"role": "user", "content": p["prompt"]}
    ddpo_cfg = (out / "ddpo" / "config_resolved.yaml").read_text()
    assert str(out / "dsft" / "model") in ddpo_cfg and "rpo_alpha: 1.0" in ddpo_cfg
    assert report["compute_matched_steps"] >= 1
