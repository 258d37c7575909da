"""A demo / iterate training stage killed (-9) midway resumes from its newest checkpoint when the command reruns.

``zephyr.demo._train`` (every stage of ``zephyr demo`` and ``zephyr iterate``) runs with ``ckpt_path=last``: the
rerun continues the killed run at its checkpoint instead of starting over, keeps the steps logged before the
kill, finishes at ``trainer.max_steps``, exports, and deletes the checkpoints that only served the resume.
"""

from __future__ import annotations

import csv
import logging

import pytest

from tests.integration.helpers_train import TINY, kill_when

pytestmark = pytest.mark.slow

STEPS = 8


def test_killed_stage_resumes_from_its_checkpoint(tmp_path, caplog):
    from zephyr.demo import _train

    out = tmp_path / "dsft"
    overrides = [
        *TINY,
        "data.toy.n=48",
        "data.batch_size=4",
        "data.eval_size=0",
        f"trainer.max_steps={STEPS}",
        "trainer.log_every_n_steps=1",
        "callbacks.model_checkpoint.every_n_train_steps=2",
        "final_eval=false",
        f"paths.output_dir={out}",
    ]
    ckpts = out / "checkpoints"
    kill_when(*overrides, ready=lambda: any(ckpts.glob("step000004.ckpt")))
    saved = sorted(int(p.stem[4:]) for p in ckpts.glob("step*.ckpt"))
    assert saved and saved[-1] < STEPS, "the run finished before it could be killed"
    assert not (out / "model").exists()

    with caplog.at_level(logging.INFO, logger="zephyr.run"):
        metrics = _train(overrides)
    assert f"resuming from {ckpts / f'step{saved[-1]:06d}.ckpt'}" in caplog.text
    assert metrics["global_step"] == STEPS
    assert (out / "model" / "config.json").is_file()
    assert not ckpts.exists()  # a finished stage keeps its export, not the resume checkpoints
    with open(out / "metrics.csv") as f:
        steps = [int(float(r["step"])) for r in csv.DictReader(f) if r.get("train/loss")]
    assert steps == list(range(1, STEPS + 1))  # the killed run's steps kept, none logged twice
