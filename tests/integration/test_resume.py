"""kill -9 mid-run, then ckpt_path=last: every later step's loss equals the uninterrupted run's."""

import csv
import os
import signal
import subprocess
import time

import pytest

from tests.conftest import write_jsonl
from tests.integration.helpers_train import REPO, run_train, train_cmd
from zephyr.toy.teacher import sft_dialogues

STEPS = 24
COMMON = [
    f"trainer.max_steps={STEPS}",
    "trainer.log_every_n_steps=1",
    "trainer.val_check_interval=1000",
    "callbacks.model_checkpoint.every_n_train_steps=4",
    "data.eval_size=0",
    "data.batch_size=4",  # 40 rows / 4 -> 10 batches per epoch: the run crosses epoch boundaries
    "export=false",
]


def losses(run_dir):
    with open(run_dir / "metrics.csv") as f:
        return {int(float(r["step"])): float(r["train/loss"]) for r in csv.DictReader(f) if r.get("train/loss")}


@pytest.mark.slow
def test_kill_and_resume_reproduces_loss_curve(tmp_path):
    data = write_jsonl(tmp_path / "d.jsonl", sft_dialogues(40, seed=3))
    ref_dir, kill_dir = tmp_path / "ref", tmp_path / "killed"
    run_train(f"data.path={data}", f"paths.output_dir={ref_dir}", *COMMON)
    reference = losses(ref_dir)
    assert sorted(reference) == list(range(1, STEPS + 1))

    proc = subprocess.Popen(
        train_cmd(f"data.path={data}", f"paths.output_dir={kill_dir}", *COMMON),
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    ckpt_dir = kill_dir / "checkpoints"
    deadline = time.time() + 240

    def saved_steps():
        return sorted(int(p.stem[4:]) for p in ckpt_dir.glob("step*.ckpt"))

    while time.time() < deadline and not [s for s in saved_steps() if s >= 8] and proc.poll() is None:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    saved = saved_steps()
    assert saved and saved[-1] < STEPS, "the run finished before it could be killed"
    assert not (kill_dir / "metrics.json").exists()

    run_train(f"data.path={data}", f"paths.output_dir={kill_dir}", "ckpt_path=last", *COMMON)
    resumed = losses(kill_dir)
    start = min(resumed)
    assert start <= saved[-1] + 1  # resumed from the last checkpoint (no step skipped)
    assert sorted(resumed) == list(range(start, STEPS + 1))  # no step repeated or missing
    for step in range(start, STEPS + 1):
        assert resumed[step] == pytest.approx(reference[step], abs=1e-5), f"step {step}"
