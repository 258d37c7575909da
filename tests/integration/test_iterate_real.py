"""``zephyr iterate --config FILE`` on the real-data path: a saved Hugging Face checkpoint of another family as
the start model, prompts from a jsonl file, the pool and judge from a feedback config file, win rate against the
start model on held-out prompts. 2 fresh rounds + the compute-matched round, then a rerun that reuses everything.

The files are what a user would write for real data; only the backends in the feedback file are the toy world's
(rule students, the verifier judge, the MT-Bench verifier for win rates) so the run is offline and checkable.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.unit.models.test_families import make_checkpoint
from zephyr.feedback.store import read_jsonl, write_jsonl

pytestmark = [pytest.mark.integration, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "PYTHONWARNINGS": "ignore", "WANDB_MODE": "offline"}


def _prompt_file(path: Path, n: int, seed: int, split: str) -> Path:
    from zephyr.toy.tasks import sample_tasks

    rows = [
        {"prompt": t.question, "source": f"toy_{t.family}", "correct_answers": [t.answer]}
        for t in sample_tasks(n, seed, split=split, families=["reverse_list", "unit_conversion"])
    ]
    write_jsonl(path, rows)
    return path


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("iter_real")
    start = make_checkpoint("llama", tmp / "sft_model")
    feedback = tmp / "feedback.yaml"
    feedback.write_text(
        yaml.safe_dump(
            {
                "seed": 0,
                "workers": 1,
                "progress": False,
                "pool": {"_target_": "zephyr.toy.students.default_pool", "seed": 0},
                "judge": {"_target_": "zephyr.toy.judge.VerifierJudge"},
                "feedback": {"models_per_prompt": None, "critique": False,
                             "completion_gen": {"temperature": 0.7, "top_p": 1.0, "max_tokens": 8}},
            }
        )
    )  # fmt: skip
    config = tmp / "iterate.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "threads": 1,
                "model": [],
                "ddpo": ["trainer.max_steps=2", "data.batch_size=4", "data.max_length=128",
                         "data.max_prompt_length=64", "data.eval_size=0"],
                "iterate": {
                    "rounds": 2,
                    "start": str(start),
                    "prompt_source": {"source": "jsonl", "path": str(_prompt_file(tmp / "p.jsonl", 20, 1, "train")),
                                      "n": 6},
                    "feedback": str(feedback),
                    "pool": ["rule-careful", "rule-weak", "dsft"],
                    "win_rate": {
                        "prompts": {"source": "jsonl", "n": 4,
                                    "path": str(_prompt_file(tmp / "h.jsonl", 5, 2, "heldout"))},
                        "judge": {"_target_": "zephyr.toy.mt_bench_judge.MTBenchVerifierJudge"},
                        "max_tokens": 8,
                    },
                },
            }
        )
    )  # fmt: skip
    out = tmp / "out"
    cmd = [sys.executable, "-m", "zephyr.cli", "iterate", "--config", str(config), "--out", str(out), "--seed", "5"]
    first = subprocess.run(cmd, cwd=REPO, env=ENV, capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stderr[-3000:]
    rows = (out / "round_2" / "feedback" / "completions.jsonl").read_text()
    report = json.loads((out / "report.json").read_text())
    again = subprocess.run(cmd, cwd=REPO, env=ENV, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    return out, report, rows, first.stdout, again.stdout


def test_report_holds_win_rates_per_round(run):
    out, report, *_ = run
    assert list(report) == ["rounds", "accuracy", "win_rate", "heldout_n", "seed", "metric"]
    assert report["metric"] == "win_rate" and report["heldout_n"] == 4 and report["seed"] == 5
    for r in report["rounds"]:
        assert list(r) == ["round", "accuracy", "win_rate", "lc_win_rate", "per_family", "pairs", "stages"]
        assert r["accuracy"] is None and 0.0 <= r["win_rate"] <= 1.0 and r["pairs"] > 0
        assert list(r["stages"]) == ["sampling", "judging", "binarize", "ddpo", "win_rate"]
        assert set(r["per_family"]) <= {"toy_reverse_list", "toy_unit_conversion"} and r["per_family"]
        judged = read_jsonl(out / f"round_{r['round']}" / "win_rate" / "judgments.jsonl")
        assert len(judged) == 4 and all(j["prompt_name"] == "pair-math-v1" for j in judged)  # reference-guided
        prefs = [j["preference"] for j in judged if j["preference"] is not None]
        assert r["win_rate"] == pytest.approx(sum(prefs) / len(prefs))
    wr = report["win_rate"]
    assert wr["dsft"] == 0.5 and wr["final"] == report["rounds"][1]["win_rate"]
    assert wr["single_round_compute_matched"] is not None
    assert set(report["accuracy"].values()) == {None}
    assert "win rate" in (out / "report.md").read_text() and (out / "accuracy.png").stat().st_size > 1000
    # the start model's answers were written once and serve every round
    assert len(read_jsonl(out / "start" / "answers.jsonl")) == 4


def test_rounds_draw_fresh_prompts_and_the_policy_replaces_the_start_model(run):
    out, *_ = run
    seen = [{r["instruction"] for r in read_jsonl(out / f"round_{k}" / "feedback" / "ultrafeedback.jsonl")}
            for k in (1, 2)]  # fmt: skip
    assert len(seen[0]) == len(seen[1]) == 6 and not seen[0] & seen[1]
    for k, policy in ((1, "dsft"), (2, "round1")):
        rows = read_jsonl(out / f"round_{k}" / "feedback" / "ultrafeedback.jsonl")
        assert {m for r in rows for m in r["models"]} == {"rule-careful", "rule-weak", policy}
    settings = yaml.safe_load((out / "settings.yaml").read_text())
    assert settings["iterate"]["start"].endswith("sft_model")
    assert not (out / "dsft").exists() and not (out / "data").exists()  # no toy stages
    cfg = yaml.safe_load((out / "round_1" / "ddpo" / "config_resolved.yaml").read_text())
    assert cfg["model"]["path"] == str(out.parent / "sft_model")
    exported = json.loads((out / "round_2" / "ddpo" / "model" / "config.json").read_text())
    assert exported["model_type"] == "llama"


def test_rerun_reuses_every_stage(run):
    out, report, rows, _, again = run
    assert (out / "round_2" / "feedback" / "completions.jsonl").read_text() == rows
    assert json.loads((out / "report.json").read_text()) == report
    for name in ("answers_start", "sampling", "judging", "binarize", "ddpo", "win_rate"):
        assert f"{name}: reusing the earlier run" in again
