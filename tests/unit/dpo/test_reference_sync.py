"""TR-DPO reference sync (``objective.reference.sync``): hand-computed soft and hard updates, exactly every N
optimizer steps in a Lightning fit, the synced reference carried through an exact resume, and the refusals."""

from __future__ import annotations

import subprocess
import sys
from functools import partial
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch

from tests.unit.dpo.helpers_dpo import export_tiny, make_datamodule, pref_rows, write_jsonl
from zephyr.modules.reference import Reference, check_sync

REPO = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def tok():
    from zephyr.tokenizer import load_tokenizer

    return load_tokenizer()


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return export_tiny(tmp_path_factory.mktemp("dsft") / "model")


def sync_module(ckpt, *, sync="hard", alpha=0.6, every_n_steps=2, lr=1e-2):
    """A DPOModule with a live reference copy loaded from ``ckpt`` and TR-DPO sync on."""
    from zephyr.models.mistral import build_model
    from zephyr.modules.dpo import DPOModule

    reference = partial(
        Reference,
        mode="live",
        sync=sync,
        alpha=alpha,
        every_n_steps=every_n_steps,
        model=lambda: build_model(str(ckpt)),
        model_path=str(ckpt),
        root_dir=Path(ckpt).parent,
    )
    optimizer = partial(torch.optim.AdamW, lr=lr, weight_decay=0.0)
    return DPOModule(build_model(str(ckpt)), optimizer, {"name": "constant", "warmup_ratio": 0.0}, reference=reference)


def ref_params(module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in module.reference.model.model.named_parameters()}


def policy_params(module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in module.model.named_parameters()}


def trainer(max_steps: int, accumulate: int = 1, callbacks=()) -> pl.Trainer:
    return pl.Trainer(
        accelerator="cpu",
        devices=1,
        max_steps=max_steps,
        max_epochs=-1,
        accumulate_grad_batches=accumulate,
        logger=False,
        enable_checkpointing=any(isinstance(c, pl.callbacks.ModelCheckpoint) for c in callbacks),
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
        callbacks=list(callbacks),
    )


def test_soft_and_hard_sync_by_hand(ckpt, tok, tmp_path):
    dm = make_datamodule(tok, write_jsonl(tmp_path / "p.jsonl", pref_rows(4)))
    soft = sync_module(ckpt, sync="soft", alpha=0.25, every_n_steps=3)
    soft.prepare_reference(dm)
    head = "lm_head.weight"
    with torch.no_grad():
        for p in soft.model.parameters():
            p.fill_(4.0)
        for p in soft.reference.model.model.parameters():
            p.fill_(2.0)
        soft.model.get_parameter(head)[0, :2] = torch.tensor([1.0, 3.0])
        soft.reference.model.model.get_parameter(head)[0, :2] = torch.tensor([5.0, -1.0])
    assert not soft.reference.after_optimizer_step(2)  # not a multiple of 3: untouched
    assert torch.all(ref_params(soft)["model.norm.weight"] == 2.0)
    assert soft.reference.after_optimizer_step(3)
    ref = ref_params(soft)
    # 0.25 * policy + 0.75 * ref: 0.25*4 + 0.75*2 = 2.5; 0.25*1 + 0.75*5 = 4.0; 0.25*3 + 0.75*(-1) = 0.0
    assert torch.equal(ref[head][0, :2], torch.tensor([4.0, 0.0]))
    assert torch.all(ref[head][1:] == 2.5) and all(torch.all(t == 2.5) for n, t in ref.items() if n != head)
    assert not soft.reference.after_optimizer_step(3)  # the same step is synced once
    assert soft.reference.after_optimizer_step(6)  # second soft step: 0.25*4 + 0.75*2.5 = 2.875
    assert torch.all(ref_params(soft)["model.norm.weight"] == 2.875)
    assert torch.all(policy_params(soft)["model.norm.weight"] == 4.0)  # the policy is never touched
    assert soft.reference.sync_steps == [3, 6]

    hard = sync_module(ckpt, sync="hard", every_n_steps=1)
    hard.prepare_reference(dm)
    with torch.no_grad():
        hard.model.get_parameter(head).mul_(3.0)
    before = ref_params(hard)[head]
    assert not torch.equal(before, hard.model.get_parameter(head))
    assert hard.reference.after_optimizer_step(1)
    after = ref_params(hard)
    assert all(torch.equal(after[n], p) for n, p in policy_params(hard).items())  # ref <- policy, exactly


def test_sync_happens_exactly_every_n_optimizer_steps(ckpt, tok, tmp_path):
    dm = make_datamodule(tok, write_jsonl(tmp_path / "p.jsonl", pref_rows(12)), batch_size=2)
    module = sync_module(ckpt, sync="hard", every_n_steps=2)
    seen: dict[int, dict[str, torch.Tensor]] = {}

    class Snapshot(pl.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            seen.setdefault(trainer.global_step, policy_params(pl_module))  # after optimizer step global_step

    trainer(5, accumulate=2, callbacks=[Snapshot()]).fit(module, datamodule=dm)  # 10 micro-batches
    assert module.reference.sync_steps == [2, 4]
    ref = ref_params(module)
    assert all(torch.equal(ref[n], t) for n, t in seen[4].items())  # the policy right after step 4
    assert not all(torch.equal(ref[n], t) for n, t in policy_params(module).items())  # step 5 moved on


def test_exact_resume_keeps_the_synced_reference(ckpt, tok, tmp_path):
    data = write_jsonl(tmp_path / "p.jsonl", pref_rows(12))  # 3 batches of 4: one epoch = 3 steps
    losses: dict[str, dict[int, float]] = {"full": {}, "resumed": {}}

    class Losses(pl.Callback):
        def __init__(self, run):
            self.run = run

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            losses[self.run][trainer.global_step] = float(outputs["loss"])

    saver = pl.callbacks.ModelCheckpoint(dirpath=tmp_path / "ck", every_n_train_steps=4, save_top_k=-1)
    full = sync_module(ckpt, sync="soft", alpha=0.5, every_n_steps=2)
    trainer(6, callbacks=[saver, Losses("full")]).fit(full, datamodule=make_datamodule(tok, data))
    assert full.reference.sync_steps == [2, 4, 6]
    saved = tmp_path / "ck" / "epoch=1-step=4.ckpt"
    state = torch.load(saved, map_location="cpu", weights_only=False)["reference"]
    assert state["synced_step"] == 4  # the step-4 sync ran before the checkpoint was written

    resumed = sync_module(ckpt, sync="soft", alpha=0.5, every_n_steps=2)
    trainer(6, callbacks=[Losses("resumed")]).fit(resumed, datamodule=make_datamodule(tok, data), ckpt_path=saved)
    assert resumed.reference.sync_steps == [6]
    assert sorted(losses["resumed"]) == [5, 6]
    for step in (5, 6):  # with the starting weights as reference these would differ from step 5 on
        assert losses["resumed"][step] == pytest.approx(losses["full"][step], abs=1e-6), step
    a, b = ref_params(full), ref_params(resumed)
    assert all(torch.allclose(a[n], b[n], atol=1e-6) for n in a)
    start = sync_module(ckpt, sync=None)
    start.prepare_reference(make_datamodule(tok, data))
    assert not all(torch.equal(a[n], t) for n, t in ref_params(start).items())  # the reference really moved


def test_no_sync_checkpoints_carry_no_reference(ckpt, tok, tmp_path):
    module = sync_module(ckpt, sync=None)
    module.prepare_reference(make_datamodule(tok, write_jsonl(tmp_path / "p.jsonl", pref_rows(4))))
    checkpoint: dict = {}
    module.on_save_checkpoint(checkpoint)
    assert "reference" not in checkpoint


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(sync="soft", mode="cache"), "objective.reference.sync=soft needs objective.reference.mode=live"),
        (dict(sync="both", mode="live"), "objective.reference.sync='both' must be one of ('soft', 'hard')"),
        (dict(sync="soft", mode="live", alpha=1.5), "objective.reference.alpha=1.5 must be a number in (0, 1]"),
        (dict(sync="hard", mode="live", every_n_steps=0), "objective.reference.every_n_steps=0 must be an integer"),
        (dict(sync="hard", mode="live", adapters=True), "objective.reference.sync=hard is not available with adapt"),
    ],
)
def test_bad_sync_settings_are_refused(kwargs, message):
    opts = {"alpha": 0.6, "every_n_steps": 2, **kwargs}
    with pytest.raises(ValueError) as e:
        check_sync(opts.pop("sync"), **opts)
    assert str(e.value).startswith(message)


def test_sync_with_the_cache_is_refused_in_one_line_before_any_model(tmp_path):
    cmd = [sys.executable, str(REPO / "train.py"), "objective=dpo", "objective.reference.sync=soft"]
    cmd += ["logger=none", f"paths.root_dir={tmp_path}", f"paths.output_dir={tmp_path / 'run'}"]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip() == (
        "train.py: error: objective.reference.sync=soft needs objective.reference.mode=live: mode=cache caches the "
        "log-probs of fixed reference weights, and a synced reference changes during training"
    )
