"""Parity with the installed TRL 1.16: its own loss code, called on fixed log-probs, against zephyr's functions.

``DPOTrainer._compute_loss`` is run with a stand-in ``self`` and a stand-in model that returns given per-token
log-probs (TRL's fused-head output), with ``precompute_ref_log_probs`` on so the reference log-probs are inputs:
no model, tokenizer or dataset is built. ORPO's ``odds_ratio_loss`` and CPO's ``cpo_loss`` are called unbound the
same way. The import of TRL costs a few seconds, once per module.
"""

import os
import warnings
from collections import defaultdict
from types import SimpleNamespace

import pytest
import torch
from torch.testing import assert_close

from zephyr.objectives import (
    LOSS_TYPES,
    combined_preference_loss,
    cpo_loss,
    kto_loss,
    ld_dpo_logps,
    orpo_loss,
    simpo_loss,
    wpo_sequence_weights,
)

pytestmark = pytest.mark.unit

B, T = 4, 7


@pytest.fixture(scope="module")
def trl_classes():
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dpo = pytest.importorskip("trl.trainer.dpo_trainer")
        orpo = pytest.importorskip("trl.experimental.orpo.orpo_trainer")
        cpo = pytest.importorskip("trl.experimental.cpo.cpo_trainer")
        kto = pytest.importorskip("trl.trainer.kto_trainer")
    return dpo.DPOTrainer, orpo.ORPOTrainer, cpo.CPOTrainer, kto.KTOTrainer


@pytest.fixture(scope="module")
def batch():
    """2B rows [chosen; rejected] of length T; position 0 is prompt, completions of 1..T-1 tokens."""
    g = torch.Generator().manual_seed(0)
    lengths = torch.tensor([3, 6, 2, 5, 4, 1, 6, 3])  # chosen rows, then rejected rows
    completion_mask = torch.zeros(2 * B, T, dtype=torch.long)
    for i, n in enumerate(lengths.tolist()):
        completion_mask[i, T - n :] = 1
    shift_mask = completion_mask[:, 1:]
    per_token = -torch.rand(2 * B, T - 1, generator=g, dtype=torch.float32) * 3 * shift_mask
    lssp = -torch.rand(2 * B, T - 1, generator=g) * 2
    ref = -torch.rand(2 * B, generator=g) * 3 * lengths
    return {"completion_mask": completion_mask, "per_token": per_token, "lssp": lssp, "ref": ref}


def _trl_loss(trl_classes, batch, *, loss_types, loss_weights=None, beta=0.1, **args):
    dpo_trainer = trl_classes[0]
    outputs = SimpleNamespace(
        log_probs=batch["per_token"],
        entropy=torch.zeros_like(batch["per_token"]),
        mean_logits=torch.zeros_like(batch["per_token"]),
        is_top1=torch.zeros_like(batch["per_token"], dtype=torch.bool),
        log_sum_sq_probs=batch["lssp"],
        aux_loss=None,
    )
    accelerator = SimpleNamespace(device=torch.device("cpu"), gather_for_metrics=lambda x: x, gather=lambda x: x)
    fake_self = SimpleNamespace(
        model=SimpleNamespace(training=True),
        accelerator=accelerator,
        aux_loss_enabled=False,
        precompute_ref_logps=True,
        ld_alpha=args.get("ld_alpha"),
        f_divergence_type=args.get("f_divergence_type", "reverse_kl"),
        f_alpha_divergence_coef=args.get("f_alpha_divergence_coef", 0.5),
        loss_types=loss_types,
        loss_weights=loss_weights or [1.0] * len(loss_types),
        beta=beta,
        label_smoothing=args.get("label_smoothing", 0.0),
        use_weighting=args.get("use_weighting", False),
        args=SimpleNamespace(discopop_tau=args.get("discopop_tau", 0.05), gradient_checkpointing_kwargs=None),
        _metrics={"train": defaultdict(list), "eval": defaultdict(list)},
        _total_train_tokens=0,
        _tp_size=1,
    )
    inputs = {
        "input_ids": torch.ones(2 * B, T, dtype=torch.long),
        "attention_mask": torch.ones(2 * B, T, dtype=torch.long),
        "completion_mask": batch["completion_mask"],
        "ref_chosen_logps": batch["ref"][:B],
        "ref_rejected_logps": batch["ref"][B:],
    }
    return dpo_trainer._compute_loss(fake_self, lambda **_: outputs, inputs, return_outputs=False)


def _zephyr_loss(batch, *, loss_types, loss_weights=None, beta=0.1, **args):
    shift_mask = batch["completion_mask"][:, 1:]
    counts = shift_mask.sum(1)
    if args.get("ld_alpha") is not None:
        pc, pr = ld_dpo_logps(
            batch["per_token"][:B], shift_mask[:B], batch["per_token"][B:], shift_mask[B:], alpha=args["ld_alpha"]
        )
    else:
        pc, pr = batch["per_token"][:B].sum(1), batch["per_token"][B:].sum(1)
    options = {k: args[k] for k in ("f_divergence_type", "f_alpha_divergence_coef", "discopop_tau") if k in args}
    if args.get("use_weighting"):
        w = wpo_sequence_weights(batch["per_token"], batch["lssp"], shift_mask)
        options["pair_weights"] = w[:B] * w[B:]
    return combined_preference_loss(
        pc,
        pr,
        batch["ref"][:B],
        batch["ref"][B:],
        beta=beta,
        loss_type=loss_types,
        loss_weights=loss_weights,
        label_smoothing=args.get("label_smoothing", 0.0),
        chosen_token_counts=counts[:B],
        rejected_token_counts=counts[B:],
        **options,
    ).loss


@pytest.mark.parametrize("loss_type", LOSS_TYPES)
@pytest.mark.parametrize("beta", [0.1, 0.7])
def test_every_paired_loss_matches_trl(trl_classes, batch, loss_type, beta):
    args = {"label_smoothing": 1e-3} if loss_type == "exo_pair" else {}
    trl = _trl_loss(trl_classes, batch, loss_types=[loss_type], beta=beta, **args)
    assert_close(_zephyr_loss(batch, loss_types=[loss_type], beta=beta, **args), trl)


@pytest.mark.parametrize(
    "args",
    [
        {"loss_types": ["robust"], "label_smoothing": 0.2},
        {"loss_types": ["aot", "aot_unpaired"], "label_smoothing": 0.3},
        {"loss_types": ["discopop"], "discopop_tau": 0.5},
        {"loss_types": ["sigmoid", "bco_pair", "sft"], "loss_weights": [0.8, 0.2, 1.0]},
        {"loss_types": ["ipo", "sigmoid_norm", "hinge", "exo_pair"], "label_smoothing": 0.01},
        {"loss_types": ["sigmoid", "ipo", "sigmoid_norm", "sft"], "f_divergence_type": "forward_kl", "beta": 0.05},
        {"loss_types": ["sigmoid", "robust", "discopop", "hinge"], "f_divergence_type": "js_divergence"},
        {"loss_types": ["sigmoid", "ipo"], "f_divergence_type": "alpha_divergence", "f_alpha_divergence_coef": 0.3},
        # WPO with "sft" in the list crashes in TRL 1.16 itself (in-place product on sft's expanded scalar).
        {"loss_types": ["sigmoid", "apo_zero", "nca_pair"], "use_weighting": True},
        {"loss_types": ["sigmoid", "sppo_hard"], "ld_alpha": 0.4},
        {"loss_types": ["apo_down", "bco_pair"], "ld_alpha": 0.0, "use_weighting": True},
    ],
)
def test_loss_lists_and_options_match_trl(trl_classes, batch, args):
    assert_close(_zephyr_loss(batch, **args), _trl_loss(trl_classes, batch, **args))


def _trainer_self(**fields):
    return SimpleNamespace(accelerator=SimpleNamespace(device=torch.device("cpu")), **fields)


def test_orpo_matches_trl_odds_ratio_loss(trl_classes):
    aw = torch.tensor([-0.3, -1.2, -2.5, -0.05])
    al = torch.tensor([-0.9, -0.4, -3.0, -0.05])
    trl_losses, trl_cr, trl_rr, trl_ratio, trl_log_odds = trl_classes[1].odds_ratio_loss(
        _trainer_self(beta=0.25), aw, al
    )
    out = orpo_loss(aw, al, beta=0.25)
    assert_close(out.losses, -trl_losses)  # TRL maximises beta*logsigmoid; zephyr returns the term to minimise
    assert_close(out.chosen_rewards, trl_cr)
    assert_close(out.log_odds_ratio.mean(), trl_ratio)
    assert_close(out.log_odds_chosen.mean(), trl_log_odds)


@pytest.mark.parametrize("label_smoothing", [0.0, 0.1])
def test_simpo_and_cpo_match_trl_cpo_loss(trl_classes, label_smoothing):
    cw = torch.tensor([-1.0, -2.5, -0.7])
    cl = torch.tensor([-1.5, -1.0, -0.9])
    fields = {"alpha": 0.0, "beta": 2.0, "label_smoothing": label_smoothing, "simpo_gamma": 0.6}
    trl_simpo = trl_classes[2].cpo_loss(_trainer_self(loss_type="simpo", **fields), cw, cl)
    ours = simpo_loss(cw, cl, beta=2.0, gamma=0.6, label_smoothing=label_smoothing)
    for a, b in zip(ours, trl_simpo):
        assert_close(a, b)
    trl_cpo = trl_classes[2].cpo_loss(_trainer_self(loss_type="sigmoid", **fields), cw * 10, cl * 10)
    for a, b in zip(cpo_loss(cw * 10, cl * 10, beta=2.0, label_smoothing=label_smoothing), trl_cpo):
        assert_close(a, b)


@pytest.mark.parametrize(
    ("loss_type", "weights"), [("kto", (1.0, 1.0)), ("kto", (1.3, 0.7)), ("apo_zero_unpaired", (1.0, 2.0))]
)
@pytest.mark.parametrize("kl_shift", [0.8, -0.8])  # positive and negative (clamped) KL estimates
def test_kto_matches_trl(trl_classes, loss_type, weights, kl_shift):
    """KTOTrainer._compute_loss on 5 unpaired rows (3 desirable) with precomputed reference log-probs."""
    g = torch.Generator().manual_seed(1)
    n, seq = 5, 6
    labels = torch.tensor([True, False, True, True, False])
    per_token = -torch.rand(n, seq, generator=g) * 2
    ref = per_token.sum(1) + torch.randn(n, generator=g)
    kl_policy = -torch.rand(n, generator=g) * 8
    kl_ref = kl_policy - kl_shift + 0.1 * torch.randn(n, generator=g)
    outputs = SimpleNamespace(
        log_probs=per_token, entropy=torch.zeros(n, seq), mean_logits=torch.zeros(n, seq), aux_loss=None
    )
    fake_self = SimpleNamespace(
        model=SimpleNamespace(training=True),
        accelerator=SimpleNamespace(device=torch.device("cpu"), gather_for_metrics=lambda x: x, gather=lambda x: x),
        _compute_kl_logps=lambda model, batch: kl_policy,
        calculate_KL=loss_type == "kto",
        precompute_ref_logps=True,
        aux_loss_enabled=False,
        loss_type=loss_type,
        beta=0.3,
        desirable_weight=weights[0],
        undesirable_weight=weights[1],
        _metrics={"train": defaultdict(list), "eval": defaultdict(list)},
        _total_train_tokens=0,
        _tp_size=1,
    )
    inputs = {
        "input_ids": torch.ones(n, seq + 1, dtype=torch.long),
        "attention_mask": torch.ones(n, seq + 1, dtype=torch.long),
        "completion_mask": torch.ones(n, seq + 1, dtype=torch.long),
        "label": labels,
        "ref_logps": ref,
        "ref_KL_logps": kl_ref,
    }
    trl = trl_classes[3]._compute_loss(fake_self, lambda **_: outputs, inputs, return_outputs=False)
    logps = per_token.sum(1)
    kl = {"policy_kl_logps": kl_policy, "ref_kl_logps": kl_ref} if loss_type == "kto" else {}
    out = kto_loss(
        logps[labels],
        logps[~labels],
        ref[labels],
        ref[~labels],
        beta=0.3,
        desirable_weight=weights[0],
        undesirable_weight=weights[1],
        loss_type=loss_type,
        **kl,
    )
    assert_close(out.losses.mean(), trl)
    metrics = fake_self._metrics["train"]
    assert out.kl.item() == pytest.approx(metrics["kl"][-1], abs=1e-6)
    assert out.chosen_rewards.mean().item() == pytest.approx(metrics["rewards/chosen"][-1], abs=1e-6)
    assert out.rejected_rewards.mean().item() == pytest.approx(metrics["rewards/rejected"][-1], abs=1e-6)
