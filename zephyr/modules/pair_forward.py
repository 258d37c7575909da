"""The forward over a preference batch: chosen and rejected completion log-probs of a model in one pass.

:func:`pair_logps` is the one place a model meets a preference batch. The dDPO policy step
(:class:`zephyr.modules.dpo.DPOModule`), the reference (live or filling the cache,
:class:`zephyr.modules.reference.Reference`), the benchmark and the tests all call it, so policy and reference
log-probs are computed the same way by construction. It takes both batch layouts of
:class:`zephyr.data.preference.PreferenceDataModule` and a PEFT model as well as a plain one
(:func:`zephyr.modules.base.lm_parts`).
"""

from __future__ import annotations

import logging

import torch

from zephyr.data.collate import mask_for_kernel
from zephyr.modules.base import lm_parts
from zephyr.objectives.logprobs import (
    SequenceLogps,
    cat_sequence_logps,
    completion_logits_sum,
    completion_logps,
    logit_softcap,
    prefix_shared_logps,
    token_logps_from_hidden,
    token_stats_from_logits,
)
from zephyr.objectives.weighting import ld_dpo_logps

log = logging.getLogger(__name__)


def _attn_implementation(model: torch.nn.Module) -> str | None:
    return getattr(getattr(model, "config", None), "_attn_implementation", None)


def layout_for(model: torch.nn.Module, layout: str) -> str:
    """The batch layout ``model`` can run: ``prefix_shared`` needs a 4-D mask, so FlashAttention-2 gets ``concat``.

    Logs one warning when it switches; any other layout or kernel is returned unchanged.
    """
    if layout == "prefix_shared" and _attn_implementation(model) == "flash_attention_2":
        log.warning(
            "data.layout=prefix_shared needs a 4-D attention mask, which flash_attention_2 does not take; using concat"
        )
        return "concat"
    return layout


def _as_labels(targets: torch.Tensor) -> torch.Tensor:
    """``(B, T)`` targets predicted at ``t`` -> labels whose ``[:, t + 1]`` is predicted at ``t``."""
    return torch.nn.functional.pad(targets[:, :-1], (1, 0), value=-100)


def _full_logits_logps(logits: torch.Tensor, labels: torch.Tensor, average: bool, stats: bool) -> SequenceLogps:
    """:class:`SequenceLogps` from full ``(N, T, V)`` logits and ``(N, T)`` labels."""
    counts = (labels[:, 1:] != -100).sum(-1)
    return SequenceLogps(
        completion_logps(logits, labels, average=average),
        counts,
        completion_logits_sum(logits, labels),
        token_stats_from_logits(logits, labels) if stats else None,
    )


def _with_ld_alpha(out: SequenceLogps, alpha: float) -> SequenceLogps:
    """``out`` with LD-DPO sequence log-probs (:func:`zephyr.objectives.weighting.ld_dpo_logps`) as ``logps``."""
    b = out.logps.shape[0] // 2
    tl, m = out.stats.token_logps, out.stats.mask
    chosen, rejected = ld_dpo_logps(tl[:b], m[:b], tl[b:], m[b:], alpha=alpha)
    return out._replace(logps=torch.cat([chosen, rejected]))


def pair_logps(
    model: torch.nn.Module,
    batch: dict[str, torch.Tensor],
    *,
    average: bool = False,
    chunked: bool = True,
    chunk_size: int = 1024,
    stats: bool = False,
    ld_alpha: float | None = None,
) -> SequenceLogps:
    """Completion log-probs of the chosen and rejected completions of a preference batch in one forward pass.

    Two batch layouts (:class:`zephyr.data.preference.PreferenceDataModule` ``layout``):

    * concatenated (:func:`zephyr.data.collate.collate_pairs`): ``input_ids``, ``position_ids``,
      ``labels``, all ``(2B, T)``, padding-free, no attention mask;
    * prefix-shared (:func:`zephyr.data.collate.collate_pairs_shared`, recognised by
      ``chosen_targets``): ``input_ids``, ``position_ids``, ``chosen_targets``, ``rejected_targets``
      ``(B, T)`` and a ``(B, 1, T, T)`` boolean ``attention_mask``; scored by
      :func:`zephyr.objectives.logprobs.prefix_shared_logps` (log-probs equal to the concatenated layout's
      within 1e-5). Needs an attention kernel that takes a 4-D mask (sdpa, eager; not FlashAttention-2).

    Args:
        model: a causal LM (or a PEFT model over one) with an output embedding (``lm_head``).
        batch: a batch in either layout.
        average: per-row mean instead of sum (IPO).
        chunked: project onto the vocabulary only at counted positions (no ``(rows, T, V)`` logits).
        chunk_size: counted positions per projection chunk.
        stats: also return :class:`~zephyr.objectives.logprobs.TokenStats` (entropy, top-1 hits, WPO's
            ``log Σ p²`` per row; per-token log-probs), from the same chunked projection (never ``(rows, T, V)``).
        ld_alpha: LD-DPO's α (``None``: plain sums): ``logps`` are the shared-length sums plus α × the tail
            (:func:`zephyr.objectives.weighting.ld_dpo_logps`); not with ``average``.

    Returns:
        :class:`SequenceLogps` of ``(2B,)`` tensors: rows ``[:B]`` chosen, ``[B:]`` rejected, in both layouts.

    Raises:
        ValueError: a prefix-shared batch for a model running FlashAttention-2 (which ignores 4-D masks).
    """
    if ld_alpha is not None and average:
        raise ValueError("ld_alpha (LD-DPO) re-weights summed log-probs; it cannot be combined with average=True")
    out = _pair_logps(model, batch, average, chunked, chunk_size, stats or ld_alpha is not None)
    return out if ld_alpha is None else _with_ld_alpha(out, float(ld_alpha))


def _pair_logps(
    model: torch.nn.Module, batch: dict[str, torch.Tensor], average: bool, chunked: bool, chunk_size: int, stats: bool
) -> SequenceLogps:
    ids, pos = batch["input_ids"], batch["position_ids"]
    shared = "chosen_targets" in batch
    if shared and _attn_implementation(model) == "flash_attention_2":
        raise ValueError(
            "a prefix-shared preference batch needs a 4-D attention mask, which flash_attention_2 does not "
            "take: set data.layout=concat (or hardware.attn_implementation=sdpa)"
        )
    inputs = {"input_ids": ids, "position_ids": pos, "use_cache": False}
    if shared:
        inputs["attention_mask"] = mask_for_kernel(batch["attention_mask"], _attn_implementation(model), model.dtype)
    if chunked:
        body, head = lm_parts(model)
        hidden = body(**inputs).last_hidden_state  # (rows, T, H)
        opts = {"lm_head_bias": head.bias, "chunk_size": chunk_size, "average": average, "stats": stats}
        if shared:
            return prefix_shared_logps(
                hidden,
                head,
                batch["chosen_targets"],
                batch["rejected_targets"],
                softcap=logit_softcap(model),
                **opts,
            )
        return token_logps_from_hidden(hidden, head, batch["labels"], softcap=logit_softcap(model), **opts)
    logits = model(**inputs).logits  # (rows, T, V)
    if not shared:
        return _full_logits_logps(logits, batch["labels"], average, stats)
    outs = [
        _full_logits_logps(logits, _as_labels(batch[k]), average, stats) for k in ("chosen_targets", "rejected_targets")
    ]
    return cat_sequence_logps(outs[0], outs[1])


__all__ = ["layout_for", "pair_logps"]
