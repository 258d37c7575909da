"""DPO-family losses with hand-worked numbers (torchtune style), rewards, metrics and the RPO NLL term.

Shared inputs: ref_chosen = ref_rejected = -10 for every pair; policy_chosen = [-10, -5, 0] and
policy_rejected = [-10, -15, -20]. So ρ_w = [0, 5, 10], ρ_l = [0, -5, -10], and h = ρ_w − ρ_l = [0, 10, 20].
With β = 0.1, βh = x = [0, 1, 2]; chosen rewards βρ_w = [0, 0.5, 1], rejected βρ_l = [0, -0.5, -1].
With softplus s(x) = log(1 + e^-x) = −log σ(x): s(0) = log 2 = 0.693147, s(1) = 0.313262, s(2) = 0.126928.
"""

import math

import pytest
import torch
from torch.testing import assert_close

from zephyr.objectives.dpo import PreferenceLoss, preference_loss, preference_metrics, rpo_nll

pytestmark = pytest.mark.unit


def s(x):
    return math.log1p(math.exp(-x))


@pytest.fixture
def logps():
    return (
        torch.tensor([-10.0, -5.0, 0.0]),
        torch.tensor([-10.0, -15.0, -20.0]),
        torch.tensor([-10.0, -10.0, -10.0]),
        torch.tensor([-10.0, -10.0, -10.0]),
    )


def test_sigmoid_hand_worked(logps):
    """DPO: −log σ(βh) = s(x) = [0.693147, 0.313262, 0.126928]."""
    out = preference_loss(*logps, beta=0.1)
    assert isinstance(out, PreferenceLoss)
    losses, chosen_rewards, rejected_rewards = out  # unpacks like a 3-tuple
    assert_close(losses, torch.tensor([s(0), s(1), s(2)]))
    assert_close(losses, torch.tensor([0.693147, 0.313262, 0.126928]), atol=1e-6, rtol=0)
    assert_close(chosen_rewards, torch.tensor([0.0, 0.5, 1.0]))
    assert_close(rejected_rewards, torch.tensor([0.0, -0.5, -1.0]))


def test_cdpo_label_smoothing_hand_worked(logps):
    """cDPO ε=0.1: 0.9 s(x) + 0.1 s(−x) and s(−x) = x + s(x), so loss = s(x) + 0.1x = [0.693147, 0.413262, 0.326928]."""
    losses = preference_loss(*logps, beta=0.1, label_smoothing=0.1).losses
    assert_close(losses, torch.tensor([s(0), s(1) + 0.1, s(2) + 0.2]))


def test_robust_hand_worked(logps):
    """rDPO ε=0.1: (0.9 s(x) − 0.1 s(−x)) / 0.8 = (0.8 s(x) − 0.1x)/0.8 = s(x) − x/8.

    That is [0.693147, 0.188262, −0.123072]: rDPO can go negative, it is an unbiased correction, not a bound.
    """
    losses = preference_loss(*logps, beta=0.1, loss_type="robust", label_smoothing=0.1).losses
    assert_close(losses, torch.tensor([s(0), s(1) - 0.125, s(2) - 0.25]))
    # ε = 0 is plain DPO
    assert_close(preference_loss(*logps, beta=0.1, loss_type="robust").losses, preference_loss(*logps, beta=0.1).losses)


def test_hinge_hand_worked(logps):
    """Hinge: max(0, 1 − βh). β=0.1: [1, 0, 0]; β=0.05: βh = [0, 0.5, 1] → [1, 0.5, 0]."""
    assert_close(preference_loss(*logps, beta=0.1, loss_type="hinge").losses, torch.tensor([1.0, 0.0, 0.0]))
    assert_close(preference_loss(*logps, beta=0.05, loss_type="hinge").losses, torch.tensor([1.0, 0.5, 0.0]))


def test_ipo_hand_worked(logps):
    """IPO: (h − 1/(2β))², β=0.1 → target 5: [(0−5)², (10−5)², (20−5)²] = [25, 25, 225]."""
    out = preference_loss(*logps, beta=0.1, loss_type="ipo")
    assert_close(out.losses, torch.tensor([25.0, 25.0, 225.0]))
    assert_close(out.chosen_rewards, torch.tensor([0.0, 0.5, 1.0]))


def test_policy_equals_reference_gives_log2_and_zero_metrics():
    policy = torch.tensor([-12.5, -3.0, -40.0, -7.25])
    other = torch.tensor([-11.0, -9.0, -38.0, -7.0])
    out = preference_loss(policy, other, policy.clone(), other.clone(), beta=0.1)
    assert_close(out.losses, torch.full((4,), math.log(2)))
    metrics = preference_metrics(out.chosen_rewards, out.rejected_rewards, policy, other, ref_chosen_logps=policy)
    assert metrics["rewards/accuracies"].item() == 0.0  # strict >: ties count as wrong
    for key in ("rewards/chosen", "rewards/rejected", "rewards/margins", "kl"):
        assert metrics[key].item() == 0.0


def test_tiny_beta_is_log2_to_first_order(logps):
    """For β→0, −log σ(βh) ≈ log 2 − βh/2: with β=1e-6 the losses are log 2 − [0, 5e-6, 1e-5]."""
    losses = preference_loss(*logps, beta=1e-6).losses.double()
    assert_close(losses, math.log(2) - torch.tensor([0.0, 5e-6, 1e-5], dtype=torch.float64), atol=1e-7, rtol=0)


def test_gradients_sigmoid(logps):
    """∂/∂policy_chosen of −log σ(βh) = −β σ(−βh) = −0.1·[0.5, σ(−1), σ(−2)]; rejected gets the opposite sign;
    the reference gets none when it does not require grad, and rewards carry no graph."""
    pc, pr, rc, rr = (t.clone().requires_grad_(i < 2) for i, t in enumerate(logps))
    out = preference_loss(pc, pr, rc, rr, beta=0.1)
    out.losses.sum().backward()
    sig = torch.sigmoid(-torch.tensor([0.0, 1.0, 2.0]))
    assert_close(pc.grad, -0.1 * sig)
    assert_close(pr.grad, 0.1 * sig)
    assert not out.chosen_rewards.requires_grad and not out.rejected_rewards.requires_grad


def test_gradients_ipo(logps):
    """∂/∂policy_chosen of (h − 5)² = 2(h − 5) = [−10, 10, 30]."""
    pc = logps[0].clone().requires_grad_(True)
    preference_loss(pc, *logps[1:], beta=0.1, loss_type="ipo").losses.sum().backward()
    assert_close(pc.grad, torch.tensor([-10.0, 10.0, 30.0]))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"beta": 0.0}, "beta must be > 0"),
        ({"beta": -1.0}, "beta must be > 0"),
        (
            {"beta": 0.1, "loss_type": "kto"},
            "unknown loss_type 'kto'; valid: sigmoid, hinge, ipo, exo_pair, .*, sft, sigmoid_norm$",
        ),
        ({"beta": 0.1, "label_smoothing": 0.6}, r"\[0, 0.5\]"),
        ({"beta": 0.1, "label_smoothing": -0.1}, r"\[0, 0.5\]"),
        ({"beta": 0.1, "loss_type": "robust", "label_smoothing": 0.5}, r"\[0, 0.5\)"),
        ({"beta": 0.1, "loss_type": "ipo", "label_smoothing": 0.1}, "not defined for loss_type 'ipo'"),
    ],
)
def test_argument_validation(logps, kwargs, message):
    with pytest.raises(ValueError, match=message):
        preference_loss(*logps, **kwargs)


def test_shape_mismatch_names_shapes(logps):
    with pytest.raises(ValueError, match=r"policy_rejected_logps \(2,\).*ref_chosen_logps \(3,\)"):
        preference_loss(logps[0], logps[1][:2], logps[2], logps[3], beta=0.1)
    with pytest.raises(ValueError, match=r"\(3, 1\)"):
        preference_loss(*(t.unsqueeze(1) for t in logps), beta=0.1)


def test_metrics_hand_worked(logps):
    """From the shared inputs: rewards/chosen = mean[0, .5, 1] = .5, rejected = −.5, margins = 1,
    accuracies = 2/3 (the tie at pair 0 is not counted), logps/chosen = −5, logps/rejected = −15, kl = 5."""
    out = preference_loss(*logps, beta=0.1)
    m = preference_metrics(
        out.chosen_rewards,
        out.rejected_rewards,
        logps[0],
        logps[1],
        chosen_logits_mean=torch.tensor(1.5),
        rejected_logits_mean=torch.tensor(-0.5),
        ref_chosen_logps=logps[2],
    )
    expected = {
        "rewards/chosen": 0.5,
        "rewards/rejected": -0.5,
        "rewards/accuracies": 2 / 3,
        "rewards/margins": 1.0,
        "logps/chosen": -5.0,
        "logps/rejected": -15.0,
        "logits/chosen": 1.5,
        "logits/rejected": -0.5,
        "kl": 5.0,
    }
    assert set(m) == set(expected)
    for key, value in expected.items():
        assert_close(m[key], torch.tensor(value), msg=key)
        assert m[key].dim() == 0 and not m[key].requires_grad


def test_metrics_without_optional_inputs(logps):
    out = preference_loss(*logps, beta=0.1)
    m = preference_metrics(out.chosen_rewards, out.rejected_rewards, logps[0].requires_grad_(True), logps[1])
    assert set(m) == {
        "rewards/chosen",
        "rewards/rejected",
        "rewards/accuracies",
        "rewards/margins",
        "logps/chosen",
        "logps/rejected",
    }
    assert not m["logps/chosen"].requires_grad


def test_rpo_nll_sequence_and_token_means():
    """logps [-6, -2, 0] over [3, 1, 0] tokens. Per sequence: mean(6/3, 2/1) = 2 (the empty row is left out).
    Token mean (TRL): (6 + 2) / (3 + 1) = 2 as well; use [-6, -4] over [3, 1]: sequence mean (2 + 4)/2 = 3,
    token mean 10/4 = 2.5."""
    assert_close(rpo_nll(torch.tensor([-6.0, -2.0, 0.0]), torch.tensor([3, 1, 0])), torch.tensor(2.0))
    lp = torch.tensor([-6.0, -4.0], requires_grad=True)
    counts = torch.tensor([3, 1])
    assert_close(rpo_nll(lp, counts), torch.tensor(3.0))
    assert_close(rpo_nll(lp, counts, token_mean=True), torch.tensor(2.5))
    rpo_nll(lp, counts).backward()
    assert_close(lp.grad, torch.tensor([-1 / 6, -1 / 2]))
    assert rpo_nll(torch.zeros(2), torch.zeros(2, dtype=torch.long)).item() == 0.0
    with pytest.raises(ValueError, match=r"\(2,\).*\(3,\)"):
        rpo_nll(lp, torch.tensor([1, 2, 3]))
