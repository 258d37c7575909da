"""DPO module: loss lists with weights, rpo_alpha as the sft term, reference-free objectives, token metrics."""

from __future__ import annotations

import math

import pytest
import pytorch_lightning as pl
import torch
from omegaconf import OmegaConf

from tests.unit.dpo.helpers_dpo import export_tiny, make_datamodule, make_module, pref_rows, write_jsonl
from zephyr.errors import ConfigError
from zephyr.modules.pair_forward import pair_logps
from zephyr.objectives.logprobs import token_logps_from_hidden


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


def test_token_stats_hand_values():
    # one row, V = 2, identity head: position 0 logits (0, 0) -> label 1 (tie: argmax 0, miss), entropy log 2;
    # position 1 logits (2, 0) -> label 0 (hit), entropy of softmax(2, 0)
    hidden = torch.tensor([[[0.0, 0.0], [2.0, 0.0], [0.0, 0.0]]])
    labels = torch.tensor([[-100, 1, 0]])
    out = token_logps_from_hidden(hidden, torch.eye(2), labels, stats=True)
    p = torch.softmax(torch.tensor([2.0, 0.0]), 0)
    want_entropy = math.log(2) - float((p * p.log()).sum())
    assert float(out.stats.entropy_sum[0]) == pytest.approx(want_entropy, rel=1e-5)
    assert float(out.stats.top1_count[0]) == 1.0
    from zephyr.modules.base import token_metrics

    m = token_metrics(out.stats, out.token_counts)
    assert m["entropy"][0].item() == pytest.approx(want_entropy / 2, rel=1e-5) and m["entropy"][1] == 2
    assert m["mean_token_accuracy"][0].item() == pytest.approx(0.5)
    assert float(out.stats.log_sum_sq[0, 1]) == pytest.approx(math.log(float((p**2).sum())), rel=1e-5)


def test_loss_list_is_the_weighted_sum_of_single_terms(ckpt, tok, dm):
    batch = dm.collate(dm.train_items[:4])
    single = {}
    for name in ("sigmoid", "bco_pair", "ipo"):
        module, _ = make_module(ckpt, tok, dm, mode="live", loss_type=name, beta=0.5)
        module.prepare_reference(dm)
        with torch.no_grad():
            module.model.get_output_embeddings().weight.mul_(1.5)  # move the policy off the reference
        single[name] = module.compute(batch, "train")[0].item()
    module, _ = make_module(
        ckpt, tok, dm, mode="live", loss_type=["sigmoid", "bco_pair", "ipo"], loss_weights=[1.0, 0.5, 2.0], beta=0.5
    )
    module.prepare_reference(dm)
    with torch.no_grad():
        module.model.get_output_embeddings().weight.mul_(1.5)
    loss, m = module.compute(batch, "train")
    want = single["sigmoid"] + 0.5 * single["bco_pair"] + 2.0 * single["ipo"]
    assert loss.item() == pytest.approx(want, rel=1e-5)
    assert m["loss/bco_pair"].item() == pytest.approx(single["bco_pair"], rel=1e-5)
    assert 0 < m["entropy"].item() < math.log(32000) and 0 <= m["mean_token_accuracy"].item() <= 1


def test_rpo_alpha_is_the_sft_term_and_bad_lists_are_named(ckpt, tok, dm):
    module, _ = make_module(ckpt, tok, dm, mode="live", rpo_alpha=0.5)
    assert module.names == ("sigmoid", "sft") and module.weights == (1.0, 0.5)
    with pytest.raises(ValueError, match=r"objective.loss_type='nope' is not a paired loss; known: sigmoid, hinge"):
        make_module(ckpt, tok, dm, loss_type=["sigmoid", "nope"])
    with pytest.raises(ValueError, match="objective.loss_weights has 1 entries but loss_type has 2"):
        make_module(ckpt, tok, dm, loss_type=["sigmoid", "sft"], loss_weights=[1.0])


def test_use_weighting_scales_each_pair_by_wpo_weights(ckpt, tok, dm):
    batch = dm.collate(dm.train_items[:4])
    module, _ = make_module(ckpt, tok, dm, mode="live", use_weighting=True)
    module.prepare_reference(dm)
    loss, _ = module.compute(batch, "train")
    out = pair_logps(module.model, batch, stats=True)
    st = out.stats
    w = torch.exp(((st.token_logps - st.log_sum_sq) * st.mask).sum(-1) / out.token_counts)
    assert loss.item() == pytest.approx((math.log(2) * w[:4] * w[4:]).mean().item(), rel=1e-5)


@pytest.mark.parametrize("objective", ["simpo", "orpo", "cpo"])
def test_reference_free_trains_without_any_reference(tok, dm, objective):
    from hydra.utils import instantiate

    from tests.conftest import TINY_CONFIG
    from zephyr.models.mistral import build_model

    cfg = OmegaConf.load(f"conf/objective/{objective}.yaml")
    cfg.pop("defaults")
    module = instantiate(cfg, model=build_model(config=TINY_CONFIG, init_seed=0), _convert_="all")
    assert module.reference is None
    batch = dm.collate(dm.train_items[:4])
    loss, m = module.compute(batch, "train")
    out = pair_logps(module.model, batch)
    avg = out.logps / out.token_counts
    if objective == "simpo":  # SimPO at a random init: -log sigma(beta (a_w - a_l) - gamma)
        want = -torch.nn.functional.logsigmoid(2.0 * (avg[:4] - avg[4:]) - 1.0).mean()
    elif objective == "cpo":
        want = -torch.nn.functional.logsigmoid(0.1 * (out.logps[:4] - out.logps[4:])).mean()
        want = want - out.logps[:4].sum() / out.token_counts[:4].sum()
    else:
        want = m["loss/orpo"] - out.logps[:4].sum() / out.token_counts[:4].sum()
    assert loss.item() == pytest.approx(want.item(), rel=1e-5)
    pl.Trainer(
        max_steps=2,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        accelerator="cpu",
        limit_val_batches=0,
        enable_model_summary=False,
    ).fit(module, datamodule=dm)
    assert module.reference_forwards == 0 and module.num_tokens_seen > 0


def test_run_refuses_bad_objective_options_before_any_model(tmp_path):
    from zephyr.run import check_objective_options

    dpo = OmegaConf.load("conf/objective/dpo.yaml")
    cases = [
        ({"loss_type": ["sigmoid", "dpo"]}, r"objective.loss_type='dpo' is not a paired loss; known: sigmoid"),
        ({"loss_type": ["sigmoid", "sft"], "loss_weights": [1, 2, 3]}, "loss_weights has 3 entries"),
    ]
    for extra, msg in cases:
        with pytest.raises(ConfigError, match=msg):
            check_objective_options(OmegaConf.create({"objective": OmegaConf.merge(dpo, extra)}))
    simpo = OmegaConf.load("conf/objective/simpo.yaml")
    simpo.reference = {"mode": "live"}
    with pytest.raises(ConfigError, match="objective=simpo is reference-free: remove the objective.reference"):
        check_objective_options(OmegaConf.create({"objective": simpo}))
