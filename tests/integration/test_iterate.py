"""``zephyr iterate`` end to end on a world smaller than ``--size ci``: 2 rounds, killed (-9) in round 2, rerun.

One run serves every check: the rerun of the same command reuses the finished stages (dSFT, round 1) and the
feedback rows written before the kill, duplicates nothing, finishes round 2 and the compute-matched round, and
writes ``report.json`` with its contract. Round 2's reference cache key holds round 1's export fingerprint and
round 2's pool has round 1's policy in place of the dSFT model. Accuracies are near zero here and not compared.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from zephyr.feedback.store import read_jsonl

pytestmark = [pytest.mark.integration, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
SETTINGS = [
    "sft_data.n=48",
    "dsft=[trainer.max_steps=4,data.batch_size=8,data.max_length=256,data.packing=true]",
    "feedback.prompts=8",
    "feedback.max_tokens=8",
    "eval.n=12",
    "eval.max_new_tokens=8",
    "threads=1",
]


def _cmd(out: Path) -> list[str]:
    base = [sys.executable, "-m", "zephyr.cli", "iterate", "--out", str(out), "--rounds", "2", "--size", "ci"]
    return [*base, "--seed", "3", "--set", *SETTINGS]


ENV = {**os.environ, "PYTHONWARNINGS": "ignore", "WANDB_MODE": "offline"}


def _lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.is_file() else []


@pytest.fixture(scope="module")
def resumed(tmp_path_factory):
    out = tmp_path_factory.mktemp("iter")
    rows2 = out / "round_2" / "feedback" / "completions.jsonl"
    proc = subprocess.Popen(
        _cmd(out), cwd=REPO, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    deadline = time.time() + 400
    while time.time() < deadline and proc.poll() is None and len(_lines(rows2)) < 2:
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    before = {"rows2": _lines(rows2), "report": (out / "report.json").exists()}
    before["round1_stages"] = json.loads((out / "round_1" / "stages.json").read_text())
    from zephyr.modules.reference import checkpoint_fingerprint

    before["round1_export"] = checkpoint_fingerprint(out / "round_1" / "ddpo" / "model")
    done = subprocess.run(_cmd(out), cwd=REPO, env=ENV, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return out, before, done.stdout, json.loads((out / "report.json").read_text())


def test_killed_in_round_2(resumed):
    out, before, _, _ = resumed
    assert not before["report"]  # the kill came before the end
    assert {"ddpo", "eval"} <= set(before["round1_stages"])  # round 1 had finished
    assert len(before["rows2"]) >= 2


def test_rerun_reuses_finished_stages_and_rows(resumed):
    out, before, stdout, _ = resumed
    from zephyr.modules.reference import checkpoint_fingerprint

    for name in ("sft_data", "dsft", "eval_dsft", "ddpo", "eval"):
        assert f"{name}: reusing the earlier run" in stdout
    assert json.loads((out / "round_1" / "stages.json").read_text()) == before["round1_stages"]
    assert checkpoint_fingerprint(out / "round_1" / "ddpo" / "model") == before["round1_export"]
    after = _lines(out / "round_2" / "feedback" / "completions.jsonl")
    ok_before = [x for x in before["rows2"] if json.loads(x)["status"] == "ok"]
    assert all(x in after for x in ok_before)  # rows written before the kill are kept, not redone
    keys = Counter(tuple(json.loads(x)["key"]) for x in after if json.loads(x)["status"] == "ok")
    assert keys and max(keys.values()) == 1  # nothing duplicated
    assert len(keys) == 8 * 6  # 8 prompts x the 6 pool members


def test_report_contract(resumed):
    out, _, stdout, report = resumed
    assert list(report) == ["rounds", "accuracy", "heldout_n", "seed"]
    assert [r["round"] for r in report["rounds"]] == [1, 2]
    for r in report["rounds"]:
        assert list(r) == ["round", "accuracy", "per_family", "pairs", "stages"]
        assert 0.0 <= r["accuracy"] <= 1.0 and r["pairs"] > 0
        assert list(r["stages"]) == ["sampling", "judging", "binarize", "ddpo", "eval"]
        assert set(r["per_family"]) == {"unit_conversion", "reverse_list", "count_letter"}
    acc = report["accuracy"]
    assert list(acc) == ["dsft", "single_round", "single_round_compute_matched", "final"]
    assert acc["single_round"] == report["rounds"][0]["accuracy"] and acc["final"] == report["rounds"][1]["accuracy"]
    assert report["heldout_n"] == 12 and report["seed"] == 3
    for r in (1, 2):
        d = out / f"round_{r}"
        assert read_jsonl(d / "pairs.jsonl") and (d / "ddpo" / "model" / "config.json").is_file()
    assert (out / "accuracy.png").stat().st_size > 1000
    assert "| round 2 |" in (out / "report.md").read_text()
    assert "iterative dDPO, held-out accuracy" in stdout


def test_round_2_pool_and_reference_cache(resumed):
    out, *_ = resumed
    from safetensors import safe_open

    from zephyr.modules.reference import checkpoint_fingerprint

    models = {json.loads(x)["key"][1] for x in _lines(out / "round_2" / "feedback" / "completions.jsonl")}
    assert "round1" in models and "dsft" not in models  # round 1's policy replaced the dSFT model
    files = list((out / "round_2" / "ref_cache").glob("ref_logps-*.safetensors"))
    assert len(files) == 1
    with safe_open(str(files[0]), "pt") as f:
        parts = json.loads(f.metadata()["parts"])
    assert parts["weights"] == checkpoint_fingerprint(out / "round_1" / "ddpo" / "model")
    assert parts["weights"] != checkpoint_fingerprint(out / "dsft" / "model")


def test_compute_matched_steps(resumed):
    out, *_ = resumed
    steps = [json.loads((out / f"round_{r}" / "ddpo" / "metrics.json").read_text())["global_step"] for r in (1, 2)]
    matched = json.loads((out / "compute_matched" / "ddpo" / "metrics.json").read_text())["global_step"]
    assert matched == sum(steps)
    n_prompts = len(read_jsonl(out / "compute_matched" / "feedback" / "ultrafeedback.jsonl"))
    assert n_prompts == len(
        {r["instruction"] for d in (1, 2) for r in read_jsonl(out / f"round_{d}" / "feedback" / "ultrafeedback.jsonl")}
    )
