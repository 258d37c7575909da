"""Weighted loss lists (the total equals the weighted sum of single-loss calls) and the WPO / LD-DPO helpers."""

import math

import pytest
import torch
from torch.testing import assert_close

from zephyr.objectives import (
    combined_preference_loss,
    ld_dpo_logps,
    log_sum_sq_probs,
    normalize_loss_list,
    preference_loss,
    rpo_nll,
    wpo_sequence_weights,
)

pytestmark = pytest.mark.unit


def t(values):
    return torch.tensor(values, dtype=torch.float64)


@pytest.fixture
def summed():
    """Summed logps of 3 pairs with their token counts."""
    return {
        "logps": (t([-10.0, -5.0, -2.0]), t([-12.0, -15.0, -20.0]), t([-11.0, -6.0, -3.0]), t([-11.0, -14.0, -18.0])),
        "counts": {"chosen_token_counts": torch.tensor([4, 2, 1]), "rejected_token_counts": torch.tensor([5, 6, 8])},
    }


def test_mpo_list_equals_weighted_sum_of_single_calls(summed):
    """MPO-style [sigmoid, bco_pair, sft] with weights [0.8, 0.2, 1.0]: total = Σ w_k mean(loss_k), per term and in
    its gradient; sft is TRL's pooled token mean (17/7 here)."""
    pc = summed["logps"][0].clone().requires_grad_(True)
    logps = (pc, *summed["logps"][1:])
    names, weights = ["sigmoid", "bco_pair", "sft"], [0.8, 0.2, 1.0]
    out = combined_preference_loss(*logps, beta=0.1, loss_type=names, loss_weights=weights, **summed["counts"])
    singles = {n: preference_loss(*logps, beta=0.1, loss_type=n, **summed["counts"]).losses.mean() for n in names}
    assert list(out.terms) == names
    for n in names:
        assert_close(out.terms[n], singles[n])
    assert_close(out.loss, sum(w * singles[n] for n, w in zip(names, weights)))
    assert out.terms["sft"].item() == pytest.approx(17 / 7)
    grad_total = torch.autograd.grad(out.loss, pc, retain_graph=True)[0]
    grad_singles = torch.autograd.grad(sum(w * singles[n] for n, w in zip(names, weights)), pc)[0]
    assert_close(grad_total, grad_singles)
    assert_close(out.chosen_rewards, 0.1 * t([1.0, 1.0, 1.0]))
    assert not out.chosen_rewards.requires_grad


def test_rpo_alpha_is_the_sft_term(summed):
    """rpo_alpha = 0.5 ≡ [sigmoid, sft] with weights [1, 0.5]: mean DPO loss + 0.5 × TRL's token-mean NLL."""
    logps = summed["logps"]
    out = combined_preference_loss(
        *logps, beta=0.1, loss_type=["sigmoid", "sft"], loss_weights=[1.0, 0.5], **summed["counts"]
    )
    dpo = preference_loss(*logps, beta=0.1).losses.mean()
    nll = rpo_nll(logps[0], summed["counts"]["chosen_token_counts"], token_mean=True)
    assert_close(out.loss, dpo + 0.5 * nll)


def test_single_name_and_label_smoothing_routing(summed):
    """One name is a one-term list with weight 1; ε goes only to the terms that define it (robust here, not
    hinge); an ε that no term uses is refused."""
    logps = summed["logps"]
    one = combined_preference_loss(*logps, beta=0.1, loss_type="hinge")
    assert_close(one.loss, preference_loss(*logps, beta=0.1, loss_type="hinge").losses.mean())
    mixed = combined_preference_loss(*logps, beta=0.1, loss_type=["robust", "hinge"], label_smoothing=0.2)
    expected = preference_loss(*logps, beta=0.1, loss_type="robust", label_smoothing=0.2).losses.mean()
    assert_close(mixed.terms["robust"], expected)
    assert_close(mixed.loss, expected + preference_loss(*logps, beta=0.1, loss_type="hinge").losses.mean())
    with pytest.raises(ValueError, match=r"label_smoothing=0.1 is used by none of \['hinge', 'ipo'\]"):
        combined_preference_loss(*logps, beta=0.1, loss_type=["hinge", "ipo"], label_smoothing=0.1, **summed["counts"])


def test_mixed_list_without_counts_is_refused(summed):
    with pytest.raises(ValueError, match=r"mixes summed and length-normalised terms \(ipo\): pass summed log-probs"):
        combined_preference_loss(*summed["logps"], beta=0.1, loss_type=["sigmoid", "ipo"])


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((["sigmoid", "orpo"], None), "unknown loss_type 'orpo'; valid: sigmoid, hinge"),
        ((["sigmoid", "sft"], [1.0]), r"loss_weights has 1 entries but loss_type has 2: \['sigmoid', 'sft'\]"),
        (([], None), "empty list"),
        ((["sft", "sigmoid", "sft"], None), "loss_type lists sft more than once"),
    ],
)
def test_normalize_loss_list_errors(args, message):
    with pytest.raises(ValueError, match=message):
        normalize_loss_list(*args)


def test_normalize_loss_list_defaults():
    assert normalize_loss_list("ipo") == (("ipo",), (1.0,))
    assert normalize_loss_list(["sigmoid", "sft"], [1, 0.5]) == (("sigmoid", "sft"), (1.0, 0.5))


def test_log_sum_sq_probs_hand_worked():
    """logits [0, log 3] → p = [1/4, 3/4], Σp² = 10/16; uniform over 4 → Σp² = 1/4."""
    out = log_sum_sq_probs(torch.tensor([[0.0, math.log(3)], [1.0, 1.0]]))
    assert_close(out, torch.tensor([math.log(0.625), math.log(0.5)]))
    assert_close(log_sum_sq_probs(torch.zeros(1, 3, 4)), torch.full((1, 3), math.log(0.25)))


def test_wpo_sequence_weights_hand_worked():
    """Row 0: tokens (log p, log Σp²) = (−1, −0.5), (−2, −0.5), third masked → exp(((−0.5) + (−1.5))/2) = e^−1.
    Row 1: no counted token → weight 1. Detached."""
    logps = torch.tensor([[-1.0, -2.0, -9.0], [-3.0, -3.0, -3.0]], requires_grad=True)
    lssp = torch.full((2, 3), -0.5)
    mask = torch.tensor([[1, 1, 0], [0, 0, 0]])
    w = wpo_sequence_weights(logps, lssp, mask)
    assert_close(w, torch.tensor([math.exp(-1), 1.0]))
    assert not w.requires_grad
    with pytest.raises(ValueError, match=r"\(2, 3\) and \(2, 2\)"):
        wpo_sequence_weights(logps, lssp, mask[:, :2])


def test_ld_dpo_logps_hand_worked_and_gradient():
    """Chosen tokens [−1, −2, −3] (3 counted), rejected [pad, −1, −1] (2 counted, left pad). Shared length 2:
    chosen = −1 − 2 + α(−3), rejected = −2 (no tail). α = 0.5 → −4.5; α = 1 → plain sums; α = 0 → −3.
    ∂chosen/∂tokens = [1, 1, α]."""
    chosen = torch.tensor([[-1.0, -2.0, -3.0]], requires_grad=True)
    rejected = torch.tensor([[-7.0, -1.0, -1.0]])
    cm, rm = torch.tensor([[1, 1, 1]]), torch.tensor([[0, 1, 1]])
    c, r = ld_dpo_logps(chosen, cm, rejected, rm, alpha=0.5)
    assert_close(c, torch.tensor([-4.5]))
    assert_close(r, torch.tensor([-2.0]))
    c.sum().backward()
    assert_close(chosen.grad, torch.tensor([[1.0, 1.0, 0.5]]))
    assert_close(ld_dpo_logps(chosen, cm, rejected, rm, alpha=1.0)[0], torch.tensor([-6.0]))
    assert_close(ld_dpo_logps(chosen, cm, rejected, rm, alpha=0.0)[0], torch.tensor([-3.0]))
    with pytest.raises(ValueError, match=r"ld_alpha must be in \[0, 1\], got 1.5"):
        ld_dpo_logps(chosen, cm, rejected, rm, alpha=1.5)
