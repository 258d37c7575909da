"""Prefix-shared DPO batches: one row per pair, ``[prompt, chosen, rejected]``, the prompt run through the model once.

The concatenated layout (:func:`zephyr.data.preference_module.collate_pairs`) runs every prompt twice, once
before ``chosen`` and once before ``rejected``. Here row ``b`` holds ``prompt_b + chosen_b + rejected_b`` (then
padding) and an explicit 4-D attention mask makes the result identical to two separate sequences:

* prompt tokens attend causally to the prompt;
* chosen tokens attend to the prompt and causally to chosen;
* rejected tokens attend to the prompt and causally to rejected, never to chosen;
* padding attends causally to padding only (so no query row is fully masked).

Position ids continue from the prompt's end for both completions (rejected restarts at ``len(prompt)``).
transformers' packed-sequence detection only understands position ids that restart at 0, so the mask must be
given explicitly; transformers 5 passes a 4-D ``attention_mask`` to the attention kernel unchanged. SDPA reads
a boolean mask; the ``eager`` kernel (every family's fallback, and Gemma2's only one) *adds* the mask to the
scores, so :func:`mask_for_kernel` turns it into 0 / dtype-min first (a boolean mask added there is silently
wrong: True adds 1).

Scoring needs two target maps, because the prompt's last position predicts both ``chosen[0]`` and
``rejected[0]``: ``chosen_targets[b, t]`` is the chosen token predicted by the hidden state at ``t`` (else
``-100``), likewise ``rejected_targets`` (see :func:`zephyr.objectives.prefix_share.prefix_shared_logps`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from zephyr.data.collate import IGNORE_INDEX

PROMPT, CHOSEN, REJECTED, PAD = 0, 1, 2, 3


def segment_mask(segments: torch.Tensor) -> torch.Tensor:
    """Boolean attention mask ``(B, 1, T, T)`` (True = may attend) from per-position segment ids ``(B, T)``."""
    q = segments.unsqueeze(2)  # (B, T, 1) query segment
    k = segments.unsqueeze(1)  # (B, 1, T) key segment
    same = q == k
    completion_sees_prompt = (k == PROMPT) & ((q == CHOSEN) | (q == REJECTED))
    T = segments.shape[1]
    causal = torch.ones(T, T, dtype=torch.bool, device=segments.device).tril()
    return ((same | completion_sees_prompt) & causal).unsqueeze(1)


def mask_for_kernel(mask: torch.Tensor, attn_implementation: str | None, dtype: torch.dtype) -> torch.Tensor:
    """``mask`` as the attention kernel reads it: boolean for SDPA, additive ``0`` / ``finfo(dtype).min`` for eager.

    Args:
        mask: ``(B, 1, T, T)`` boolean mask of :func:`segment_mask` (True = may attend).
        attn_implementation: the model's ``config._attn_implementation``.
        dtype: the model's floating dtype (the scores' dtype in the eager kernel).
    """
    if attn_implementation != "eager" or mask.dtype != torch.bool:
        return mask
    additive = torch.zeros(mask.shape, dtype=dtype, device=mask.device)
    return additive.masked_fill(~mask, torch.finfo(dtype).min)


def collate_pairs_prefix_shared(
    items: Sequence[Mapping[str, Any]], pad_id: int, pad_to_multiple_of: int = 8
) -> dict[str, torch.Tensor]:
    """Lay out B tokenised pairs as B rows ``[prompt, chosen, rejected, padding]``.

    Args:
        items: dicts with ``prompt``, ``chosen``, ``rejected`` (token id lists; prompt non-empty) and optionally
            ``index`` (int), as built by :class:`zephyr.data.preference_module.PreferenceDataModule`.
        pad_id: padding token id.
        pad_to_multiple_of: round T up to a multiple of this (1 disables).

    Returns:
        ``input_ids``, ``position_ids``, ``chosen_targets``, ``rejected_targets``: ``(B, T)`` int64;
        ``attention_mask``: ``(B, 1, T, T)`` bool; ``index``: ``(B,)`` when the items carry it;
        ``num_tokens``: ``()`` tokens in the rows; ``num_pair_tokens``: ``()`` the same work counted as the
        concatenated layout would (``2·prompt + chosen + rejected``).

    Raises:
        ValueError: an empty batch or a pair with an empty prompt (its first completion token would have no
            predicting position), naming the item.
    """
    if not items:
        raise ValueError("cannot collate an empty list of preference pairs")
    for i, it in enumerate(items):
        if not it["prompt"]:
            raise ValueError(f"pair {i} (index {it.get('index', i)}) has an empty prompt")
    lengths = [len(it["prompt"]) + len(it["chosen"]) + len(it["rejected"]) for it in items]
    T = max(lengths)
    if pad_to_multiple_of > 1:
        T = -(-T // pad_to_multiple_of) * pad_to_multiple_of
    B = len(items)
    input_ids = torch.full((B, T), pad_id, dtype=torch.long)
    position_ids = torch.zeros((B, T), dtype=torch.long)
    segments = torch.full((B, T), PAD, dtype=torch.long)
    chosen_targets = torch.full((B, T), IGNORE_INDEX, dtype=torch.long)
    rejected_targets = torch.full((B, T), IGNORE_INDEX, dtype=torch.long)
    for b, it in enumerate(items):
        p, c, r = list(it["prompt"]), list(it["chosen"]), list(it["rejected"])
        P, C, R = len(p), len(c), len(r)
        input_ids[b, : P + C + R] = torch.tensor(p + c + r, dtype=torch.long)
        position_ids[b, :P] = torch.arange(P)
        position_ids[b, P : P + C] = torch.arange(P, P + C)
        position_ids[b, P + C : P + C + R] = torch.arange(P, P + R)
        position_ids[b, P + C + R :] = torch.arange(T - (P + C + R))
        segments[b, :P], segments[b, P : P + C], segments[b, P + C : P + C + R] = PROMPT, CHOSEN, REJECTED
        if C:
            # chosen[k] is predicted at the position before it: prompt end for k = 0, then chosen[k-1]
            chosen_targets[b, P - 1 : P + C - 1] = torch.tensor(c, dtype=torch.long)
        if R:
            rejected_targets[b, P - 1] = r[0]  # the prompt's last position also predicts rejected[0]
            if R > 1:
                rejected_targets[b, P + C : P + C + R - 1] = torch.tensor(r[1:], dtype=torch.long)
    batch = {
        "input_ids": input_ids,
        "position_ids": position_ids,
        "attention_mask": segment_mask(segments),
        "chosen_targets": chosen_targets,
        "rejected_targets": rejected_targets,
        "num_tokens": torch.tensor(sum(lengths)),
        "num_pair_tokens": torch.tensor(
            sum(2 * len(it["prompt"]) + len(it["chosen"]) + len(it["rejected"]) for it in items)
        ),
    }
    if all("index" in it for it in items):
        batch["index"] = torch.tensor([int(it["index"]) for it in items], dtype=torch.long)
    return batch


__all__ = ["collate_pairs_prefix_shared", "segment_mask"]
