"""The paired losses of TRL 1.16 beyond DPO/IPO/hinge/robust, with hand-worked numbers and hand derivatives.

Shared inputs (as in test_dpo_loss.py): ref logps -10 everywhere, policy_chosen = [-10, -5, 0],
policy_rejected = [-10, -15, -20], so ρ_w = [0, 5, 10], ρ_l = [0, -5, -10], h = [0, 10, 20]. With β = 0.1:
r_w = βρ_w = [0, .5, 1] = r, r_l = −r, and βh = [0, 1, 2]. ``s(x) = −log σ(x) = log(1 + e^−x)``.
Expected values are written with ``math`` on those numbers, never by calling the code under test.
"""

import math

import pytest
import torch
from torch.testing import assert_close

from zephyr.objectives import LOSS_TYPES, f_divergence_scores, preference_loss

pytestmark = pytest.mark.unit

R = [0.0, 0.5, 1.0]  # β ρ_w; β ρ_l is −R
Z = [0.0, 1.0, 2.0]  # β h


def s(x):
    return math.log1p(math.exp(-x))


def sig(x):
    return 1 / (1 + math.exp(-x))


def t(values):
    return torch.tensor(values, dtype=torch.float64)


@pytest.fixture
def logps():
    return t([-10.0, -5.0, 0.0]), t([-10.0, -15.0, -20.0]), t([-10.0] * 3), t([-10.0] * 3)


def _grads(logps, **kwargs):
    pc, pr = logps[0].clone().requires_grad_(True), logps[1].clone().requires_grad_(True)
    out = preference_loss(pc, pr, *logps[2:], beta=0.1, **kwargs)
    out.losses.sum().backward()
    return out, pc.grad, pr.grad


def test_exo_pair_hand_worked(logps):
    """EXO, ε = 1e-3: σ(z)(log σ(z) − log(1−ε)) + σ(−z)(log σ(−z) − log ε). At z = 0: log ½ − ½ log(ε(1−ε))."""
    eps = 1e-3
    expected = [
        sig(z) * (math.log(sig(z)) - math.log(1 - eps)) + sig(-z) * (math.log(sig(-z)) - math.log(eps)) for z in Z
    ]
    out = preference_loss(*logps, beta=0.1, loss_type="exo_pair", label_smoothing=eps)
    assert_close(out.losses, t(expected))
    assert out.losses[0].item() == pytest.approx(math.log(0.5) - 0.5 * math.log(eps * (1 - eps)))
    assert out.losses[0].item() == pytest.approx(2.761231, abs=1e-6)


def test_nca_pair_hand_worked_and_gradient(logps):
    """NCA: s(r_w) + ½ s(−r_w) + ½ s(−r_l) = 1.5 s(r) + 0.5 s(−r); 2 log 2 at r = 0.

    ∂/∂pc = β(−σ(−r) + ½σ(r)), ∂/∂pr = β·½σ(r_l) = 0.05 σ(−r)."""
    out, gc, gr = _grads(logps, loss_type="nca_pair")
    assert_close(out.losses, t([1.5 * s(r) + 0.5 * s(-r) for r in R]))
    assert out.losses[0].item() == pytest.approx(2 * math.log(2))
    assert_close(gc, t([0.1 * (-sig(-r) + 0.5 * sig(r)) for r in R]))
    assert_close(gr, t([0.05 * sig(-r) for r in R]))


def test_bco_pair_hand_worked_delta_and_gradient(logps):
    """BCO: s(r_w − δ) + s(−(r_l − δ)) = s(r − δ) + s(r + δ). δ = 0 (TRL 1.16): 2 s(r); δ = 0.5 as given.

    ∂/∂pc = −β σ(−(r_w − δ)), ∂/∂pr = β σ(r_l − δ); δ carries no gradient even as a tensor."""
    assert_close(preference_loss(*logps, beta=0.1, loss_type="bco_pair").losses, t([2 * s(r) for r in R]))
    delta = torch.tensor(0.5, dtype=torch.float64, requires_grad=True)
    out, gc, gr = _grads(logps, loss_type="bco_pair", bco_delta=delta)
    assert_close(out.losses, t([s(r - 0.5) + s(r + 0.5) for r in R]))
    assert_close(gc, t([-0.1 * sig(-(r - 0.5)) for r in R]))
    assert_close(gr, t([0.1 * sig(-r - 0.5) for r in R]))
    assert delta.grad is None


def test_sppo_hard_hand_worked_and_gradient(logps):
    """SPPO hard: (ρ_w − 5)² + (ρ_l + 5)² = [25+25, 0+0, 25+25].

    ∂/∂pc = 2(ρ_w − 5) = [−10, 0, 10], ∂/∂pr = 2(ρ_l + 5) = [10, 0, −10]."""
    out, gc, gr = _grads(logps, loss_type="sppo_hard")
    assert_close(out.losses, t([50.0, 0.0, 50.0]))
    assert_close(gc, t([-10.0, 0.0, 10.0]))
    assert_close(gr, t([10.0, 0.0, -10.0]))


def test_aot_sorts_policy_and_reference_margins_separately():
    """AOT paired: policy margins pc − pr = [20, 0, 10] sort to [0, 10, 20]; reference margins [3, 1, 2] sort to
    [1, 2, 3]; d = [−1, 8, 17], βd = [−0.1, 0.8, 1.7]. With ε = 0.2: 0.8 s(βd) + 0.2 s(−βd)."""
    pc, pr = t([0.0, -10.0, -5.0]), t([-20.0, -10.0, -15.0])
    rc, rr = t([0.0, 0.0, 0.0]), t([-3.0, -1.0, -2.0])
    assert_close(preference_loss(pc, pr, rc, rr, beta=0.1, loss_type="aot").losses, t([s(-0.1), s(0.8), s(1.7)]))
    smoothed = preference_loss(pc, pr, rc, rr, beta=0.1, loss_type="aot", label_smoothing=0.2).losses
    assert_close(smoothed, t([0.8 * s(x) + 0.2 * s(-x) for x in (-0.1, 0.8, 1.7)]))


def test_aot_unpaired_sorts_chosen_and_rejected_ratios_separately():
    """AOT unpaired: ρ_w = [3, −1, 1] sorts to [−1, 1, 3], ρ_l = [0, 2, −2] to [−2, 0, 2]; d = [1, 1, 1]."""
    pc, pr = t([3.0, -1.0, 1.0]), t([0.0, 2.0, -2.0])
    zeros = torch.zeros(3, dtype=torch.float64)
    out = preference_loss(pc, pr, zeros, zeros, beta=0.5, loss_type="aot_unpaired")
    assert_close(out.losses, t([s(0.5)] * 3))
    assert_close(out.chosen_rewards, t([1.5, -0.5, 0.5]))  # rewards stay per pair, unsorted


def test_apo_zero_hand_worked_and_gradient(logps):
    """APO-zero: 1 − σ(r_w) + σ(r_l) = 1 − σ(r) + σ(−r) = 2σ(−r) = [1, 0.755... , 0.537...].

    ∂/∂pc = −β σ(r_w)σ(−r_w), ∂/∂pr = β σ(r_l)σ(−r_l)."""
    out, gc, gr = _grads(logps, loss_type="apo_zero")
    assert_close(out.losses, t([2 * sig(-r) for r in R]))
    assert out.losses[0].item() == pytest.approx(1.0)
    assert_close(gc, t([-0.1 * sig(r) * sig(-r) for r in R]))
    assert_close(gr, t([0.1 * sig(-r) * sig(r) for r in R]))


def test_apo_down_hand_worked(logps):
    """APO-down: σ(r_w) + 1 − σ(r_w − r_l) = σ(r) + 1 − σ(2r) = [1, σ(.5) + 1 − σ(1), σ(1) + 1 − σ(2)]."""
    out = preference_loss(*logps, beta=0.1, loss_type="apo_down")
    assert_close(out.losses, t([sig(r) + 1 - sig(2 * r) for r in R]))


def test_discopop_hand_worked_and_gradient(logps):
    """DiscoPOP τ = 0.05: m = σ(z/τ), loss = (1 − m) s(z) + m e^−z; at z = 0: ½ log 2 + ½ = 0.846574.

    d/dz = −m' s(z) − (1 − m) σ(−z) + m' e^−z − m e^−z with m' = m(1 − m)/τ; ∂/∂pc = β d/dz, ∂/∂pr = −β d/dz."""

    def loss(z, tau):
        m = sig(z / tau)
        return (1 - m) * s(z) + m * math.exp(-z)

    def dloss(z, tau):
        m = sig(z / tau)
        dm = m * (1 - m) / tau
        return -dm * s(z) - (1 - m) * sig(-z) + dm * math.exp(-z) - m * math.exp(-z)

    out, gc, gr = _grads(logps, loss_type="discopop")
    assert_close(out.losses, t([loss(z, 0.05) for z in Z]))
    assert out.losses[0].item() == pytest.approx(0.5 * math.log(2) + 0.5)
    assert_close(gc, t([0.1 * dloss(z, 0.05) for z in Z]))
    assert_close(gr, t([-0.1 * dloss(z, 0.05) for z in Z]))
    wide = preference_loss(*logps, beta=0.1, loss_type="discopop", discopop_tau=2.0).losses
    assert_close(wide, t([loss(z, 2.0) for z in Z]))


def test_sft_term_per_row_and_trl_token_mean(logps):
    """sft without counts: −policy_chosen_logps = [10, 5, 0] (caller passes averaged logps). With chosen counts
    [2, 5, 1] the inputs are sums and the term is TRL's pooled token mean (10 + 5 + 0)/8 = 1.875 on every row."""
    out = preference_loss(*logps, beta=0.1, loss_type="sft")
    assert_close(out.losses, t([10.0, 5.0, 0.0]))
    assert_close(out.chosen_rewards, t(R))
    pc = logps[0].clone().requires_grad_(True)
    pooled = preference_loss(pc, *logps[1:], beta=0.1, loss_type="sft", chosen_token_counts=torch.tensor([2, 5, 1]))
    assert_close(pooled.losses, t([1.875] * 3))
    pooled.losses.mean().backward()
    assert_close(pc.grad, t([-1 / 8] * 3))
    # the paper's per-row mean (zephyr's rpo_alpha so far): mean(10/2, 5/5, 0/1) = 2
    per_row = preference_loss(
        *logps, beta=0.1, loss_type="sft", chosen_token_counts=torch.tensor([2, 5, 1]), sft_token_mean=False
    )
    assert_close(per_row.losses, t([2.0] * 3))


def test_sigmoid_norm_and_ipo_with_token_counts(logps):
    """Summed logps + counts: chosen counts 5, rejected 10 → ρ_w/5 = [0, 1, 2], ρ_l/10 = [0, −.5, −1],
    h = [0, 1.5, 3]. sigmoid_norm: s(0.1h); ipo: (h − 5)². Without counts, averaged inputs are used as given."""
    counts = {"chosen_token_counts": torch.full((3,), 5), "rejected_token_counts": torch.full((3,), 10)}
    norm = preference_loss(*logps, beta=0.1, loss_type="sigmoid_norm", **counts)
    assert_close(norm.losses, t([s(0.0), s(0.15), s(0.3)]))
    assert_close(norm.chosen_rewards, t(R))  # rewards: β × the log-ratios as given (summed)
    ipo = preference_loss(*logps, beta=0.1, loss_type="ipo", **counts)
    assert_close(ipo.losses, t([25.0, 3.5**2, 2.0**2]))
    assert_close(preference_loss(*logps, beta=0.1, loss_type="sigmoid_norm").losses, t([s(z) for z in Z]))
    with pytest.raises(ValueError, match="needs both chosen_token_counts and rejected_token_counts"):
        preference_loss(*logps, beta=0.1, loss_type="ipo", chosen_token_counts=torch.full((3,), 5))


def test_f_divergence_scores_hand_worked():
    """ρ = [0, 1, −2]. forward_kl 1 − e^−ρ; js log 2 + log σ(ρ); alpha(α = .5) (e^{−ρ/2} − 1)/(−.5)."""
    rho = t([0.0, 1.0, -2.0])
    assert_close(f_divergence_scores(rho, "reverse_kl"), rho)
    assert_close(f_divergence_scores(rho, "forward_kl"), t([1 - math.exp(-r) for r in (0, 1, -2)]))
    assert_close(f_divergence_scores(rho, "js_divergence"), t([math.log(2 * sig(r)) for r in (0, 1, -2)]))
    assert_close(f_divergence_scores(rho, "alpha_divergence"), t([2 * (1 - math.exp(-r / 2)) for r in (0, 1, -2)]))
    assert_close(f_divergence_scores(rho, "alpha_divergence", 1.0), rho)
    with pytest.raises(ValueError, match="unknown f_divergence_type 'kl'; valid: reverse_kl, forward_kl"):
        f_divergence_scores(rho, "kl")


def test_sigmoid_with_forward_kl_hand_worked_and_rewards_unchanged():
    """ρ_w = 1, ρ_l = −1: forward_kl h = (1 − e^−1) − (1 − e) = e − e^−1 = 2 sinh 1; loss s(β·2 sinh 1).

    ∂/∂pc = −β σ(−βh)·e^{−ρ_w}; rewards stay β·ρ."""
    pc = t([1.0]).requires_grad_(True)
    out = preference_loss(
        pc, t([-1.0]), t([0.0]), t([0.0]), beta=0.5, loss_type="sigmoid", f_divergence_type="forward_kl"
    )
    h = 2 * math.sinh(1)
    assert_close(out.losses, t([s(0.5 * h)]))
    assert_close(out.chosen_rewards, t([0.5]))
    out.losses.sum().backward()
    assert_close(pc.grad, t([-0.5 * sig(-0.5 * h) * math.exp(-1)]))


@pytest.mark.parametrize(
    "loss_type", ["nca_pair", "bco_pair", "sppo_hard", "aot", "aot_unpaired", "apo_zero", "apo_down"]
)
def test_f_divergence_refused_where_undefined(logps, loss_type):
    with pytest.raises(ValueError, match=f"only defined for loss types sigmoid, .*; got '{loss_type}'"):
        preference_loss(*logps, beta=0.1, loss_type=loss_type, f_divergence_type="js_divergence")


def test_pair_weights_scale_losses_without_gradient(logps):
    """WPO weights multiply each pair's loss (and are constants); refused for the sorting AOT losses."""
    w = t([1.0, 0.5, 2.0]).requires_grad_(True)
    out = preference_loss(*logps, beta=0.1, loss_type="apo_zero", pair_weights=w)
    assert_close(out.losses, t([2 * sig(-r) * wi for r, wi in zip(R, [1.0, 0.5, 2.0])]))
    assert not out.losses.requires_grad  # only w required grad, and it is detached
    with pytest.raises(ValueError, match="pair_weights \\(WPO\\) are not defined for 'aot'"):
        preference_loss(*logps, beta=0.1, loss_type="aot", pair_weights=w)


@pytest.mark.parametrize("loss_type", LOSS_TYPES)
def test_every_loss_shapes_dtype_and_detached_rewards(logps, loss_type):
    kwargs = {"label_smoothing": 1e-3} if loss_type == "exo_pair" else {}
    pc, pr = logps[0].float().requires_grad_(True), logps[1].float().requires_grad_(True)
    out = preference_loss(pc, pr, logps[2].float(), logps[3].float(), beta=0.1, loss_type=loss_type, **kwargs)
    assert out.losses.shape == (3,) and out.losses.dtype == torch.float32
    assert out.losses.requires_grad and torch.isfinite(out.losses).all()
    assert out.chosen_rewards.shape == out.rejected_rewards.shape == (3,)
    assert not out.chosen_rewards.requires_grad and not out.rejected_rewards.requires_grad
    assert_close(out.chosen_rewards, torch.tensor(R))
    assert_close(out.rejected_rewards, -torch.tensor(R))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"loss_type": "exo_pair"}, r"'exo_pair' must be in \(0, 1\)"),
        ({"loss_type": "apo_zero", "label_smoothing": 0.1}, "not defined for loss_type 'apo_zero'"),
        ({"loss_type": "aot", "label_smoothing": 0.7}, r"'aot' must be in \[0, 0.5\]"),
        ({"loss_type": "discopop", "discopop_tau": 0.0}, "discopop_tau must be > 0"),
        ({"loss_type": "simpo"}, "unknown loss_type 'simpo'; valid: sigmoid, hinge, ipo, exo_pair"),
    ],
)
def test_option_validation(logps, kwargs, message):
    with pytest.raises(ValueError, match=message):
        preference_loss(*logps, beta=0.1, **kwargs)
