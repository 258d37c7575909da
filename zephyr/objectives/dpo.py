"""Paired preference losses (the fifteen TRL 1.16 ``loss_type`` names) as pure tensor functions, plus TRL's metrics.

Notation (per pair, all ``(B,)``): ``ρ_w = log π_θ(y_w|x) − log π_ref(y_w|x)`` (chosen log-ratio), ``ρ_l`` likewise
for the rejected completion, and ``h = s(ρ_w) − s(ρ_l)`` where ``s`` is the f-divergence score (identity for the
default ``reverse_kl``; TRL calls ``h`` ``delta_score``). The implicit reward of the DPO paper is ``β·ρ`` (the
``β log Z(x)`` term cancels within a pair); rewards are always ``β·ρ``, whatever the score. ``σ`` is the logistic
function, ``ε`` is ``label_smoothing``. Each loss is returned per example; the caller reduces (``.mean()``).

Names and definitions follow ``trl/trainer/dpo_trainer.py`` of TRL 1.16 (``DPOTrainer._compute_loss``):

* ``sigmoid``: DPO, Rafailov et al. 2023, arXiv 2305.18290, Eq. 7: ``−log σ(βh)``. zephyr keeps its ``ε`` as
  conservative DPO (cDPO, Mitchell 2023; TRL ≤ 0.12): ``−(1−ε) log σ(βh) − ε log σ(−βh)``. TRL 1.16 ignores
  ``label_smoothing`` for ``sigmoid``; at ``ε = 0`` (the default) both agree.
* ``hinge``: SLiC-HF, Zhao et al. 2023, arXiv 2305.10425 (RSO's hinge, arXiv 2309.06657): ``max(0, 1 − βh)``.
* ``ipo``: Azar et al. 2023, arXiv 2310.12036, Eq. 17: ``(h − 1/(2β))²`` (β plays τ) on **length-averaged**
  log-ratios, as TRL does and the IPO authors confirmed (the paper's form is on sequence log-probs).
* ``exo_pair``: EXO, Ji et al. 2024, arXiv 2402.00856, Eq. 16 with K = 2:
  ``KL(q‖p)`` with ``q = [σ(βh), σ(−βh)]`` and ``p = [1−ε, ε]``; needs ``0 < ε < 1`` (the paper uses 1e-3).
* ``nca_pair``: NCA, Chen et al. 2024, arXiv 2402.05369: ``−log σ(βρ_w) − ½ log σ(−βρ_w) − ½ log σ(−βρ_l)``.
* ``robust``: rDPO, Chowdhury et al. 2024, arXiv 2403.00409:
  ``[−(1−ε) log σ(βh) + ε log σ(−βh)] / (1 − 2ε)``, unbiased under preference-flip rate ε ∈ [0, 0.5).
* ``bco_pair``: BCO, Jung et al. 2024, arXiv 2404.04656: ``−log σ(βρ_w − δ) − log σ(−(βρ_l − δ))``. The paper's
  δ is a running mean of the rewards; TRL 1.16 dropped it (δ = 0). ``bco_delta`` (default 0, TRL 1.16) lets the
  caller pass the paper's δ, e.g. the running mean of ``mean(cat(chosen_rewards, rejected_rewards))`` that older
  TRL kept in a ``RunningMoments``; the state lives with the caller so this function stays pure.
* ``sppo_hard``: SPPO, Wu et al. 2024, arXiv 2405.00675, Eq. 4.7 with the hard probability (P = 1 for the winner,
  0 for the loser; TRL's variant, the paper estimates a soft P with PairRM): ``(ρ_w − 1/(2β))² + (ρ_l + 1/(2β))²``.
* ``aot``: AOT paired, Melnyk et al. 2024, arXiv 2406.05882: sort ``log π_θ(y_w) − log π_θ(y_l)`` and
  ``log π_ref(y_w) − log π_ref(y_l)`` over the batch separately, ``d`` = their sorted difference, loss
  ``−(1−ε) log σ(βd) − ε log σ(−βd)``. Row ``i`` of the result is the i-th quantile, not pair ``i``.
* ``aot_unpaired``: AOT unpaired: sort ``ρ_w`` and ``ρ_l`` separately, ``d`` = sorted ``ρ_w`` − sorted ``ρ_l``,
  same loss as ``aot``.
* ``apo_zero``: APO, D'Oosterlinck et al. 2024, arXiv 2408.06266, Eq. 7: ``1 − σ(βρ_w) + σ(βρ_l)``.
* ``apo_down``: APO Eq. 8: ``σ(βρ_w) + 1 − σ(β(ρ_w − ρ_l))``.
* ``discopop``: DiscoPOP / log-ratio modulated loss, Lu et al. 2024, arXiv 2406.08414, Eq. 5: with ``z = βh``,
  ``m = σ(z/τ)``: ``(1 − m)·(−log σ(z)) + m·exp(−z)``; τ = ``discopop_tau`` (default 0.05, the paper's).
* ``sft``: the NLL term of RPO (Pang et al. 2024, arXiv 2404.19733; TRL's ``rpo_alpha`` became this term, and
  MPO = sigmoid + bco_pair + sft, Wang et al. 2024, arXiv 2411.10442). With ``chosen_token_counts`` (then
  ``policy_chosen_logps`` are sums) it is TRL's pooled token mean ``−Σ log π(y_w) / Σ |y_w|`` broadcast to
  ``(B,)`` (:func:`rpo_nll` with ``token_mean=True``; ``sft_token_mean=False`` gives the paper's per-row mean
  instead); without counts it is ``−policy_chosen_logps`` per row, so the
  caller passes **length-averaged** chosen log-probs (the paper's per-sequence mean).
* ``sigmoid_norm``: length-normalised DPO (TRL; the normalisation of SimPO, Meng et al. 2024, arXiv 2405.14734,
  applied to DPO's log-ratios): ``−log σ(β(s(ρ_w)/|y_w| − s(ρ_l)/|y_l|))``.

Length-averaged losses (``ipo``, ``sigmoid_norm``): either pass length-averaged log-probs (zephyr's usual route,
``average=True`` in :mod:`zephyr.objectives.logprobs`), or pass summed log-probs together with
``chosen_token_counts`` / ``rejected_token_counts``: then the f-divergence score of the summed log-ratio is divided by
the count, exactly TRL's order (the two routes agree for ``reverse_kl``). Passing counts lets one call site feed
summed log-probs to a list of losses that mixes summed and averaged ones.

Options shared with TRL: ``f_divergence_type`` (f-DPO, Wang et al. 2023, arXiv 2309.16240): ``reverse_kl``
``s(ρ) = ρ``; ``forward_kl`` ``s = 1 − e^{−ρ}``; ``js_divergence`` ``s = log 2 + log σ(ρ)``; ``alpha_divergence``
``s = (e^{(α−1)ρ} − 1)/(α−1)`` with ``α = f_alpha_divergence_coef`` (default 0.5; the exponent clamped at 80 in
fp32 as TRL does; α = 1 falls back to reverse_kl). Only the losses built on ``h`` accept it (TRL's set,
:data:`F_DIVERGENCE_LOSS_TYPES`); the β·log Z(x) term cancels only in the chosen−rejected difference.
``pair_weights`` multiplies each pair's loss (WPO, Zhou et al. 2024, arXiv 2406.11827; compute them with
:func:`zephyr.objectives.weighting.wpo_sequence_weights`, product of chosen and rejected); refused for ``aot`` and
``aot_unpaired``, which sort rows. LD-DPO (``ld_alpha``) changes only how log-probs are summed:
:func:`zephyr.objectives.weighting.ld_dpo_logps`.

Everything here is batch-shape generic and framework-free, so the same code serves training, evaluation and the
reference-cache path.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F

__all__ = [
    "F_DIVERGENCE_LOSS_TYPES",
    "F_DIVERGENCE_TYPES",
    "LABEL_SMOOTHING_LOSS_TYPES",
    "LENGTH_AVERAGED_LOSS_TYPES",
    "LOSS_TYPES",
    "PreferenceLoss",
    "check_loss_type",
    "f_divergence_scores",
    "preference_loss",
    "preference_metrics",
    "rpo_nll",
]

#: Every paired ``loss_type`` name, in TRL 1.16's order.
LOSS_TYPES = (
    "sigmoid",
    "hinge",
    "ipo",
    "exo_pair",
    "nca_pair",
    "robust",
    "bco_pair",
    "sppo_hard",
    "aot",
    "aot_unpaired",
    "apo_zero",
    "apo_down",
    "discopop",
    "sft",
    "sigmoid_norm",
)
#: Losses that regress length-averaged log-ratios (feed averaged log-probs, or sums with token counts).
LENGTH_AVERAGED_LOSS_TYPES = ("ipo", "sigmoid_norm")
#: Losses that use ``label_smoothing`` (ε); the others refuse a non-zero ε.
LABEL_SMOOTHING_LOSS_TYPES = ("sigmoid", "exo_pair", "robust", "aot", "aot_unpaired")
#: Losses defined on ``h`` that accept a non-default ``f_divergence_type`` (TRL 1.16's set).
F_DIVERGENCE_LOSS_TYPES = ("sigmoid", "sigmoid_norm", "hinge", "ipo", "exo_pair", "robust", "discopop", "sft")
F_DIVERGENCE_TYPES = ("reverse_kl", "forward_kl", "js_divergence", "alpha_divergence")


class PreferenceLoss(NamedTuple):
    """Per-example DPO-family loss and detached implicit rewards, all ``(B,)``.

    Unpacks like ``losses, chosen_rewards, rejected_rewards = preference_loss(...)``.
    """

    losses: torch.Tensor
    chosen_rewards: torch.Tensor
    rejected_rewards: torch.Tensor


def _check_same_shape(**tensors: torch.Tensor) -> None:
    shapes = {name: tuple(t.shape) for name, t in tensors.items()}
    first = next(iter(shapes.values()))
    if any(s != first for s in shapes.values()) or len(first) != 1:
        listed = ", ".join(f"{name} {shape}" for name, shape in shapes.items())
        raise ValueError(f"expected (B,) tensors of one shape, got {listed}")


def check_loss_type(loss_type: str) -> None:
    """Raise ``ValueError("unknown loss_type 'x'; valid: sigmoid, hinge, ...")`` unless ``loss_type`` is paired."""
    if loss_type not in LOSS_TYPES:
        raise ValueError(f"unknown loss_type {loss_type!r}; valid: {', '.join(LOSS_TYPES)}")


def f_divergence_scores(
    logratios: torch.Tensor, f_divergence_type: str = "reverse_kl", f_alpha_divergence_coef: float = 0.5
) -> torch.Tensor:
    """The f-DPO score ``f'(π_θ/π_ref)`` of log-ratios ρ (Wang et al. 2023, arXiv 2309.16240), as TRL 1.16.

    Args:
        logratios: log π_θ − log π_ref, any shape.
        f_divergence_type: ``reverse_kl`` (ρ, standard DPO), ``forward_kl`` (1 − e^{−ρ}), ``js_divergence``
            (log 2 + log σ(ρ)) or ``alpha_divergence`` ((e^{(α−1)ρ} − 1)/(α−1); α = 1 is reverse_kl).
        f_alpha_divergence_coef: α of the alpha divergence.

    Returns:
        Scores of the input's shape and dtype.

    Raises:
        ValueError: unknown ``f_divergence_type`` (listing the valid ones).
    """
    if f_divergence_type == "reverse_kl":
        return logratios
    if f_divergence_type == "forward_kl":
        return 1 - torch.exp(-logratios)
    if f_divergence_type == "js_divergence":
        return math.log(2) + F.logsigmoid(logratios)
    if f_divergence_type == "alpha_divergence":
        alpha = f_alpha_divergence_coef
        if abs(alpha - 1.0) < 1e-6:
            return logratios
        t = (alpha - 1.0) * logratios
        clamp_max = 11.0 if t.dtype == torch.float16 else 80.0  # exp stays representable after casting back
        return (torch.exp(torch.clamp(t.float(), max=clamp_max)) - 1.0).to(t.dtype) / (alpha - 1.0)
    raise ValueError(f"unknown f_divergence_type {f_divergence_type!r}; valid: {', '.join(F_DIVERGENCE_TYPES)}")


def _check_options(
    loss_type: str,
    beta: float,
    label_smoothing: float,
    f_divergence_type: str,
    discopop_tau: float,
    pair_weights: torch.Tensor | None,
) -> None:
    if not beta > 0:
        raise ValueError(f"beta must be > 0, got {beta}")
    check_loss_type(loss_type)
    eps = label_smoothing
    if loss_type in ("sigmoid", "aot", "aot_unpaired") and not 0.0 <= eps <= 0.5:
        raise ValueError(f"label_smoothing for {loss_type!r} must be in [0, 0.5], got {eps}")
    if loss_type == "robust" and not 0.0 <= eps < 0.5:
        raise ValueError(f"label_smoothing for 'robust' (rDPO) must be in [0, 0.5), got {eps}")
    if loss_type == "exo_pair" and not 0.0 < eps < 1.0:
        raise ValueError(f"label_smoothing for 'exo_pair' must be in (0, 1) (the EXO paper uses 1e-3), got {eps}")
    if loss_type not in LABEL_SMOOTHING_LOSS_TYPES and eps != 0.0:
        raise ValueError(f"label_smoothing is not defined for loss_type {loss_type!r}; got {eps}")
    if f_divergence_type not in F_DIVERGENCE_TYPES:
        raise ValueError(f"unknown f_divergence_type {f_divergence_type!r}; valid: {', '.join(F_DIVERGENCE_TYPES)}")
    if f_divergence_type != "reverse_kl" and loss_type not in F_DIVERGENCE_LOSS_TYPES:
        raise ValueError(
            f"f_divergence_type={f_divergence_type!r} is only defined for loss types "
            f"{', '.join(F_DIVERGENCE_LOSS_TYPES)}; got {loss_type!r}"
        )
    if loss_type == "discopop" and not discopop_tau > 0:
        raise ValueError(f"discopop_tau must be > 0, got {discopop_tau}")
    if pair_weights is not None and loss_type in ("aot", "aot_unpaired"):
        raise ValueError(f"pair_weights (WPO) are not defined for {loss_type!r}, which sorts rows across the batch")


def _smoothed_sigmoid(z: torch.Tensor, eps: float) -> torch.Tensor:
    """``−(1−ε) log σ(z) − ε log σ(−z)``: BCE of logit z against the soft label 1 − ε."""
    return -(1 - eps) * F.logsigmoid(z) - eps * F.logsigmoid(-z)


def preference_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    *,
    beta: float,
    loss_type: str = "sigmoid",
    label_smoothing: float = 0.0,
    discopop_tau: float = 0.05,
    f_divergence_type: str = "reverse_kl",
    f_alpha_divergence_coef: float = 0.5,
    bco_delta: float | torch.Tensor = 0.0,
    chosen_token_counts: torch.Tensor | None = None,
    rejected_token_counts: torch.Tensor | None = None,
    pair_weights: torch.Tensor | None = None,
    sft_token_mean: bool = True,
) -> PreferenceLoss:
    """Per-example paired preference loss (any name of :data:`LOSS_TYPES`) and implicit rewards.

    See the module docstring for every formula and its source.

    Args:
        policy_chosen_logps: ``(B,)`` log π_θ(y_w|x), summed over completion tokens; length-averaged for ``ipo`` and
            ``sigmoid_norm`` unless token counts are given, and for ``sft`` unless ``chosen_token_counts`` is given.
        policy_rejected_logps: ``(B,)`` log π_θ(y_l|x), same convention.
        ref_chosen_logps: ``(B,)`` log π_ref(y_w|x) (no gradient needed; zeros give reference-free DPO).
        ref_rejected_logps: ``(B,)`` log π_ref(y_l|x).
        beta: β (> 0): KL-penalty strength; IPO's τ; 1/margin for hinge.
        loss_type: one name of :data:`LOSS_TYPES`.
        label_smoothing: ε: cDPO for ``sigmoid``, ``aot``, ``aot_unpaired`` (ε ∈ [0, 0.5]), rDPO flip rate for
            ``robust`` (ε ∈ [0, 0.5)), EXO's target for ``exo_pair`` (ε ∈ (0, 1), required); 0 for the others.
        discopop_tau: DiscoPOP's τ (> 0), used by ``discopop``.
        f_divergence_type: f-DPO score, one of :data:`F_DIVERGENCE_TYPES`; non-default only for
            :data:`F_DIVERGENCE_LOSS_TYPES`.
        f_alpha_divergence_coef: α of ``alpha_divergence`` (TRL default 0.5).
        bco_delta: BCO's reward shift δ (float or 0-dim tensor, treated as a constant); 0 is TRL 1.16.
        chosen_token_counts: optional ``(B,)`` completion token counts of the chosen rows. With both counts,
            ``ipo`` / ``sigmoid_norm`` take summed log-probs and normalise like TRL; ``sft`` needs only this one.
        rejected_token_counts: optional ``(B,)`` counts of the rejected rows.
        pair_weights: optional ``(B,)`` per-pair loss weights (WPO), applied as a constant.
        sft_token_mean: for ``sft`` with ``chosen_token_counts``: ``True`` (TRL) pools tokens over the batch,
            ``False`` takes the paper's mean over rows of ``−log π(y_w)/|y_w|`` (zephyr's ``rpo_alpha`` so far);
            see :func:`rpo_nll`.

    Returns:
        :class:`PreferenceLoss` ``(losses, chosen_rewards, rejected_rewards)``, each ``(B,)``; rewards
        ``β·(policy − ref)`` of the log-probs as given, detached.

    Raises:
        ValueError: non-positive beta, unknown loss_type or f_divergence_type (listing the valid ones), an option out
            of range or not defined for the loss, or inputs whose shapes differ (naming every shape).
    """
    _check_options(loss_type, beta, label_smoothing, f_divergence_type, discopop_tau, pair_weights)
    shaped = {
        "policy_chosen_logps": policy_chosen_logps,
        "policy_rejected_logps": policy_rejected_logps,
        "ref_chosen_logps": ref_chosen_logps,
        "ref_rejected_logps": ref_rejected_logps,
    }
    optional = {
        "chosen_token_counts": chosen_token_counts,
        "rejected_token_counts": rejected_token_counts,
        "pair_weights": pair_weights,
    }
    _check_same_shape(**shaped, **{k: v for k, v in optional.items() if v is not None})
    if loss_type in LENGTH_AVERAGED_LOSS_TYPES and (chosen_token_counts is None) != (rejected_token_counts is None):
        raise ValueError(
            f"loss_type {loss_type!r} needs both chosen_token_counts and rejected_token_counts, or neither"
        )

    chosen_logratios = policy_chosen_logps - ref_chosen_logps  # ρ_w, (B,)
    rejected_logratios = policy_rejected_logps - ref_rejected_logps  # ρ_l, (B,)
    chosen_scores = f_divergence_scores(chosen_logratios, f_divergence_type, f_alpha_divergence_coef)
    rejected_scores = f_divergence_scores(rejected_logratios, f_divergence_type, f_alpha_divergence_coef)
    if loss_type in LENGTH_AVERAGED_LOSS_TYPES and chosen_token_counts is not None:
        chosen_scores = chosen_scores / chosen_token_counts.clamp(min=1)
        rejected_scores = rejected_scores / rejected_token_counts.clamp(min=1)
    h = chosen_scores - rejected_scores  # (B,)
    eps = label_smoothing
    r_w, r_l = beta * chosen_logratios, beta * rejected_logratios  # differentiable rewards

    if loss_type in ("sigmoid", "sigmoid_norm"):
        losses = _smoothed_sigmoid(beta * h, eps)
    elif loss_type == "hinge":
        losses = torch.relu(1 - beta * h)
    elif loss_type == "ipo":
        losses = (h - 1 / (2 * beta)) ** 2
    elif loss_type == "exo_pair":
        z = beta * h
        losses = torch.sigmoid(z) * (F.logsigmoid(z) - math.log1p(-eps)) + torch.sigmoid(-z) * (
            F.logsigmoid(-z) - math.log(eps)
        )
    elif loss_type == "nca_pair":
        losses = -F.logsigmoid(r_w) - 0.5 * F.logsigmoid(-r_w) - 0.5 * F.logsigmoid(-r_l)
    elif loss_type == "robust":
        losses = (-(1 - eps) * F.logsigmoid(beta * h) + eps * F.logsigmoid(-beta * h)) / (1 - 2 * eps)
    elif loss_type == "bco_pair":
        delta = torch.as_tensor(bco_delta, dtype=r_w.dtype, device=r_w.device).detach()
        losses = -F.logsigmoid(r_w - delta) - F.logsigmoid(-(r_l - delta))
    elif loss_type == "sppo_hard":
        losses = (chosen_logratios - 0.5 / beta) ** 2 + (rejected_logratios + 0.5 / beta) ** 2
    elif loss_type == "aot":
        policy_sorted, _ = torch.sort(policy_chosen_logps - policy_rejected_logps, dim=0)
        ref_sorted, _ = torch.sort(ref_chosen_logps - ref_rejected_logps, dim=0)
        losses = _smoothed_sigmoid(beta * (policy_sorted - ref_sorted), eps)
    elif loss_type == "aot_unpaired":
        chosen_sorted, _ = torch.sort(chosen_logratios, dim=0)
        rejected_sorted, _ = torch.sort(rejected_logratios, dim=0)
        losses = _smoothed_sigmoid(beta * (chosen_sorted - rejected_sorted), eps)
    elif loss_type == "apo_zero":
        losses = 1 - torch.sigmoid(r_w) + torch.sigmoid(r_l)
    elif loss_type == "apo_down":
        losses = torch.sigmoid(r_w) + 1 - torch.sigmoid(r_w - r_l)
    elif loss_type == "discopop":
        z = beta * h
        modulation = torch.sigmoid(z / discopop_tau)
        losses = -F.logsigmoid(z) * (1 - modulation) + torch.exp(-z) * modulation
    else:  # sft
        if chosen_token_counts is None:
            losses = -policy_chosen_logps
        else:
            nll = rpo_nll(policy_chosen_logps, chosen_token_counts, token_mean=sft_token_mean)
            losses = nll.expand(policy_chosen_logps.shape[0])

    if pair_weights is not None:
        losses = losses * pair_weights.detach()
    return PreferenceLoss(losses, r_w.detach(), r_l.detach())


def preference_metrics(
    chosen_rewards: torch.Tensor,
    rejected_rewards: torch.Tensor,
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    chosen_logits_mean: torch.Tensor | None = None,
    rejected_logits_mean: torch.Tensor | None = None,
    *,
    ref_chosen_logps: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """TRL's DPO metrics (same names and definitions), as detached 0-dim tensors; batch means.

    ``rewards/accuracies`` uses a strict ``>``, so at step 0 (policy = reference) it is 0, as in TRL.

    ``kl`` (only when ``ref_chosen_logps`` is given) is the mean sequence log-ratio on the chosen completions,
    ``mean(log π_θ(y_w|x) − log π_ref(y_w|x))`` in nats per sequence: the k1 Monte-Carlo estimator of
    KL(π_θ‖π_ref) = E_{y∼π_θ}[log π_θ/π_ref]. The y_w come from the dataset, not from π_θ, so it is an
    off-policy proxy that can be negative; it is 0 at step 0 and tracks how far the policy has moved on the
    data it is pushed towards (it equals ``rewards/chosen / β``).

    Args:
        chosen_rewards: ``(B,)`` detached β·ρ_w from :func:`preference_loss`.
        rejected_rewards: ``(B,)`` detached β·ρ_l.
        policy_chosen_logps: ``(B,)`` policy log-probs of the chosen completions.
        policy_rejected_logps: ``(B,)`` policy log-probs of the rejected completions.
        chosen_logits_mean: optional 0-dim mean raw logit over counted chosen positions × vocab
            (see :func:`zephyr.objectives.logprobs.masked_logits_mean`; TRL v0.12 definition).
        rejected_logits_mean: same for the rejected rows.
        ref_chosen_logps: optional ``(B,)`` reference log-probs of the chosen completions, for ``kl``.

    Returns:
        ``{"rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins", "logps/chosen",
        "logps/rejected"}`` plus ``logits/chosen``, ``logits/rejected`` and ``kl`` when their inputs are given.
    """
    with torch.no_grad():
        metrics = {
            "rewards/chosen": chosen_rewards.float().mean(),
            "rewards/rejected": rejected_rewards.float().mean(),
            "rewards/accuracies": (chosen_rewards > rejected_rewards).float().mean(),
            "rewards/margins": (chosen_rewards - rejected_rewards).float().mean(),
            "logps/chosen": policy_chosen_logps.detach().float().mean(),
            "logps/rejected": policy_rejected_logps.detach().float().mean(),
        }
        if chosen_logits_mean is not None:
            metrics["logits/chosen"] = chosen_logits_mean.detach().float()
        if rejected_logits_mean is not None:
            metrics["logits/rejected"] = rejected_logits_mean.detach().float()
        if ref_chosen_logps is not None:
            metrics["kl"] = (policy_chosen_logps.detach().float() - ref_chosen_logps.float()).mean()
    return metrics


def rpo_nll(
    policy_chosen_logps: torch.Tensor, chosen_token_counts: torch.Tensor, *, token_mean: bool = False
) -> torch.Tensor:
    """Length-normalised NLL of the chosen completions, the extra term of RPO (Pang et al. 2024, arXiv 2404.19733).

    RPO trains on ``L_DPO + α·NLL`` (TRL ``rpo_alpha``; the paper uses α = 1). This returns the NLL term as a
    scalar; the caller adds ``alpha * rpo_nll(...)`` to the mean DPO loss.

    Args:
        policy_chosen_logps: ``(B,)`` **summed** policy log-probs of the chosen completions (differentiable).
        chosen_token_counts: ``(B,)`` counted completion tokens per row.
        token_mean: ``False`` (default): the paper's mean over pairs of ``−log π(y_w|x) / |y_w|``.
            ``True``: TRL's token mean over the whole chosen half, ``−Σ log π / Σ |y_w|`` (cross-entropy on the
            chosen rows), which weights long completions more.

    Returns:
        0-dim tensor. Rows with no counted token are left out; 0 if none has one.

    Raises:
        ValueError: when the two inputs' shapes differ (naming both).
    """
    if policy_chosen_logps.shape != chosen_token_counts.shape or policy_chosen_logps.dim() != 1:
        raise ValueError(
            f"expected (B,) inputs of one shape, got policy_chosen_logps {tuple(policy_chosen_logps.shape)}, "
            f"chosen_token_counts {tuple(chosen_token_counts.shape)}"
        )
    counts = chosen_token_counts.to(policy_chosen_logps.dtype)
    if token_mean:
        return -policy_chosen_logps.sum() / counts.sum().clamp(min=1)
    has_tokens = chosen_token_counts > 0
    per_row = -policy_chosen_logps / counts.clamp(min=1)  # (B,)
    return (per_row * has_tokens).sum() / has_tokens.sum().clamp(min=1)
