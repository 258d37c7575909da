"""KTO on unpaired feedback (Ethayarajh et al. 2024, arXiv 2402.01306) as pure tensor functions, as TRL 1.16.

A batch holds desirable rows (label true, "chosen") and undesirable rows (label false, "rejected"), not pairs:
their counts differ. With ``ρ = log π_θ(y|x) − log π_ref(y|x)`` (summed log-probs) and the reference point
``z = max(0, mean(log π_θ(y'|x) − log π_ref(y'|x)))`` over **mismatched** prompt/completion pairs (each prompt
with another row's completion; the paper's batch estimate of KL(π_θ‖π_ref)), detached:

* desirable: ``λ_D · (1 − σ(β(ρ − z)))``; undesirable: ``λ_U · (1 − σ(β(z − ρ)))`` (the paper's Eq. 7 value
  function written as a loss, as TRL's ``KTOTrainer._compute_loss``; ``λ_D`` = ``desirable_weight``, ``λ_U`` =
  ``undesirable_weight``; the paper suggests ``λ_D n_D / (λ_U n_U)`` in [1, 4/3]).
* ``loss_type="apo_zero_unpaired"`` (TRL): the unpaired APO-zero, ``1 − σ(βρ)`` and ``σ(βρ)``, with no z.

The batch loss is the mean over all ``n_D + n_U`` rows of the concatenated weighted losses (TRL: ``nanmean``).
Rewards are ``β·ρ`` (detached). TRL gathers the per-rank KL mean across processes before the clamp; a distributed
caller passes that gathered value as ``kl=``.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

__all__ = ["KTO_LOSS_TYPES", "KTOLoss", "kto_loss", "kto_metrics", "kto_reference_point"]

KTO_LOSS_TYPES = ("kto", "apo_zero_unpaired")


class KTOLoss(NamedTuple):
    """Output of :func:`kto_loss`.

    Attributes:
        losses: ``(n_D + n_U,)`` weighted per-row losses, desirable rows first; ``.mean()`` is TRL's loss.
        chosen_rewards: ``(n_D,)`` detached ``β·ρ`` of the desirable rows.
        rejected_rewards: ``(n_U,)`` detached ``β·ρ`` of the undesirable rows.
        kl: 0-dim detached reference point z (0 without KL inputs).
    """

    losses: torch.Tensor
    chosen_rewards: torch.Tensor
    rejected_rewards: torch.Tensor
    kl: torch.Tensor


def kto_reference_point(policy_kl_logps: torch.Tensor, ref_kl_logps: torch.Tensor) -> torch.Tensor:
    """KTO's z: ``max(0, mean(policy_kl_logps − ref_kl_logps))``, detached, 0-dim.

    Args:
        policy_kl_logps: ``(M,)`` summed policy log-probs of mismatched prompt/completion pairs.
        ref_kl_logps: ``(M,)`` reference log-probs of the same pairs.

    Returns:
        0-dim tensor ≥ 0 without gradient (0 when ``M == 0``).
    """
    if policy_kl_logps.shape != ref_kl_logps.shape or policy_kl_logps.dim() != 1:
        raise ValueError(
            f"expected (M,) KL log-probs of one shape, got policy {tuple(policy_kl_logps.shape)}, "
            f"reference {tuple(ref_kl_logps.shape)}"
        )
    if policy_kl_logps.numel() == 0:
        return policy_kl_logps.new_zeros(())
    return (policy_kl_logps - ref_kl_logps).detach().mean().clamp(min=0)


def kto_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    *,
    beta: float,
    policy_kl_logps: torch.Tensor | None = None,
    ref_kl_logps: torch.Tensor | None = None,
    kl: torch.Tensor | float | None = None,
    desirable_weight: float = 1.0,
    undesirable_weight: float = 1.0,
    loss_type: str = "kto",
) -> KTOLoss:
    """Per-row KTO losses of a batch of desirable and undesirable completions (either half may be empty).

    Args:
        policy_chosen_logps: ``(n_D,)`` summed log π_θ of the desirable completions.
        policy_rejected_logps: ``(n_U,)`` summed log π_θ of the undesirable completions.
        ref_chosen_logps: ``(n_D,)`` log π_ref of the desirable completions.
        ref_rejected_logps: ``(n_U,)`` log π_ref of the undesirable completions.
        beta: β (> 0; TRL default 0.1).
        policy_kl_logps: ``(M,)`` policy log-probs of the mismatched pairs; with ``ref_kl_logps`` gives z.
        ref_kl_logps: ``(M,)`` reference log-probs of the mismatched pairs.
        kl: z given directly instead (e.g. gathered across ranks; clamped at 0, detached).
        desirable_weight: λ_D (> 0).
        undesirable_weight: λ_U (> 0).
        loss_type: ``kto`` or ``apo_zero_unpaired`` (which ignores z).

    Returns:
        :class:`KTOLoss` ``(losses, chosen_rewards, rejected_rewards, kl)``.

    Raises:
        ValueError: bad beta/weights/loss_type, mismatched shapes, or both ``kl`` and KL log-probs given.
    """
    if not beta > 0:
        raise ValueError(f"beta must be > 0, got {beta}")
    if loss_type not in KTO_LOSS_TYPES:
        raise ValueError(f"unknown KTO loss_type {loss_type!r}; valid: {', '.join(KTO_LOSS_TYPES)}")
    if not (desirable_weight > 0 and undesirable_weight > 0):
        raise ValueError(
            f"desirable_weight and undesirable_weight must be > 0, got {desirable_weight}, {undesirable_weight}"
        )
    for name, pol, ref in (
        ("chosen", policy_chosen_logps, ref_chosen_logps),
        ("rejected", policy_rejected_logps, ref_rejected_logps),
    ):
        if pol.shape != ref.shape or pol.dim() != 1:
            raise ValueError(f"{name}: policy {tuple(pol.shape)} and reference {tuple(ref.shape)} must be one (N,)")
    has_kl_logps = policy_kl_logps is not None or ref_kl_logps is not None
    if has_kl_logps and kl is not None:
        raise ValueError("give the KTO reference point either as kl= or as policy_kl_logps/ref_kl_logps, not both")
    if has_kl_logps:
        if policy_kl_logps is None or ref_kl_logps is None:
            raise ValueError("policy_kl_logps and ref_kl_logps go together")
        z = kto_reference_point(policy_kl_logps, ref_kl_logps)
    else:
        z = torch.as_tensor(0.0 if kl is None else kl, dtype=policy_chosen_logps.dtype).detach().clamp(min=0)
    z = z.to(device=policy_chosen_logps.device)

    chosen_logratios = policy_chosen_logps - ref_chosen_logps
    rejected_logratios = policy_rejected_logps - ref_rejected_logps
    if loss_type == "kto":
        chosen_losses = 1 - F.sigmoid(beta * (chosen_logratios - z))
        rejected_losses = 1 - F.sigmoid(beta * (z - rejected_logratios))
    else:  # apo_zero_unpaired
        chosen_losses = 1 - F.sigmoid(beta * chosen_logratios)
        rejected_losses = F.sigmoid(beta * rejected_logratios)
    losses = torch.cat([desirable_weight * chosen_losses, undesirable_weight * rejected_losses])
    return KTOLoss(losses, beta * chosen_logratios.detach(), beta * rejected_logratios.detach(), z)


def kto_metrics(
    out: KTOLoss, policy_chosen_logps: torch.Tensor, policy_rejected_logps: torch.Tensor
) -> dict[str, torch.Tensor]:
    """TRL 1.16 KTO metric names and definitions (batch means, detached 0-dim fp32 tensors).

    ``kl`` always; ``rewards/chosen`` and ``logps/chosen`` when the batch has desirable rows; ``rewards/rejected``
    and ``logps/rejected`` when it has undesirable rows; ``rewards/margins`` (chosen − rejected) when it has both.
    """
    metrics = {"kl": out.kl.detach().float()}
    with torch.no_grad():
        if out.chosen_rewards.numel():
            metrics["rewards/chosen"] = out.chosen_rewards.float().mean()
            metrics["logps/chosen"] = policy_chosen_logps.detach().float().mean()
        if out.rejected_rewards.numel():
            metrics["rewards/rejected"] = out.rejected_rewards.float().mean()
            metrics["logps/rejected"] = policy_rejected_logps.detach().float().mean()
        if out.chosen_rewards.numel() and out.rejected_rewards.numel():
            metrics["rewards/margins"] = metrics["rewards/chosen"] - metrics["rewards/rejected"]
    return metrics
