"""Token-level helpers of two DPO options that change the log-probs, not the loss: WPO weights and LD-DPO sums.

Both take **per-token** completion log-probs aligned with a 0/1 mask, ``(N, T)``: ``token_logps[:, t]`` is the
log-prob of the token the mask counts at ``t`` (the shifted layout of TRL's ``per_token_logps`` and
``shift_completion_mask``). The module computes these from its forward and feeds the results to
:func:`zephyr.objectives.dpo.preference_loss` (``pair_weights=`` for WPO; the LD-DPO sums as the log-probs of the
policy **and** of the reference, with the same masks).

* WPO, Zhou et al. 2024, arXiv 2406.11827, Eq. 2 (TRL 1.16 ``use_weighting``): each sequence gets the weight
  ``w(y) = exp(mean_t [log p(y_t) − log Σ_v p(v)²])`` from the policy's own next-token distributions, without
  gradient; the pair's loss is multiplied by ``w(y_w)·w(y_l)``. Subtracting ``log Σ_v p_v²`` (TRL's "aligned"
  log-probs) makes ``w = 1`` when the sequence is as likely as the policy's own samples on average, so weights stay
  O(1) instead of vanishing like raw ``exp(mean log p)``.
* LD-DPO, Liu et al. 2024, arXiv 2409.06411 (TRL 1.16 ``ld_alpha``): per pair, the first ``min(|y_w|, |y_l|)``
  counted tokens of each completion count fully and the rest (the "verbose" tail) is scaled by α ∈ [0, 1]:
  ``log π = Σ_shared log p + α·Σ_tail log p``. α = 1 is plain summed DPO, α = 0 cuts both to the shared length.
"""

from __future__ import annotations

import torch

__all__ = ["ld_dpo_logps", "log_sum_sq_probs", "wpo_sequence_weights"]


def _check_aligned(token_logps: torch.Tensor, mask: torch.Tensor, name: str) -> None:
    if token_logps.dim() != 2 or token_logps.shape != mask.shape:
        raise ValueError(
            f"{name}: expected (N, T) token log-probs with a mask of the same shape, got "
            f"{tuple(token_logps.shape)} and {tuple(mask.shape)}"
        )


def log_sum_sq_probs(logits: torch.Tensor) -> torch.Tensor:
    """``log Σ_v p(v)²`` of each next-token distribution, ``p = softmax(logits)``, without gradient (WPO).

    Args:
        logits: ``(..., V)`` raw logits (upcast to fp32).

    Returns:
        ``(...)`` fp32, ``logsumexp(2·log_softmax(logits))``; equals TRL's fused-head ``log_sum_sq_probs``.
    """
    with torch.no_grad():
        return torch.logsumexp(2 * torch.log_softmax(logits.float(), dim=-1), dim=-1)


def wpo_sequence_weights(
    token_logps: torch.Tensor, token_log_sum_sq_probs: torch.Tensor, mask: torch.Tensor
) -> torch.Tensor:
    """WPO's per-sequence weight ``exp(mean over counted tokens of (log p(y_t) − log Σ_v p_v²))``, detached.

    Args:
        token_logps: ``(N, T)`` policy log-prob of each counted token.
        token_log_sum_sq_probs: ``(N, T)`` from :func:`log_sum_sq_probs` at the same positions.
        mask: ``(N, T)`` 1 where a token counts.

    Returns:
        ``(N,)`` weights (1 for a row with no counted token). A pair's weight is ``w(chosen) · w(rejected)``.

    Raises:
        ValueError: shapes that do not match (naming them).
    """
    _check_aligned(token_logps, mask, "wpo_sequence_weights")
    _check_aligned(token_log_sum_sq_probs, mask, "wpo_sequence_weights")
    with torch.no_grad():
        m = mask.to(token_logps.dtype)
        aligned = (token_logps - token_log_sum_sq_probs) * m
        return torch.exp(aligned.sum(-1) / m.sum(-1).clamp(min=1))


def ld_dpo_logps(
    chosen_token_logps: torch.Tensor,
    chosen_mask: torch.Tensor,
    rejected_token_logps: torch.Tensor,
    rejected_mask: torch.Tensor,
    *,
    alpha: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """LD-DPO sequence log-probs of a batch of pairs: shared-length tokens in full, the tail scaled by ``alpha``.

    The shared length of pair ``i`` is ``min(|y_w|, |y_l|)`` in counted tokens; a token is "shared" when its rank
    among the row's counted tokens is at most that, as TRL's ``cumsum`` of the completion mask. Chosen and
    rejected may be padded to different ``T``. Call it with the policy's and the reference's token log-probs alike.

    Args:
        chosen_token_logps: ``(B, T_w)`` per-token log-probs of the chosen completions.
        chosen_mask: ``(B, T_w)`` 1 where a chosen token counts.
        rejected_token_logps: ``(B, T_l)``.
        rejected_mask: ``(B, T_l)``.
        alpha: LD-DPO's α in [0, 1].

    Returns:
        ``(chosen_logps, rejected_logps)``, each ``(B,)``, differentiable through the token log-probs.

    Raises:
        ValueError: alpha outside [0, 1] or mismatched shapes.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"ld_alpha must be in [0, 1], got {alpha}")
    _check_aligned(chosen_token_logps, chosen_mask, "ld_dpo_logps chosen")
    _check_aligned(rejected_token_logps, rejected_mask, "ld_dpo_logps rejected")
    if chosen_mask.shape[0] != rejected_mask.shape[0]:
        raise ValueError(f"ld_dpo_logps: {chosen_mask.shape[0]} chosen rows but {rejected_mask.shape[0]} rejected")
    shared_len = torch.minimum(chosen_mask.sum(-1), rejected_mask.sum(-1)).unsqueeze(1)  # (B, 1)
    out = []
    for token_logps, mask in ((chosen_token_logps, chosen_mask), (rejected_token_logps, rejected_mask)):
        counted = mask.bool()
        rank = mask.long().cumsum(-1)  # 1-based rank of each counted token
        shared = counted & (rank <= shared_len)
        tail = counted & (rank > shared_len)
        out.append((token_logps * shared).sum(-1) + alpha * (token_logps * tail).sum(-1))
    return out[0], out[1]
