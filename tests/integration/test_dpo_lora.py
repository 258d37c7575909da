"""dDPO with LoRA through ``train.py``: the reference is the base with adapters off, not a second copy.

``adapter=lora`` on a dSFT checkpoint: the cache fill runs the policy with its adapters disabled (nothing
reloaded), step 1 is at loss log 2 (LoRA starts as the identity, so policy = reference), and the loss falls.
The unit tests (``tests/unit/dpo/test_reference_lora.py``) pin the values and the parameter count.
"""

from __future__ import annotations

import csv

import pytest

from tests.integration.helpers_train import run_train
from tests.unit.dpo.helpers_dpo import export_tiny, pref_rows, write_jsonl

pytest.importorskip("peft")


def dpo_run(tmp_path, ckpt, data, name: str, *overrides: str):
    out = tmp_path / name
    proc = run_train(
        "+experiment=dpo_toy",
        f"paths.root_dir={tmp_path}",
        f"model.path={ckpt}",
        "data=local_prefs",
        f"data.path={data}",
        "data.max_length=128",
        "data.max_prompt_length=64",
        "data.eval_size=0",
        "data.batch_size=4",
        "export=false",
        f"paths.output_dir={out}",
        "trainer.max_epochs=-1",
        "trainer.max_steps=6",
        "trainer.log_every_n_steps=1",
        "objective.scheduler.name=constant",
        *overrides,
    )
    with (out / "metrics.csv").open() as f:
        losses = [float(r["train/loss"]) for r in csv.DictReader(f) if r.get("train/loss")]
    return proc.stdout + proc.stderr, losses


@pytest.mark.slow
def test_lora_dpo_fills_the_cache_from_the_policy_with_adapters_off_and_trains(tmp_path):
    ckpt = export_tiny(tmp_path / "dsft")
    data = write_jsonl(tmp_path / "prefs.jsonl", pref_rows(8))
    cache = tmp_path / ".zephyr_cache" / "ref_logps"  # next to the local data file
    log, losses = dpo_run(tmp_path, ckpt, data, "lora", "adapter=lora", "objective.optimizer.lr=5e-3")
    assert "reference: the policy with its adapters disabled (no copy of the weights)" in log
    assert "reference log-probs for 8 train pairs cached" in log and len(list(cache.glob("*.safetensors"))) == 1
    assert len(losses) == 6 and losses[0] == pytest.approx(0.6931, abs=1e-3)  # LoRA starts as identity
    assert losses[-1] < losses[0] - 1e-3
