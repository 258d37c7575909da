"""Reference-free preference losses (SimPO, ORPO, CPO): the policy's own log-probs, no reference model.

Each returns per-example losses ``(B,)`` first, then detached rewards ``β·logps`` (TRL's ``rewards/*`` for these
trainers), so :func:`zephyr.objectives.dpo.preference_metrics` logs them unchanged. The NLL term of ORPO and CPO
is the module's (:func:`zephyr.objectives.sft.sft_loss` on the chosen rows, or
:func:`zephyr.objectives.dpo.rpo_nll`); these functions return only the preference term.

* SimPO, Meng et al. 2024, arXiv 2405.14734, Eq. 6: ``−log σ(β·(avg log π(y_w) − avg log π(y_l)) − γ)`` on
  **length-averaged** log-probs, with a target margin γ. Same as TRL 1.16's ``CPOTrainer(loss_type="simpo")``
  (which writes it as ``β·(Δ − γ/β)``), including its cDPO ``label_smoothing``.
* ORPO, Hong et al. 2024, arXiv 2403.07691, Eqs. 4-7: with ``odds(y) = p/(1 − p)`` and ``p = exp(avg log π(y))``,
  ``log_odds = (a_w − a_l) − (log(1 − e^{a_w}) − log(1 − e^{a_l}))`` and the term ``−β·log σ(log_odds)``. The paper
  calls β λ and averages the log-probs over tokens, as TRL's ``ORPOTrainer`` does; TRL maximises
  ``β·log σ(log_odds)`` and reports ``loss = nll − mean(that)``, so this function returns its negation to minimise.
* CPO, Xu et al. 2024, arXiv 2401.08417, Eq. 3: DPO with the reference dropped, ``−log σ(β·(log π(y_w) −
  log π(y_l)))`` on **summed** log-probs, plus the module's NLL on y_w (TRL ``cpo_alpha``, default 1). TRL's
  AlphaPO reward transform (``alpha != 0``) is not provided.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

from zephyr.objectives.dpo import PreferenceLoss

__all__ = ["ORPOLoss", "cpo_loss", "log1mexp", "orpo_loss", "simpo_loss"]


def _check_pair(chosen: torch.Tensor, rejected: torch.Tensor, beta: float, label_smoothing: float = 0.0) -> None:
    if chosen.shape != rejected.shape or chosen.dim() != 1:
        raise ValueError(
            f"expected (B,) tensors of one shape, got chosen {tuple(chosen.shape)}, rejected {tuple(rejected.shape)}"
        )
    if not beta > 0:
        raise ValueError(f"beta must be > 0, got {beta}")
    if not 0.0 <= label_smoothing <= 0.5:
        raise ValueError(f"label_smoothing must be in [0, 0.5], got {label_smoothing}")


def _soft_bce(z: torch.Tensor, eps: float) -> torch.Tensor:
    return -(1 - eps) * F.logsigmoid(z) - eps * F.logsigmoid(-z)


def simpo_loss(
    chosen_avg_logps: torch.Tensor,
    rejected_avg_logps: torch.Tensor,
    *,
    beta: float,
    gamma: float,
    label_smoothing: float = 0.0,
) -> PreferenceLoss:
    """SimPO: ``−log σ(β(a_w − a_l) − γ)`` per pair (cDPO-smoothed with ``label_smoothing``).

    Args:
        chosen_avg_logps: ``(B,)`` length-averaged log π_θ(y_w|x).
        rejected_avg_logps: ``(B,)`` length-averaged log π_θ(y_l|x).
        beta: reward scale β (> 0; the paper uses 2-10).
        gamma: target reward margin γ (TRL ``simpo_gamma``, default 0.5).
        label_smoothing: ε ∈ [0, 0.5].

    Returns:
        :class:`~zephyr.objectives.dpo.PreferenceLoss` ``(losses, β·a_w, β·a_l)``, rewards detached.
    """
    _check_pair(chosen_avg_logps, rejected_avg_logps, beta, label_smoothing)
    losses = _soft_bce(beta * (chosen_avg_logps - rejected_avg_logps) - gamma, label_smoothing)
    return PreferenceLoss(losses, beta * chosen_avg_logps.detach(), beta * rejected_avg_logps.detach())


def cpo_loss(
    chosen_logps: torch.Tensor, rejected_logps: torch.Tensor, *, beta: float, label_smoothing: float = 0.0
) -> PreferenceLoss:
    """CPO's preference term: ``−log σ(β(log π(y_w) − log π(y_l)))`` per pair; the module adds ``cpo_alpha``·NLL.

    Args:
        chosen_logps: ``(B,)`` summed log π_θ(y_w|x).
        rejected_logps: ``(B,)`` summed log π_θ(y_l|x).
        beta: β (> 0).
        label_smoothing: ε ∈ [0, 0.5] (TRL's conservative CPO).

    Returns:
        :class:`~zephyr.objectives.dpo.PreferenceLoss` ``(losses, β·log π(y_w), β·log π(y_l))``, rewards detached.
    """
    _check_pair(chosen_logps, rejected_logps, beta, label_smoothing)
    losses = _soft_bce(beta * (chosen_logps - rejected_logps), label_smoothing)
    return PreferenceLoss(losses, beta * chosen_logps.detach(), beta * rejected_logps.detach())


def log1mexp(x: torch.Tensor) -> torch.Tensor:
    """Numerically stable ``log(1 − exp(x))`` for ``x < 0`` (branch at −log 2, Mächler 2012; as TRL's ORPO)."""
    return torch.where(x < -0.6931471805599453, torch.log1p(-torch.exp(x)), torch.log(-torch.expm1(x)))


class ORPOLoss(NamedTuple):
    """ORPO's odds-ratio term and its logs, all ``(B,)``.

    Attributes:
        losses: ``−β·log σ(log_odds)``, differentiable (add the chosen NLL to its mean).
        chosen_rewards: ``β·a_w``, detached.
        rejected_rewards: ``β·a_l``, detached.
        log_odds_ratio: ``log σ(log_odds)``, detached (TRL logs its mean as ``log_odds_ratio``).
        log_odds_chosen: ``log_odds``, detached (TRL logs its mean as ``log_odds_chosen``).
    """

    losses: torch.Tensor
    chosen_rewards: torch.Tensor
    rejected_rewards: torch.Tensor
    log_odds_ratio: torch.Tensor
    log_odds_chosen: torch.Tensor


def orpo_loss(chosen_avg_logps: torch.Tensor, rejected_avg_logps: torch.Tensor, *, beta: float) -> ORPOLoss:
    """ORPO's odds-ratio term to minimise, ``−β·log σ(log odds(y_w) − log odds(y_l))``, computed in fp32.

    Args:
        chosen_avg_logps: ``(B,)`` length-averaged log π_θ(y_w|x) (< 0).
        rejected_avg_logps: ``(B,)`` length-averaged log π_θ(y_l|x) (< 0).
        beta: λ of the paper (TRL's ``beta``, default 0.1), > 0.

    Returns:
        :class:`ORPOLoss` ``(losses, chosen_rewards, rejected_rewards, log_odds_ratio, log_odds_chosen)``.
    """
    _check_pair(chosen_avg_logps, rejected_avg_logps, beta)
    a_w, a_l = chosen_avg_logps.float(), rejected_avg_logps.float()
    log_odds = (a_w - a_l) - (log1mexp(a_w) - log1mexp(a_l))
    ratio = F.logsigmoid(log_odds)
    return ORPOLoss(-beta * ratio, beta * a_w.detach(), beta * a_l.detach(), ratio.detach(), log_odds.detach())
