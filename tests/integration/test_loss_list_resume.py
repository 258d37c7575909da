"""kill -9 a dDPO run with a loss list after its step-3 checkpoint, resume: every step's total and per-term loss match.

``objective.loss_type=[sigmoid,sft]`` with ``objective.loss_weights=[1.0,0.5]`` logs ``train/loss`` and
``train/loss/<name>``; after ``ckpt_path=last`` each of them, step by step, equals the uninterrupted run's.
Also ``objective.ld_alpha`` (LD-DPO): the reference, cached or live, sums its log-probs as the policy does.
"""

from __future__ import annotations

import csv

import pytest
import torch

from tests.integration.helpers_train import kill_when, run_train
from tests.unit.dpo.helpers_dpo import export_tiny, pref_rows, write_jsonl

STEPS = 6
COLUMNS = ("train/loss", "train/loss/sigmoid", "train/loss/sft")


def step_losses(run_dir) -> dict[int, dict[str, float]]:
    """``{step: {column: value}}`` of the loss columns in ``metrics.csv`` (rows that log ``train/loss``)."""
    with open(run_dir / "metrics.csv") as f:
        rows = [r for r in csv.DictReader(f) if r.get("train/loss")]
    return {int(float(r["step"])): {c: float(r[c]) for c in COLUMNS} for r in rows}


@pytest.mark.slow
@pytest.mark.parametrize(
    "n_rows",
    [
        pytest.param(14, id="mid_epoch"),  # 14 / 4 -> 4 batches: the step-3 checkpoint is mid-epoch 1
        pytest.param(10, id="epoch_end"),  # 10 / 4 -> 3 batches: the step-3 checkpoint ends epoch 0
    ],
)
def test_loss_list_kill_and_resume_reproduces_every_term(tmp_path, n_rows):
    ckpt = export_tiny(tmp_path / "dsft")
    data = write_jsonl(tmp_path / "prefs.jsonl", pref_rows(n_rows))  # both cross an epoch boundary in 6 steps
    common = [
        "+experiment=dpo_toy",
        f"paths.root_dir={tmp_path}",
        f"model.path={ckpt}",
        "data=local_prefs",
        f"data.path={data}",
        "data.eval_size=0",
        "data.batch_size=4",
        "data.max_length=128",
        "data.max_prompt_length=64",
        "objective.loss_type=[sigmoid,sft]",
        "objective.loss_weights=[1.0,0.5]",
        "trainer.max_epochs=-1",
        f"trainer.max_steps={STEPS}",
        "trainer.log_every_n_steps=1",
        "callbacks.model_checkpoint.every_n_train_steps=3",
        "export=false",
        "objective.optimizer.lr=1e-3",
    ]
    ref_dir, kill_dir = tmp_path / "ref", tmp_path / "killed"
    run_train(*common, f"paths.output_dir={ref_dir}")
    reference = step_losses(ref_dir)
    assert sorted(reference) == list(range(1, STEPS + 1))
    for step, row in reference.items():  # the total is the weighted sum of the logged terms
        expected = row["train/loss/sigmoid"] + 0.5 * row["train/loss/sft"]
        assert row["train/loss"] == pytest.approx(expected, rel=1e-4, abs=1e-5), f"step {step}"

    ckpt_dir = kill_dir / "checkpoints"
    kill_when(*common, f"paths.output_dir={kill_dir}", ready=lambda: list(ckpt_dir.glob("step000003.ckpt")))
    saved = sorted(int(p.stem[4:]) for p in ckpt_dir.glob("step*.ckpt"))
    assert saved and saved[-1] < STEPS, "the run finished before it could be killed"

    newest = ckpt_dir / f"step{saved[-1]:06d}.ckpt"
    proc = run_train(*common, f"paths.output_dir={kill_dir}", "ckpt_path=last")
    assert f"resuming from {newest}" in proc.stdout + proc.stderr
    resumed = step_losses(kill_dir)  # metrics.csv keeps the killed run's steps before the resume point
    assert sorted(resumed) == list(range(1, STEPS + 1))
    for step in range(1, STEPS + 1):
        for column in COLUMNS:
            assert resumed[step][column] == pytest.approx(reference[step][column], abs=1e-5), f"step {step} {column}"


def test_ld_alpha_sums_the_reference_like_the_policy_and_keys_the_cache(tmp_path):
    """``ld_alpha``: cache and live reference log-probs are LD-DPO sums of the frozen model; the key records α."""
    from tests.unit.dpo.helpers_dpo import make_datamodule, make_module
    from zephyr.models.mistral import build_model
    from zephyr.modules.dpo import DPOModule
    from zephyr.modules.pair_forward import pair_logps
    from zephyr.tokenizer import load_tokenizer

    ckpt = export_tiny(tmp_path / "dsft" / "model")
    tok = load_tokenizer()
    dm = make_datamodule(tok, write_jsonl(tmp_path / "prefs.jsonl", pref_rows(8)))
    batch = dm.collate(dm.train_items[:4])
    frozen = build_model(str(ckpt)).eval()
    with torch.no_grad():
        ld = pair_logps(frozen, batch, ld_alpha=0.25).logps
        plain = pair_logps(frozen, batch).logps
    assert not torch.allclose(ld, plain)  # the completions differ in length: the tails are down-weighted

    got = {}
    for mode in ("cache", "live"):
        module, _ = make_module(ckpt, tok, dm, cache_dir=tmp_path / "cache", mode=mode, ld_alpha=0.25)
        module.prepare_reference(dm)
        got[mode] = torch.cat(module.reference.logps(batch, "train"))
        if mode == "cache":
            assert module.reference.key_parts("train")["ld_alpha"] == 0.25
    for mode, values in got.items():
        torch.testing.assert_close(values, ld, rtol=1e-5, atol=1e-5, msg=lambda m, mode=mode: f"{mode}: {m}")
    plain_module, _ = make_module(ckpt, tok, dm, cache_dir=tmp_path / "cache")
    plain_module.prepare_reference(dm)  # a second cache file: without ld_alpha the key has no such part
    assert "ld_alpha" not in plain_module.reference.key_parts("train")
    assert len(list((tmp_path / "cache").glob("ref_logps-*.safetensors"))) == 2
    torch.testing.assert_close(torch.cat(plain_module.reference.logps(batch, "train")), plain, rtol=1e-5, atol=1e-5)

    with pytest.raises(ValueError, match=r"objective\.ld_alpha=1\.5 must be in \[0, 1\]"):
        DPOModule.validate_config({"loss_type": "sigmoid", "ld_alpha": 1.5})
