"""SimPO, ORPO, CPO and KTO: hand-worked values and derivatives (plain ``math`` on chosen points)."""

import math

import pytest
import torch
from torch.testing import assert_close

from zephyr.objectives import cpo_loss, kto_loss, kto_metrics, kto_reference_point, orpo_loss, simpo_loss

pytestmark = pytest.mark.unit


def s(x):
    return math.log1p(math.exp(-x))


def sig(x):
    return 1 / (1 + math.exp(-x))


def t(values):
    return torch.tensor(values, dtype=torch.float64)


def test_simpo_hand_worked_and_gradient():
    """a_w = [−1, −2], a_l = [−2, −1], β = 2, γ = 0.5: z = β(a_w − a_l) − γ = [1.5, −2.5], loss s(z).

    ∂/∂a_w = −β σ(−z), ∂/∂a_l = +β σ(−z); rewards β·a."""
    aw = t([-1.0, -2.0]).requires_grad_(True)
    al = t([-2.0, -1.0]).requires_grad_(True)
    out = simpo_loss(aw, al, beta=2.0, gamma=0.5)
    assert_close(out.losses, t([s(1.5), s(-2.5)]))
    assert_close(out.chosen_rewards, t([-2.0, -4.0]))
    assert not out.chosen_rewards.requires_grad
    out.losses.sum().backward()
    assert_close(aw.grad, t([-2 * sig(-1.5), -2 * sig(2.5)]))
    assert_close(al.grad, -aw.grad)
    smoothed = simpo_loss(aw, al, beta=2.0, gamma=0.5, label_smoothing=0.1).losses
    assert_close(smoothed, t([0.9 * s(z) + 0.1 * s(-z) for z in (1.5, -2.5)]))


def test_orpo_hand_worked_and_gradient():
    """a_w = log 0.5 (odds 1), a_l = log 0.2 (odds 1/4): log-odds ratio L = log 4, σ(L) = 4/5,
    term −β log σ(L) = β log 1.25. ∂L/∂a_w = 1/(1 − e^{a_w}) = 2, so ∂/∂a_w = −β σ(−L)·2 = −β·0.4."""
    aw = t([math.log(0.5)]).requires_grad_(True)
    al = t([math.log(0.2)])
    out = orpo_loss(aw, al, beta=0.1)
    assert_close(out.losses, t([0.1 * math.log(1.25)]).float())
    assert_close(out.log_odds_chosen, t([math.log(4)]).float())
    assert_close(out.log_odds_ratio, t([math.log(0.8)]).float())
    assert_close(out.chosen_rewards, t([0.1 * math.log(0.5)]).float())
    assert not out.log_odds_ratio.requires_grad and not out.rejected_rewards.requires_grad
    out.losses.sum().backward()
    assert_close(aw.grad, t([-0.04]))


def test_orpo_is_stable_near_zero_and_very_negative_logps():
    """log(1 − e^a) at a = −1e−6 (p ≈ 1) and a = −50 (p ≈ 0) must stay finite."""
    out = orpo_loss(t([-1e-6, -50.0]), t([-50.0, -1e-6]), beta=1.0)
    assert torch.isfinite(out.losses).all()
    # a_w ≈ 0 gives odds → ∞: L ≈ −log(1e−6) − 50 + ... > 0, so the first loss is near 0; the second is large.
    assert out.losses[0].item() < 1e-5 and out.losses[1].item() > 10


def test_cpo_hand_worked():
    """CPO: s(β(log π_w − log π_l)); sums [−10, −30] vs [−20, −10], β = 0.1 → z = [1, −2]."""
    out = cpo_loss(t([-10.0, -30.0]), t([-20.0, -10.0]), beta=0.1)
    assert_close(out.losses, t([s(1.0), s(-2.0)]))
    assert_close(out.rejected_rewards, t([-2.0, -1.0]))


@pytest.mark.parametrize(
    ("fn", "kwargs", "message"),
    [
        (simpo_loss, {"beta": 0.0, "gamma": 0.5}, "beta must be > 0"),
        (orpo_loss, {"beta": -1.0}, "beta must be > 0"),
        (cpo_loss, {"beta": 0.1, "label_smoothing": 0.6}, r"\[0, 0.5\]"),
    ],
)
def test_reference_free_validation(fn, kwargs, message):
    with pytest.raises(ValueError, match=message):
        fn(t([-1.0]), t([-2.0]), **kwargs)


@pytest.mark.parametrize(
    "call",
    [
        lambda c, r: simpo_loss(c, r, beta=2.0, gamma=0.5),
        lambda c, r: orpo_loss(c, r, beta=0.1),
        lambda c, r: cpo_loss(c, r, beta=0.1),
    ],
)
def test_reference_free_shape_mismatch_names_shapes(call):
    with pytest.raises(ValueError, match=r"chosen \(2,\), rejected \(1,\)"):
        call(t([-1.0, -1.0]), t([-2.0]))


@pytest.fixture
def kto_batch():
    """Desirable ρ = [−3 − (−4), −5 − (−4)] = [1, −1]; undesirable ρ = −6 − (−5) = −1.
    Mismatched pairs: policy [−2, −3] vs reference [−3, −3] → z = mean[1, 0] = 0.5."""
    return {
        "policy_chosen_logps": t([-3.0, -5.0]),
        "policy_rejected_logps": t([-6.0]),
        "ref_chosen_logps": t([-4.0, -4.0]),
        "ref_rejected_logps": t([-5.0]),
        "policy_kl_logps": t([-2.0, -3.0]),
        "ref_kl_logps": t([-3.0, -3.0]),
    }


def test_kto_hand_worked_weights_and_rewards(kto_batch):
    """β = 0.1, z = 0.5: desirable 1 − σ(0.1(ρ − z)) = [1 − σ(0.05), 1 − σ(−0.15)];
    undesirable λ_U(1 − σ(0.1(z − ρ))) = 1.5(1 − σ(0.15)). TRL's loss is the mean of the three."""
    out = kto_loss(**kto_batch, beta=0.1, undesirable_weight=1.5)
    expected = [1 - sig(0.05), 1 - sig(-0.15), 1.5 * (1 - sig(0.15))]
    assert_close(out.losses, t(expected))
    assert out.kl.item() == pytest.approx(0.5) and not out.kl.requires_grad
    assert_close(out.chosen_rewards, t([0.1, -0.1]))
    assert_close(out.rejected_rewards, t([-0.1]))
    assert out.losses.mean().item() == pytest.approx(sum(expected) / 3)
    m = kto_metrics(out, kto_batch["policy_chosen_logps"], kto_batch["policy_rejected_logps"])
    assert set(m) == {"kl", "rewards/chosen", "rewards/rejected", "rewards/margins", "logps/chosen", "logps/rejected"}
    assert m["rewards/chosen"].item() == pytest.approx(0.0)
    assert m["rewards/margins"].item() == pytest.approx(0.1)
    assert m["logps/chosen"].item() == pytest.approx(-4.0)


def test_kto_gradient_and_detached_reference_point(kto_batch):
    """∂/∂pc_i of 1 − σ(β(ρ_i − z)) = −β σ'(β(ρ_i − z)); ∂/∂pr of 1 − σ(β(z − ρ)) = β σ'(β(z − ρ));
    the KL log-probs get no gradient (z is detached)."""
    pc = kto_batch["policy_chosen_logps"].clone().requires_grad_(True)
    pr = kto_batch["policy_rejected_logps"].clone().requires_grad_(True)
    pk = kto_batch["policy_kl_logps"].clone().requires_grad_(True)
    batch = {**kto_batch, "policy_chosen_logps": pc, "policy_rejected_logps": pr, "policy_kl_logps": pk}
    kto_loss(**batch, beta=0.1).losses.sum().backward()

    def dsig(x):
        return sig(x) * (1 - sig(x))

    assert_close(pc.grad, t([-0.1 * dsig(0.05), -0.1 * dsig(-0.15)]))
    assert_close(pr.grad, t([0.1 * dsig(0.15)]))
    assert pk.grad is None


def test_kto_reference_point_clamped_and_given_directly(kto_batch):
    """A negative KL estimate clamps to 0; kl= overrides (clamped too); an empty desirable half still works."""
    assert kto_reference_point(t([-5.0]), t([-3.0])).item() == 0.0
    no_kl = {k: v for k, v in kto_batch.items() if "kl" not in k}
    out = kto_loss(**no_kl, beta=0.1, kl=-2.0)
    assert_close(out.losses, t([1 - sig(0.1), 1 - sig(-0.1), 1 - sig(0.1)]))
    empty = kto_loss(t([]), t([-6.0]), t([]), t([-5.0]), beta=0.1, kl=0.5)
    assert_close(empty.losses, t([1 - sig(0.15)]))
    assert set(kto_metrics(empty, t([]), t([-6.0]))) == {"kl", "rewards/rejected", "logps/rejected"}
    apo = kto_loss(**no_kl, beta=0.1, loss_type="apo_zero_unpaired", kl=3.0)  # ignores z
    assert_close(apo.losses, t([1 - sig(0.1), 1 - sig(-0.1), sig(-0.1)]))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"beta": 0.1, "loss_type": "bco"}, "unknown KTO loss_type 'bco'; valid: kto, apo_zero_unpaired"),
        ({"beta": 0.1, "desirable_weight": 0.0}, "desirable_weight and undesirable_weight must be > 0"),
        ({"beta": 0.1, "kl": 1.0}, "either as kl= or as policy_kl_logps/ref_kl_logps"),
        ({"beta": 0.0}, "beta must be > 0"),
    ],
)
def test_kto_validation(kto_batch, kwargs, message):
    with pytest.raises(ValueError, match=message):
        kto_loss(**kto_batch, **kwargs)
