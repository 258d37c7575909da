"""kill -9, then ckpt_path=last: metrics.csv keeps the whole curve (every step once), the resume starts from the
newest complete checkpoint, the crash's leftovers are removed; resuming a finished run changes nothing."""

from __future__ import annotations

import csv
import json
import shutil

import pytest

from tests.conftest import write_jsonl
from tests.integration.helpers_train import kill_when, run_train
from tests.integration.test_resume import COMMON as RESUME_COMMON
from tests.integration.test_resume import losses
from zephyr.toy.teacher import sft_dialogues

STEPS = 20
COMMON = [o for o in RESUME_COMMON if not o.startswith("trainer.max_steps=")] + [f"trainer.max_steps={STEPS}"]


def csv_steps(run_dir):
    with open(run_dir / "metrics.csv") as f:
        return [int(float(r["step"])) for r in csv.DictReader(f)]


@pytest.fixture(scope="module")
def resumed(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("history")
    data = write_jsonl(tmp / "d.jsonl", sft_dialogues(40, seed=3))
    ref_dir, run_dir = tmp / "ref", tmp / "killed"
    common = [f"data.path={data}", *COMMON]
    run_train(*common, f"paths.output_dir={ref_dir}")
    # the killed run keeps every step checkpoint, so an older one can stand in for a lagging last.ckpt
    ckpt_dir = run_dir / "checkpoints"
    mid: dict[str, list[int]] = {}

    def ready() -> bool:  # step 8 saved: read metrics.csv while the run still trains, then kill it
        if not (ckpt_dir / "step000008.ckpt").exists():
            return False
        mid["steps"] = csv_steps(run_dir) if (run_dir / "metrics.csv").exists() else []
        return True

    kill_when(*common, f"paths.output_dir={run_dir}", "callbacks.model_checkpoint.save_top_k=-1", ready=ready)
    mid_run_steps = mid.get("steps", [])
    saved = sorted(int(p.stem[4:]) for p in ckpt_dir.glob("step*.ckpt"))
    assert saved and 8 <= saved[-1] < STEPS, f"the run finished before it could be killed: {saved}"
    killed_steps = csv_steps(run_dir)
    # what a crash can leave: last.ckpt a step behind, an interrupted save's temp file
    shutil.copyfile(ckpt_dir / "step000004.ckpt", ckpt_dir / "last.ckpt")
    (ckpt_dir / ".last.ckpt.x1y2z3.tmp").write_bytes(b"\0" * 1024)
    proc = run_train(*common, f"paths.output_dir={run_dir}", "ckpt_path=last")
    return {
        "ref": ref_dir,
        "run": run_dir,
        "common": common,
        "saved": saved,
        "mid_run_steps": mid_run_steps,
        "killed_steps": killed_steps,
        "log": proc.stdout + proc.stderr,
    }


@pytest.mark.slow
def test_resume_keeps_whole_curve_and_cleans_up(resumed):
    run_dir, newest = resumed["run"], resumed["saved"][-1]
    assert resumed["mid_run_steps"][:8] == list(range(1, 9))  # metrics.csv is on disk while the run trains
    assert resumed["killed_steps"][0] == 1 and resumed["killed_steps"][-1] >= newest
    assert f"resuming from {run_dir / 'checkpoints' / f'step{newest:06d}.ckpt'}" in resumed["log"]
    assert csv_steps(run_dir) == list(range(1, STEPS + 1))  # every step exactly once, in order
    reference, got = losses(resumed["ref"]), losses(run_dir)
    for step in range(1, STEPS + 1):
        assert got[step] == pytest.approx(reference[step], abs=1e-5), f"step {step}"
    ckpt_dir = run_dir / "checkpoints"
    assert not list(ckpt_dir.glob("*.tmp")) and not list(ckpt_dir.glob(".*.tmp"))
    assert sorted(p.name for p in ckpt_dir.iterdir()) == ["last.ckpt", f"step{STEPS:06d}.ckpt"]  # save_top_k=1


@pytest.mark.slow
def test_resume_of_finished_run_changes_nothing(resumed):
    run_dir = resumed["run"]
    before = {n: (run_dir / n).read_bytes() for n in ("metrics.json", "metrics.csv")}
    proc = run_train(*resumed["common"], f"paths.output_dir={run_dir}", "ckpt_path=last")
    out = proc.stdout + proc.stderr
    assert f"already complete at step {STEPS} (trainer.max_steps={STEPS}): nothing to do" in out
    assert "reached" not in out
    assert {n: (run_dir / n).read_bytes() for n in before} == before
    assert len(json.loads(before["metrics.json"])) > 3  # the finished run's full metrics
