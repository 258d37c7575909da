"""DPOModule: batch layout, one concatenated forward, step-0 values, metrics, RPO, IPO, frozen reference, NaN guard."""

from __future__ import annotations

import math

import pytest
import pytorch_lightning as pl
import torch

from tests.unit.dpo.helpers_dpo import export_tiny, make_datamodule, make_module, pref_rows, write_jsonl
from zephyr.data.collate import IGNORE_INDEX
from zephyr.errors import NonFiniteLossError
from zephyr.modules.pair_forward import pair_logps
from zephyr.objectives.logprobs import completion_logps

# pytorch_lightning 2.6 calls a torch pytree API that torch 2.13 deprecates (not ours to fix)


@pytest.fixture(scope="module")
def tok():
    from zephyr.tokenizer import load_tokenizer

    return load_tokenizer()


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return export_tiny(tmp_path_factory.mktemp("dsft") / "model")


@pytest.fixture
def dm(tok, tmp_path):
    return make_datamodule(tok, write_jsonl(tmp_path / "prefs.jsonl", pref_rows(8)))


def trainer(steps: int) -> pl.Trainer:
    return pl.Trainer(
        max_steps=steps,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        accelerator="cpu",
        limit_val_batches=0,
    )


def test_batch_is_2b_padding_free_rows_chosen_first(tok, tmp_path):
    dm = make_datamodule(tok, write_jsonl(tmp_path / "prefs.jsonl", pref_rows(8)), layout="concat")
    items = dm.train_items[:3]
    batch = dm.collate(items)
    assert batch["input_ids"].shape[0] == 6 and batch["index"].tolist() == [it["index"] for it in items]
    for row, (it, key) in enumerate([(it, "chosen") for it in items] + [(it, "rejected") for it in items]):
        n_prompt, n = len(it["prompt"]), len(it["prompt"]) + len(it[key])
        assert batch["input_ids"][row, :n].tolist() == it["prompt"] + it[key]
        assert (batch["labels"][row, :n_prompt] == IGNORE_INDEX).all()
        assert batch["labels"][row, n_prompt:n].tolist() == it[key]
        assert (batch["labels"][row, n:] == IGNORE_INDEX).all()
        assert batch["position_ids"][row, :n].tolist() == list(range(n))
        if n < batch["input_ids"].shape[1]:
            assert batch["position_ids"][row, n] == 0  # the padding tail is its own segment
    assert "attention_mask" not in batch
    # the prompt rendered with the empty system turn and BOS, the completion ends with the template's </s>\n
    assert items[0]["prompt"][0] == 1 and 2 in items[0]["chosen"]


@pytest.mark.parametrize("layout", ["concat", "prefix_shared"])
def test_concatenated_forward_equals_each_sequence_alone(ckpt, tok, tmp_path, layout):
    """Both batch layouts give the same log-probs as running every sequence unpadded by itself.

    concat: padding-free 2B rows, no mask; prefix_shared: B rows [prompt, chosen, rejected] with a 4-D mask.
    """
    from zephyr.models.mistral import build_model

    dm = make_datamodule(tok, write_jsonl(tmp_path / "prefs.jsonl", pref_rows(8)), layout=layout)
    model = build_model(str(ckpt)).eval()
    items = dm.train_items[:4]
    batch = dm.collate(items)
    with torch.no_grad():
        got = pair_logps(model, batch).logps
        got_full = pair_logps(model, batch, chunked=False).logps
        want = []
        for key in ("chosen", "rejected"):
            for it in items:
                ids = torch.tensor([it["prompt"] + it[key]])
                labels = torch.tensor([[IGNORE_INDEX] * len(it["prompt"]) + it[key]])
                want.append(completion_logps(model(input_ids=ids).logits, labels)[0])
    torch.testing.assert_close(got, torch.stack(want), atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(got_full, got, atol=1e-4, rtol=1e-5)


def test_step0_policy_equals_reference(ckpt, tok, dm):
    module, _ = make_module(ckpt, tok, dm, mode="live")
    module.prepare_reference(dm)
    loss, m = module.compute(dm.collate(dm.train_items[:4]), "train")
    assert loss.item() == pytest.approx(math.log(2), abs=1e-5)
    for key in ("rewards/chosen", "rewards/rejected", "rewards/margins", "kl"):
        assert m[key].item() == pytest.approx(0.0, abs=1e-5), key
    assert m["rewards/accuracies"].item() == 0.0  # strict >: ties count as wrong, as in TRL
    assert m["logps/chosen"].item() < 0 and m["logps/rejected"].item() < 0
    assert set(m) >= {"logits/chosen", "logits/rejected", "loss"} and "nll_loss" not in m


def test_metrics_follow_trl_definitions(ckpt, tok, dm):
    module, _ = make_module(ckpt, tok, dm, mode="live", beta=0.5)
    module.prepare_reference(dm)
    batch = dm.collate(dm.train_items[:4])
    with torch.no_grad():  # move the policy away from the reference
        module.model.get_output_embeddings().weight.mul_(1.5)
    loss, m = module.compute(batch, "train")
    with torch.no_grad():
        pol = pair_logps(module.model, batch).logps
        ref = pair_logps(module.reference.model.model, batch).logps
    cr, rr = 0.5 * (pol[:4] - ref[:4]), 0.5 * (pol[4:] - ref[4:])
    assert m["rewards/chosen"].item() == pytest.approx(cr.mean().item(), rel=1e-5)
    assert m["rewards/rejected"].item() == pytest.approx(rr.mean().item(), rel=1e-5)
    assert m["rewards/margins"].item() == pytest.approx((cr - rr).mean().item(), rel=1e-5)
    assert m["rewards/accuracies"].item() == pytest.approx((cr > rr).float().mean().item())
    assert m["logps/chosen"].item() == pytest.approx(pol[:4].mean().item(), rel=1e-5)
    assert m["kl"].item() == pytest.approx((pol[:4] - ref[:4]).mean().item(), rel=1e-5)
    want = -torch.nn.functional.logsigmoid(0.5 * ((pol[:4] - ref[:4]) - (pol[4:] - ref[4:]))).mean()
    assert loss.item() == pytest.approx(want.item(), rel=1e-5)


def test_rpo_adds_alpha_times_length_normalised_chosen_nll(ckpt, tok, dm):
    module, _ = make_module(ckpt, tok, dm, mode="live", rpo_alpha=0.5)
    module.prepare_reference(dm)
    batch = dm.collate(dm.train_items[:4])
    loss, m = module.compute(batch, "train")
    out = pair_logps(module.model, batch)
    nll = (-out.logps[:4] / out.token_counts[:4]).mean()
    assert m["nll_loss"].item() == pytest.approx(nll.item(), rel=1e-5)
    assert loss.item() == pytest.approx(math.log(2) + 0.5 * nll.item(), rel=1e-5)


def test_ipo_feeds_length_averaged_logps(ckpt, tok, dm):
    module, _ = make_module(ckpt, tok, dm, mode="live", loss_type="ipo", beta=0.1)
    module.prepare_reference(dm)
    batch = dm.collate(dm.train_items[:4])
    loss, m = module.compute(batch, "train")
    out = pair_logps(module.model, batch)
    assert m["logps/chosen"].item() == pytest.approx((out.logps[:4] / out.token_counts[:4]).mean().item(), rel=1e-5)
    assert loss.item() == pytest.approx((1 / (2 * 0.1)) ** 2, rel=1e-5)  # h = 0 at step 0: (0 - 5)^2


def test_reference_stays_bit_identical_and_outside_the_optimizer(ckpt, tok, dm):
    module, loads = make_module(ckpt, tok, dm, mode="live", lr=1e-2)
    before_policy = {k: v.clone() for k, v in module.model.state_dict().items()}
    trainer(3).fit(module, datamodule=dm)
    ref = module.reference.model.model
    after_ref = ref.state_dict()
    from zephyr.models.mistral import build_model

    fresh = build_model(str(ckpt)).state_dict()
    assert all(torch.equal(after_ref[k], fresh[k]) for k in fresh), "the reference changed"
    assert not ref.training and not any(p.requires_grad for p in ref.parameters())
    assert any(not torch.equal(v, before_policy[k]) for k, v in module.model.state_dict().items())
    assert not any(k.startswith("reference") for k in module.state_dict())  # not saved in checkpoints
    opt_params = {id(p) for g in module.trainer.optimizers[0].param_groups for p in g["params"]}
    assert not opt_params & {id(p) for p in ref.parameters()}
    assert loads[0] == 1 and module.reference_forwards == 3


def test_non_finite_loss_names_the_step(ckpt, tok, dm):
    module, _ = make_module(ckpt, tok, dm, mode="live")
    module.prepare_reference(dm)
    with torch.no_grad():
        module.model.get_output_embeddings().weight[0, 0] = float("nan")
    with pytest.raises(NonFiniteLossError, match=r"train/logps is not finite at global step 0"):
        module.compute(dm.collate(dm.train_items[:2]), "train")


def test_bad_options_are_named(ckpt, tok, dm):
    with pytest.raises(ValueError, match="objective.loss_type='dpo'"):
        make_module(ckpt, tok, dm, loss_type="dpo")
    with pytest.raises(ValueError, match=r"objective.reference.mode='lazy'"):
        _bad_mode(ckpt)


def _bad_mode(ckpt):
    from functools import partial

    from zephyr.models.mistral import build_model
    from zephyr.modules.dpo import DPOModule
    from zephyr.modules.reference import Reference

    DPOModule(build_model(str(ckpt)), partial(torch.optim.AdamW, lr=1e-3), reference=partial(Reference, mode="lazy"))
