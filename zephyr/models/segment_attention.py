"""Causal attention one packed sequence at a time (``model.segment_attention``, default on).

A packed dSFT row holds several conversations, padding-free: ``position_ids`` restart at 0 for each, and no
2-D mask is passed. transformers turns such rows into a ``(B, 1, T, T)`` block-causal boolean mask for SDPA,
and a masked SDPA computes every ``(query, key)`` pair of the row and masks most of them away: for 1024-token
rows of ~90-token dialogues that is about 20 times the pairs that causal attention within each conversation
needs, in forward and backward (FlashAttention-2's variable-length kernel skips them on GPU; SDPA does not).

The model's attention is registered under :data:`NAME` (transformers' ``AttentionInterface``, with SDPA's own
mask function), and :meth:`zephyr.modules.base.ZephyrModule.hidden_states` passes each batch's run lengths
(:func:`segment_lengths`) as the ``zephyr_segments`` keyword that transformers forwards to every attention
call. Then each run is one causal SDPA call (``is_causal=True``, grouped-query heads as they are), on views
split from the row, so the outputs equal the masked call's to float rounding and the backward writes each
run's gradient into its slice. Any call without that keyword (generation, evaluation, the DPO pair rows with
their 4-D mask, a KV cache) or that the split cannot serve (soft-capped logits, a sliding window shorter than a
run) is transformers' SDPA unchanged. Nothing is saved with the model: ``config.json`` never records the
attention implementation, so an export loads as plain SDPA.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from zephyr.models.adapters import unwrapped

NAME = "zephyr_segment_sdpa"
KEYWORD = "zephyr_segments"


def _register() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(NAME, segment_sdpa_attention)
    AttentionMaskInterface.register(NAME, sdpa_mask)


def use_segment_attention(model: torch.nn.Module) -> bool:
    """Switch ``model`` (plain or PEFT-wrapped) from ``sdpa`` to :data:`NAME`.

    Returns:
        ``False`` (unchanged) for any other attention implementation (``eager``; ``flash_attention_2``, which has
        its own variable-length kernel).
    """
    inner = unwrapped(model)
    config = getattr(inner, "config", None)
    if config is None or getattr(config, "_attn_implementation", None) != "sdpa":
        return False
    _register()
    inner.set_attn_implementation(NAME)
    return True


def drop_segment_attention(model: torch.nn.Module) -> bool:
    """Back to transformers' ``sdpa`` (for ``torch.compile``: a Python loop over each batch's own run lengths would
    recompile the layers for every new batch); ``True`` if it was on.
    """
    if not uses_segment_attention(model):
        return False
    unwrapped(model).set_attn_implementation("sdpa")
    return True


def uses_segment_attention(model: torch.nn.Module) -> bool:
    """Whether ``model``'s attention is :data:`NAME` (so a packed batch should pass its run lengths)."""
    return getattr(getattr(unwrapped(model), "config", None), "_attn_implementation", None) == NAME


def segment_lengths(position_ids: torch.Tensor) -> tuple[tuple[int, ...], ...]:
    """Per row of ``(B, T)`` position ids, the lengths of its runs of consecutive positions.

    A run starts wherever a position is not the previous one plus 1, exactly where transformers' packed-sequence
    mask (``find_packed_sequence_indices``) starts a new sequence; a padding tail laid out as its own run (the
    collators' ``arange``) is one run.
    """
    if position_ids.dim() != 2:
        raise ValueError(f"position_ids must be (B, T), got {tuple(position_ids.shape)}")
    starts = torch.ones_like(position_ids, dtype=torch.bool)
    starts[:, 1:] = position_ids[:, 1:] != position_ids[:, :-1] + 1
    T = position_ids.shape[1]
    rows = []
    for row in starts.cpu():
        idx = row.nonzero().flatten().tolist() + [T]
        rows.append(tuple(b - a for a, b in zip(idx[:-1], idx[1:])))
    return tuple(rows)


def _splittable(module: torch.nn.Module, query, key, segments, kwargs: dict[str, Any]) -> bool:
    B, _, T, _ = query.shape
    if key.shape[2] != T or len(segments) != B or any(sum(row) != T for row in segments):
        return False  # a KV cache (decoding) or lengths of another batch
    if kwargs.get("softcap") is not None or kwargs.get("position_bias") is not None:
        return False
    if not getattr(module, "is_causal", True):
        return False
    window = kwargs.get("sliding_window")
    return not window or max(max(row) for row in segments) <= int(window)


def segment_sdpa_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    is_causal: bool | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """Attention with transformers' signature: ``(B, H, T, D)`` queries, ``(B, KV, T, D)`` keys and values.

    With ``zephyr_segments`` (:func:`segment_lengths` of this batch) each run is one causal SDPA call and the
    ``attention_mask`` (the block-causal mask of those same runs) is not read; without it, transformers' SDPA.

    Returns:
        ``((B, T, H, D) attention output, None)``, as every transformers attention function.
    """
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    segments = kwargs.pop(KEYWORD, None)
    if segments is None or not _splittable(module, query, key, segments, kwargs):
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, is_causal=is_causal, **kwargs
        )
    gqa = query.shape[1] != key.shape[1]
    rows = []
    for q, k, v, runs in zip(query.unbind(0), key.unbind(0), value.unbind(0), segments):
        parts = [
            F.scaled_dot_product_attention(
                qs[None], ks[None], vs[None], dropout_p=dropout, is_causal=True, scale=scaling, enable_gqa=gqa
            )
            for qs, ks, vs in zip(q.split(runs, 1), k.split(runs, 1), v.split(runs, 1))
        ]
        rows.append(torch.cat(parts, 2) if len(parts) > 1 else parts[0])
    out = torch.cat(rows, 0) if len(rows) > 1 else rows[0]
    return out.transpose(1, 2).contiguous(), None
