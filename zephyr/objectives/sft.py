"""Supervised fine-tuning loss: token-mean next-token cross-entropy over the labels that count.

The handbook's dSFT (TRL 0.7 ``SFTTrainer(packing=True)``) puts the loss on every token, so its labels are the
input ids; masking prompts (``-100``) works the same way. The loss is ``Σ −log p(y_t) / N`` over the N counted
(shifted) labels of the whole batch, like ``F.cross_entropy(..., ignore_index=-100)``, except that a batch with
no counted token gives 0 (with a connected graph) instead of NaN.

:func:`sft_loss_from_hidden` is the memory-lean route: it projects onto the vocabulary only at counted
positions, in chunks (see :func:`zephyr.objectives.logprobs.token_logps_from_hidden`).
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from zephyr.objectives.logprobs import TokenStats, completion_logps, token_logps_from_hidden

__all__ = ["SFTLoss", "sft_loss", "sft_loss_from_hidden"]


class SFTLoss(NamedTuple):
    """Token-mean cross-entropy (0-dim fp32), the number of counted tokens (0-dim int64), optional token stats."""

    loss: torch.Tensor
    num_tokens: torch.Tensor
    stats: TokenStats | None = None


def sft_loss(logits: torch.Tensor, labels: torch.Tensor, *, ignore_index: int = -100) -> SFTLoss:
    """Token-mean cross-entropy with the one-token shift, from full logits.

    Args:
        logits: ``(B, T, V)`` model outputs (upcast to fp32).
        labels: ``(B, T)`` target ids, ``ignore_index`` where no loss is taken.
        ignore_index: label value that is not scored.

    Returns:
        :class:`SFTLoss` ``(loss, num_tokens)``; ``loss`` is 0 when ``num_tokens`` is 0.

    Raises:
        ValueError: naming both shapes when they do not match.
    """
    total = completion_logps(logits, labels, ignore_index=ignore_index).sum()
    num_tokens = (labels[:, 1:] != ignore_index).sum()
    return SFTLoss(-total / num_tokens.clamp(min=1), num_tokens)


def sft_loss_from_hidden(
    hidden: torch.Tensor,
    lm_head_weight: torch.Tensor,
    labels: torch.Tensor,
    *,
    lm_head_bias: torch.Tensor | None = None,
    ignore_index: int = -100,
    chunk_size: int = 1024,
    softcap: float | None = None,
    stats: bool = False,
) -> SFTLoss:
    """Same loss as :func:`sft_loss`, computing the LM head only at counted positions, ``chunk_size`` at a time.

    Args:
        hidden: ``(B, T, H)`` final hidden states (the LM head's input).
        lm_head_weight: ``(V, H)`` LM-head weight.
        labels: ``(B, T)`` target ids, ``ignore_index`` where no loss is taken.
        lm_head_bias: optional ``(V,)`` bias.
        ignore_index: label value that is not scored.
        chunk_size: counted positions projected at once (peak extra memory ``chunk_size × V`` fp32).
        softcap: final-logit soft-cap of the model (:func:`zephyr.objectives.logprobs.logit_softcap`).
        stats: also return :class:`~zephyr.objectives.logprobs.TokenStats` (entropy, top-1) from the same chunks.

    Returns:
        :class:`SFTLoss` ``(loss, num_tokens, stats)``.
    """
    out = token_logps_from_hidden(
        hidden,
        lm_head_weight,
        labels,
        lm_head_bias=lm_head_bias,
        ignore_index=ignore_index,
        chunk_size=chunk_size,
        softcap=softcap,
        stats=stats,
    )
    num_tokens = out.token_counts.sum()
    return SFTLoss(-out.logps.sum() / num_tokens.clamp(min=1), num_tokens, out.stats)
