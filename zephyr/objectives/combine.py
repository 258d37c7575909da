"""Weighted lists of paired preference losses (TRL 1.x ``loss_type=[...]`` with ``loss_weights``).

The total is ``Σ_k w_k · mean_b loss_k(b)``, exactly TRL 1.16's ``loss += per_sequence_loss.mean() * weight``
(MPO, Wang et al. 2024, arXiv 2411.10442, is ``["sigmoid", "bco_pair", "sft"]``; zephyr's ``rpo_alpha`` is the
``sft`` term with weight α). Each term's unweighted batch mean is returned too, for ``train/loss/<name>`` logs.

One set of log-probs feeds every term, so a list that mixes summed and length-averaged losses (``ipo``,
``sigmoid_norm``, ``sft``) needs the token counts: pass **summed** log-probs with ``chosen_token_counts`` and
``rejected_token_counts`` and each term normalises as TRL does. ``label_smoothing`` goes only to the terms that
define it (:data:`~zephyr.objectives.dpo.LABEL_SMOOTHING_LOSS_TYPES`), as TRL applies it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import torch

from zephyr.objectives.dpo import (
    LABEL_SMOOTHING_LOSS_TYPES,
    LENGTH_AVERAGED_LOSS_TYPES,
    check_loss_type,
    preference_loss,
)

__all__ = ["CombinedLoss", "combined_preference_loss", "normalize_loss_list"]


class CombinedLoss(NamedTuple):
    """Output of :func:`combined_preference_loss`.

    Attributes:
        loss: 0-dim weighted total ``Σ_k w_k · mean(loss_k)`` (differentiable).
        terms: ``{name: mean(loss_k)}`` unweighted 0-dim terms, in list order (differentiable; detach to log).
        chosen_rewards: ``(B,)`` detached ``β·ρ_w`` (the same for every term).
        rejected_rewards: ``(B,)`` detached ``β·ρ_l``.
    """

    loss: torch.Tensor
    terms: dict[str, torch.Tensor]
    chosen_rewards: torch.Tensor
    rejected_rewards: torch.Tensor


def normalize_loss_list(
    loss_type: str | Sequence[str], loss_weights: Sequence[float] | None = None
) -> tuple[tuple[str, ...], tuple[float, ...]]:
    """One name or a list, and optional weights, as ``(names, weights)``; weights default to all 1.

    Raises:
        ValueError: an empty list, an unknown or repeated name (listing the known ones), or weights of another
            length than the names (naming both lengths).
    """
    names = (loss_type,) if isinstance(loss_type, str) else tuple(loss_type)
    if not names:
        raise ValueError("loss_type is an empty list; give at least one loss name")
    for name in names:
        check_loss_type(name)
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ValueError(f"loss_type lists {', '.join(repeated)} more than once; give each loss once with a weight")
    if loss_weights is None:
        return names, (1.0,) * len(names)
    weights = tuple(float(w) for w in loss_weights)
    if len(weights) != len(names):
        raise ValueError(f"loss_weights has {len(weights)} entries but loss_type has {len(names)}: {list(names)}")
    return names, weights


def combined_preference_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    *,
    beta: float,
    loss_type: str | Sequence[str],
    loss_weights: Sequence[float] | None = None,
    label_smoothing: float = 0.0,
    **options: Any,
) -> CombinedLoss:
    """Weighted sum of :func:`~zephyr.objectives.dpo.preference_loss` terms, and each term's mean.

    Args:
        policy_chosen_logps: ``(B,)`` as for ``preference_loss`` (summed when the list needs token counts).
        policy_rejected_logps: ``(B,)``.
        ref_chosen_logps: ``(B,)``.
        ref_rejected_logps: ``(B,)``.
        beta: β, shared by every term.
        loss_type: one name or a list of names of :data:`~zephyr.objectives.dpo.LOSS_TYPES`.
        loss_weights: one weight per name (default all 1).
        label_smoothing: ε, passed to the terms that use it.
        **options: any other keyword of ``preference_loss`` (``discopop_tau``, ``f_divergence_type``,
            ``chosen_token_counts``, ``pair_weights``, ...), passed to every term.

    Returns:
        :class:`CombinedLoss` ``(loss, terms, chosen_rewards, rejected_rewards)``.

    Raises:
        ValueError: from :func:`normalize_loss_list` or ``preference_loss``; a non-zero ``label_smoothing`` that
            no term uses; a list mixing summed and length-averaged terms without token counts.
    """
    names, weights = normalize_loss_list(loss_type, loss_weights)
    if label_smoothing != 0.0 and not set(names) & set(LABEL_SMOOTHING_LOSS_TYPES):
        raise ValueError(
            f"label_smoothing={label_smoothing} is used by none of {list(names)} "
            f"(it applies to {', '.join(LABEL_SMOOTHING_LOSS_TYPES)})"
        )
    averaged = [n for n in names if n in (*LENGTH_AVERAGED_LOSS_TYPES, "sft")]
    if len(names) > 1 and averaged:
        missing = [k for k in ("chosen_token_counts", "rejected_token_counts") if options.get(k) is None]
        if missing:
            raise ValueError(
                f"loss list {list(names)} mixes summed and length-normalised terms ({', '.join(averaged)}): pass "
                f"summed log-probs with {' and '.join(missing)}"
            )
    terms: dict[str, torch.Tensor] = {}
    outs = []
    for name in names:
        eps = label_smoothing if name in LABEL_SMOOTHING_LOSS_TYPES else 0.0
        outs.append(
            preference_loss(
                policy_chosen_logps,
                policy_rejected_logps,
                ref_chosen_logps,
                ref_rejected_logps,
                beta=beta,
                loss_type=name,
                label_smoothing=eps,
                **options,
            )
        )
        terms[name] = outs[-1].losses.mean()
    total = torch.stack([w * terms[n] for n, w in zip(names, weights, strict=True)]).sum()
    return CombinedLoss(total, terms, outs[0].chosen_rewards, outs[0].rejected_rewards)
