"""Direct preference optimisation and its variants as pure tensor functions, plus TRL's logged metrics.

Notation (per pair, all ``(B,)``): ``ρ_w = log π_θ(y_w|x) − log π_ref(y_w|x)`` (chosen log-ratio),
``ρ_l`` likewise for the rejected completion, and ``h = ρ_w − ρ_l`` (TRL calls it ``logits``). The implicit
reward of the DPO paper is ``β·ρ`` (the ``β log Z(x)`` term cancels within a pair).

Losses (``loss_type``), each returned per example; the caller reduces (usually ``.mean()``):

* ``sigmoid``: DPO, Rafailov et al. 2023, arXiv 2305.18290, Eq. 7: ``−log σ(βh)``. With
  ``label_smoothing=ε`` it is conservative DPO (cDPO, Mitchell 2023; TRL ≤ 0.12 ``label_smoothing``):
  ``−(1−ε) log σ(βh) − ε log σ(−βh)``, i.e. a BCE against a soft label ``1−ε``.
* ``ipo``: Azar et al. 2023, arXiv 2310.12036: ``(h − 1/(2β))²`` (β plays τ). The caller must pass
  **length-averaged** log-probs (``average=True`` in :mod:`zephyr.objectives.logprobs`), as TRL does from
  v0.8 on and the IPO authors recommend; summed log-probs make the fixed target ``1/(2β)`` length-dependent.
* ``hinge``: SLiC-HF, Zhao et al. 2023, arXiv 2305.10425 (RSO's hinge, arXiv 2309.06657):
  ``max(0, 1 − βh)`` (β = 1/margin).
* ``robust``: rDPO, Chowdhury et al. 2024, arXiv 2403.00409:
  ``[−(1−ε) log σ(βh) + ε log σ(−βh)] / (1 − 2ε)``, an unbiased loss under preference-flip rate ε ∈ [0, 0.5).

Everything here is batch-shape generic and framework-free, so the same code serves training, evaluation and the
reference-cache path.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

__all__ = ["LOSS_TYPES", "PreferenceLoss", "preference_loss", "preference_metrics", "rpo_nll"]

LOSS_TYPES = ("sigmoid", "ipo", "hinge", "robust")


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


def preference_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    *,
    beta: float,
    loss_type: str = "sigmoid",
    label_smoothing: float = 0.0,
) -> PreferenceLoss:
    """Per-example preference loss (DPO, cDPO, IPO, hinge, robust DPO) and implicit rewards.

    Args:
        policy_chosen_logps: ``(B,)`` log π_θ(y_w|x), summed over completion tokens (averaged for ``ipo``).
        policy_rejected_logps: ``(B,)`` log π_θ(y_l|x).
        ref_chosen_logps: ``(B,)`` log π_ref(y_w|x) (no gradient needed; zeros give reference-free DPO).
        ref_rejected_logps: ``(B,)`` log π_ref(y_l|x).
        beta: KL-penalty strength β (> 0). IPO's τ; 1/margin for hinge.
        loss_type: one of ``sigmoid``, ``ipo``, ``hinge``, ``robust``.
        label_smoothing: ε, the assumed preference-flip rate: cDPO for ``sigmoid`` (ε ∈ [0, 0.5]),
            rDPO for ``robust`` (ε ∈ [0, 0.5)); must be 0 for ``ipo`` and ``hinge``.

    Returns:
        :class:`PreferenceLoss` ``(losses, chosen_rewards, rejected_rewards)``, each ``(B,)`` in the dtype
        of the inputs' promotion; rewards ``β·(policy − ref)`` are detached.

    Raises:
        ValueError: non-positive beta, unknown loss_type (listing the valid ones), label_smoothing out of range,
            or inputs whose shapes differ (naming every shape).
    """
    if not beta > 0:
        raise ValueError(f"beta must be > 0, got {beta}")
    if loss_type not in LOSS_TYPES:
        raise ValueError(f"unknown loss_type {loss_type!r}; valid: {', '.join(LOSS_TYPES)}")
    if loss_type == "sigmoid" and not 0.0 <= label_smoothing <= 0.5:
        raise ValueError(f"label_smoothing for 'sigmoid' (cDPO) must be in [0, 0.5], got {label_smoothing}")
    if loss_type == "robust" and not 0.0 <= label_smoothing < 0.5:
        raise ValueError(f"label_smoothing for 'robust' (rDPO) must be in [0, 0.5), got {label_smoothing}")
    if loss_type in ("ipo", "hinge") and label_smoothing != 0.0:
        raise ValueError(f"label_smoothing is not defined for loss_type {loss_type!r}; got {label_smoothing}")
    _check_same_shape(
        policy_chosen_logps=policy_chosen_logps,
        policy_rejected_logps=policy_rejected_logps,
        ref_chosen_logps=ref_chosen_logps,
        ref_rejected_logps=ref_rejected_logps,
    )

    chosen_logratios = policy_chosen_logps - ref_chosen_logps  # ρ_w, (B,)
    rejected_logratios = policy_rejected_logps - ref_rejected_logps  # ρ_l, (B,)
    h = chosen_logratios - rejected_logratios  # (B,)
    eps = label_smoothing

    if loss_type == "sigmoid":
        losses = -(1 - eps) * F.logsigmoid(beta * h) - eps * F.logsigmoid(-beta * h)
    elif loss_type == "robust":
        losses = (-(1 - eps) * F.logsigmoid(beta * h) + eps * F.logsigmoid(-beta * h)) / (1 - 2 * eps)
    elif loss_type == "hinge":
        losses = torch.relu(1 - beta * h)
    else:  # ipo
        losses = (h - 1 / (2 * beta)) ** 2

    chosen_rewards = beta * chosen_logratios.detach()
    rejected_rewards = beta * rejected_logratios.detach()
    return PreferenceLoss(losses, chosen_rewards, rejected_rewards)


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
