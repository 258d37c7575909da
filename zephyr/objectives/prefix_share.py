"""Completion log-probs of prefix-shared DPO rows (see :func:`zephyr.data.collate.collate_pairs_shared`).

A prefix-shared row ``[prompt, chosen, rejected]`` carries two pre-shifted target maps: the hidden state at
``t`` predicts ``chosen_targets[:, t]`` and/or ``rejected_targets[:, t]``. Each map is turned into the usual
"labels" form (``labels[:, t + 1]`` predicted at ``t``) by shifting it right by one, and scored with
:func:`zephyr.objectives.logprobs.token_logps_from_hidden`, which projects onto the vocabulary only at counted
positions. The result has the concatenated layout's order: ``[chosen_1..chosen_B, rejected_1..rejected_B]``.
"""

from __future__ import annotations

import torch

from zephyr.objectives.logprobs import SequenceLogps, cat_sequence_logps, token_logps_from_hidden

__all__ = ["prefix_shared_logps"]


def _as_labels(targets: torch.Tensor, ignore_index: int) -> torch.Tensor:
    """``(B, T)`` targets predicted at ``t`` -> labels whose ``[:, t + 1]`` is predicted at ``t``."""
    return torch.nn.functional.pad(targets[:, :-1], (1, 0), value=ignore_index)


def prefix_shared_logps(
    hidden: torch.Tensor,
    lm_head_weight: torch.Tensor,
    chosen_targets: torch.Tensor,
    rejected_targets: torch.Tensor,
    *,
    lm_head_bias: torch.Tensor | None = None,
    ignore_index: int = -100,
    chunk_size: int = 1024,
    average: bool = False,
    softcap: float | None = None,
    stats: bool = False,
) -> SequenceLogps:
    """Chosen and rejected completion log-probs from one prefix-shared forward.

    Args:
        hidden: ``(B, T, H)`` final hidden states of the prefix-shared rows.
        lm_head_weight: ``(V, H)``.
        chosen_targets: ``(B, T)`` chosen token predicted at each position, ``ignore_index`` elsewhere.
        rejected_targets: ``(B, T)`` likewise for rejected.
        lm_head_bias: optional ``(V,)``.
        ignore_index: the "no target" value.
        chunk_size: counted positions projected at once.
        average: per-row means instead of sums (IPO).
        softcap: final-logit soft-cap (:func:`zephyr.objectives.logprobs.logit_softcap`).
        stats: also return per-token :class:`~zephyr.objectives.logprobs.TokenStats`.

    Returns:
        :class:`SequenceLogps` of ``(2B,)`` tensors, chosen rows first, equal to what
        :func:`zephyr.modules.reference.pair_logps` gives on the concatenated layout of the same pairs.
    """
    if chosen_targets.shape != rejected_targets.shape:
        raise ValueError(
            f"chosen_targets {tuple(chosen_targets.shape)} and rejected_targets {tuple(rejected_targets.shape)} differ"
        )
    outs = [
        token_logps_from_hidden(
            hidden,
            lm_head_weight,
            _as_labels(t, ignore_index),
            lm_head_bias=lm_head_bias,
            ignore_index=ignore_index,
            chunk_size=chunk_size,
            average=average,
            softcap=softcap,
            stats=stats,
        )
        for t in (chosen_targets, rejected_targets)
    ]
    return cat_sequence_logps(outs[0], outs[1])
