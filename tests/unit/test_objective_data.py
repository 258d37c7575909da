"""Objective x data: ``objective=dpo`` brings the toy pairs; a mismatch stops before any model is loaded."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.conftest import REPO


def test_objective_dpo_brings_preference_data(compose):
    from zephyr.run import check_objective_data

    cfg = compose("objective=dpo")
    assert cfg.data._target_ == "zephyr.data.preference.PreferenceDataModule"
    assert cfg.data.max_prompt_length == 128  # the toy pairs' settings (conf/data/toy_prefs.yaml)
    check_objective_data(cfg)
    local = compose("objective=dpo", "data=local_prefs", "data.path=pairs.jsonl")
    assert local.data.path == "pairs.jsonl"  # the command line still chooses the data
    assert compose("+experiment=dpo_toy").data.max_prompt_length == 128
    assert compose().data._target_ == "zephyr.data.sft.SFTDataModule"


@pytest.mark.parametrize(
    ("overrides", "wanted"),
    [(["objective=dpo", "data=toy_sft"], "data=toy_prefs"), (["data=toy_prefs"], "data=local_sft data.path=FILE")],
)
def test_mismatch_is_one_line_before_the_model(tmp_path, overrides, wanted):
    cmd = [sys.executable, "train.py", *overrides, f"paths.output_dir={tmp_path}/run", "logger=none"]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("train.py: error: ") and wanted in lines[0], proc.stderr
    assert "rows but the data config gives" in lines[0]
    run = tmp_path / "run"  # Hydra made the folder for its logs; nothing of the run was written
    assert not (run / "config_resolved.yaml").exists() and not (run / "checkpoints").exists()
