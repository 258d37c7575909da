"""Per-sequence completion log-probabilities: the quantity every DPO-family loss and the SFT loss are built on.

Two routes give the same numbers:

* :func:`completion_logps` takes full ``(B, T, V)`` logits, as TRL's ``_get_batch_logps`` and torchtune's
  ``get_batch_log_probs`` do. It is the reference definition and the easy one to read.
* :func:`token_logps_from_hidden` takes the last hidden states and the LM-head weight and projects onto the
  vocabulary **only at the positions whose (shifted) label counts**, a chunk of positions at a time, with
  ``logp = logit[y] - logsumexp(logits)``. Prompt and padding positions (about half of a DPO batch) never
  touch the 32k-wide head, and no ``(B, T, V)`` fp32 tensor is ever built. With gradients on, each chunk runs
  under activation checkpointing, so the backward pass also holds one ``(chunk, V)`` block at a time.

Both use the usual one-token shift: ``logits[:, t]`` predicts ``labels[:, t + 1]``, so the first label is never
scored and the last position's prediction is dropped. Labels equal to ``ignore_index`` (prompt, padding) do
not count. A row with no counted token gets log-prob 0 and, when averaging, 0 rather than NaN.

For a plain fp32 head (an ``nn.Linear`` without bias or hooks, or its weight; no soft-cap, no autocast) the
chunks run through one autograd function, :class:`_HeadLogps`, with a hand-written backward
(``∂logp/∂z = onehot(y) − softmax(z)``): each block is computed into one reused buffer and turned into its
softmax and gradient in place, so a step touches one ``(chunk, V)`` fp32 block per chunk in the forward and
one in the backward, where checkpointing would allocate several (logits, their fp32 copy, the softmax, the
gradient). Any other head (bf16, soft-capped, sharded by FSDP2/ZeRO-3, wrapped by PEFT) takes the checkpointed
route. :func:`use_fused_head` switches the fused route off (the bench's ablation).

Families that soft-cap their logits (Gemma2's ``final_logit_softcapping``: ``cap * tanh(logits / cap)`` after
the head) pass ``softcap`` (:func:`logit_softcap` reads it from the model), and the chunked projection applies
it to each block exactly as the model's forward does, so both routes still give the same numbers.

:func:`prefix_shared_logps` scores a prefix-shared pair row ``[prompt, chosen, rejected]``
(:func:`zephyr.data.collate.collate_pairs_shared`) through the same chunked projection.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from typing import NamedTuple

import torch
from torch.utils.checkpoint import checkpoint

from zephyr.models.adapters import unwrapped
from zephyr.models.fused_mlp import is_plain_linear

__all__ = [
    "prefix_shared_logps",
    "SequenceLogps",
    "TokenStats",
    "cat_sequence_logps",
    "completion_logits_sum",
    "completion_logps",
    "logit_softcap",
    "masked_logits_mean",
    "token_logps_from_hidden",
    "token_stats_from_logits",
    "use_fused_head",
]


def _check_shapes(left: torch.Tensor, right: torch.Tensor, left_name: str, right_name: str, dims: int) -> None:
    if left.dim() < 2 or right.dim() != 2 or left.shape[:2] != right.shape or left.dim() != dims:
        raise ValueError(
            f"{left_name} and {right_name} shapes do not match: {left_name} {tuple(left.shape)} vs "
            f"{right_name} {tuple(right.shape)} (expected {left_name} (B, T, ...) with {right_name} (B, T))"
        )


def completion_logps(
    logits: torch.Tensor, labels: torch.Tensor, *, ignore_index: int = -100, average: bool = False
) -> torch.Tensor:
    """Sum (or mean) of the log-probs of the counted labels of each sequence.

    Mirrors TRL's ``_get_batch_logps`` (v0.7-v0.12) and torchtune's ``get_batch_log_probs``: shift by one,
    mask labels equal to ``ignore_index``, gather ``log_softmax`` in fp32.

    Args:
        logits: ``(B, T, V)`` raw model outputs (any float dtype; upcast to fp32 here).
        labels: ``(B, T)`` token ids, ``ignore_index`` on prompt and padding positions.
        ignore_index: label value that is not scored.
        average: return the mean over counted tokens instead of the sum (IPO uses the mean).

    Returns:
        ``(B,)`` fp32 log-probs. Rows with no counted token give 0 (also when ``average=True``).

    Raises:
        ValueError: naming both shapes when ``logits`` is not ``(B, T, V)`` with ``labels`` ``(B, T)``.
    """
    _check_shapes(logits, labels, "logits", "labels", dims=3)
    logits = logits[:, :-1, :].float()  # (B, T-1, V): position t predicts label t+1
    labels = labels[:, 1:]  # (B, T-1)
    mask = labels != ignore_index
    safe_labels = torch.where(mask, labels, torch.zeros_like(labels))  # dummy id 0 where masked
    token_logps = torch.gather(logits.log_softmax(-1), 2, safe_labels.unsqueeze(2)).squeeze(2)  # (B, T-1)
    sums = (token_logps * mask).sum(-1)  # (B,)
    if not average:
        return sums
    counts = mask.sum(-1)
    return sums / counts.clamp(min=1)  # empty rows: 0 / 1 = 0


def completion_logits_sum(logits: torch.Tensor, labels: torch.Tensor, *, ignore_index: int = -100) -> torch.Tensor:
    """Sum of the raw logits over counted positions and the whole vocabulary, per row (detached).

    With :func:`masked_logits_mean` this gives TRL v0.12's ``logits/chosen`` metric,
    ``logits[:, :-1][loss_mask].mean()``: the mean over counted completion positions × vocab.

    Args:
        logits: ``(B, T, V)``.
        labels: ``(B, T)`` with ``ignore_index`` on uncounted positions.
        ignore_index: label value that is not scored.

    Returns:
        ``(B,)`` fp32 sums (0 for rows without counted tokens).
    """
    _check_shapes(logits, labels, "logits", "labels", dims=3)
    with torch.no_grad():
        mask = labels[:, 1:] != ignore_index  # (B, T-1)
        per_position = logits[:, :-1, :].float().sum(-1)  # (B, T-1)
        return (per_position * mask).sum(-1)


def masked_logits_mean(logits_sum: torch.Tensor, token_counts: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """Pool per-row logit sums into TRL's ``logits/*`` scalar: ``sum(logits_sum) / (sum(token_counts) * V)``.

    Pooling (rather than averaging per-row means) matches ``logits[mask].mean()`` over a batch.

    Args:
        logits_sum: ``(B,)`` from :func:`completion_logits_sum` or :func:`token_logps_from_hidden`.
        token_counts: ``(B,)`` counted tokens per row.
        vocab_size: V.

    Returns:
        A 0-dim fp32 tensor; 0 when no row has a counted token.
    """
    total = token_counts.sum().to(torch.float32) * vocab_size
    return logits_sum.detach().float().sum() / total.clamp(min=1)


def logit_softcap(model: torch.nn.Module) -> float | None:
    """The model's final-logit soft-cap (Gemma2 ``final_logit_softcapping``), or ``None`` (most families).

    A PEFT model is looked through (its wrapped model's config).
    """
    inner = unwrapped(model)
    cap = getattr(getattr(inner, "config", None), "final_logit_softcapping", None)
    return float(cap) if cap else None


class TokenStats(NamedTuple):
    """Per-token extras of the counted positions (``stats=True``), computed from the same ``(chunk, V)`` blocks.

    Attributes:
        entropy_sum: ``(B,)`` detached sum over counted positions of the next-token entropy
            ``H = logsumexp(z) − Σ_v p_v z_v`` (TRL 1.x ``entropy`` is its token mean).
        top1_count: ``(B,)`` counted positions whose argmax logit is the label (TRL ``mean_token_accuracy``).
        log_sum_sq: ``(B, T − 1)`` detached ``log Σ_v p_v²`` at counted positions, 0 elsewhere (WPO's term,
            :func:`zephyr.objectives.weighting.log_sum_sq_probs`).
        token_logps: ``(B, T − 1)`` differentiable log-prob of each counted shifted label, 0 elsewhere (LD-DPO).
        mask: ``(B, T − 1)`` bool, where a shifted label counts.
    """

    entropy_sum: torch.Tensor
    top1_count: torch.Tensor
    log_sum_sq: torch.Tensor
    token_logps: torch.Tensor
    mask: torch.Tensor


class SequenceLogps(NamedTuple):
    """Output of :func:`token_logps_from_hidden`; all ``(B,)``.

    Attributes:
        logps: per-row sum (or mean, if asked) of counted-token log-probs, fp32, differentiable.
        token_counts: per-row number of counted tokens (int64).
        logits_sum: per-row sum of the raw logits over counted positions × vocab, fp32, detached
            (feed to :func:`masked_logits_mean` for ``logits/chosen``).
        stats: :class:`TokenStats` when asked for (``stats=True``), else ``None``.
    """

    logps: torch.Tensor
    token_counts: torch.Tensor
    logits_sum: torch.Tensor
    stats: TokenStats | None = None


def cat_sequence_logps(first: SequenceLogps, second: SequenceLogps) -> SequenceLogps:
    """Rows of ``first`` then ``second`` (chosen then rejected), ``stats`` included when both have them."""
    stats = None
    if first.stats is not None and second.stats is not None:
        stats = TokenStats(*(torch.cat([a, b]) for a, b in zip(first.stats, second.stats)))
    return SequenceLogps(*(torch.cat([a, b]) for a, b in zip(first[:3], second[:3])), stats)


def _logits_stats(logits: torch.Tensor, targets: torch.Tensor, lse: torch.Tensor | None = None) -> torch.Tensor:
    """``(N, 3)`` detached [entropy, top-1 hit, log Σ p²] of fp32 ``(N, V)`` logits with ``(N,)`` targets.

    ``H = lse − Σ p z`` and ``log Σ p²`` from one softmax (``lse``: the rows' logsumexp when already computed):
    four passes over the ``(N, V)`` block instead of eight, which on a head-dominated model is most of a step.
    """
    with torch.no_grad():
        if lse is None:
            lse = torch.logsumexp(logits, dim=-1)
        p = torch.softmax(logits, dim=-1)
        entropy = lse - (p * logits).sum(-1)
        top1 = (logits.argmax(-1) == targets).float()
        return torch.stack([entropy, top1, (p * p).sum(-1).log()], dim=-1)


def token_stats_from_logits(logits: torch.Tensor, labels: torch.Tensor, *, ignore_index: int = -100) -> TokenStats:
    """:class:`TokenStats` from full ``(B, T, V)`` logits (unchunked; the shift of :func:`completion_logps`)."""
    _check_shapes(logits, labels, "logits", "labels", dims=3)
    shifted = labels[:, 1:]
    mask = shifted != ignore_index
    logits = logits[:, :-1, :].float()
    safe = torch.where(mask, shifted, torch.zeros_like(shifted))
    token_logps = torch.gather(logits.log_softmax(-1), 2, safe.unsqueeze(2)).squeeze(2) * mask
    extra = _logits_stats(logits, safe) * mask.unsqueeze(-1)  # (B, T-1, 3)
    sums = extra.sum(1)
    return TokenStats(sums[:, 0], sums[:, 1], extra[..., 2], token_logps, mask)


def _chunk_logps(
    hidden: torch.Tensor,
    weight: torch.Tensor | torch.nn.Module,
    bias: torch.Tensor | None,
    targets: torch.Tensor,
    softcap: float | None = None,
    stats: bool = False,
) -> tuple[torch.Tensor, ...]:
    """Log-prob of ``targets`` and the logit sum (+ ``(N, 3)`` stats) for ``(N, H)`` rows; one ``(N, V)`` block."""
    # Project in the model's dtype (what the LM head would do), then upcast: the same numbers as running the
    # head and casting the logits to fp32 as TRL does.
    # The head module itself when given: a sharded strategy (FSDP2, ZeRO-3) gathers its weight in its forward.
    logits = weight(hidden) if isinstance(weight, torch.nn.Module) else torch.nn.functional.linear(hidden, weight, bias)
    if softcap is not None:  # as the model's forward does it, in the model's dtype
        logits = torch.tanh(logits / softcap) * softcap
    logits = logits.float()
    target_logits = logits.gather(1, targets.unsqueeze(1)).squeeze(1)  # (N,)
    lse = torch.logsumexp(logits, dim=-1)
    token_logps = target_logits - lse  # (N,)
    if stats:
        return token_logps, logits.detach().sum(-1), _logits_stats(logits.detach(), targets, lse.detach())
    return token_logps, logits.detach().sum(-1)


_FUSED = {"enabled": True}
_BLOCKS = threading.local()


@contextlib.contextmanager
def use_fused_head(enabled: bool) -> Iterator[None]:
    """Within the block, route eligible heads through the fused function (``True``, the default) or not."""
    previous = _FUSED["enabled"]
    _FUSED["enabled"] = bool(enabled)
    try:
        yield
    finally:
        _FUSED["enabled"] = previous


def _logits_block(rows: int, vocab: int, like: torch.Tensor) -> torch.Tensor:
    """A ``(rows, vocab)`` fp32 buffer, reused across chunks and steps on CPU (one per thread).

    A fresh block of this size is a fresh ``mmap`` on CPU, page-faulted in on first touch on every chunk; keeping
    one avoids that. On CUDA the caching allocator already reuses memory, so a new tensor is as cheap.
    """
    if like.device.type != "cpu":
        return torch.empty(rows, vocab, dtype=torch.float32, device=like.device)
    block = getattr(_BLOCKS, "block", None)
    if block is None or block.shape[1] != vocab or block.shape[0] < rows:
        del block
        _BLOCKS.block = None  # drop the old one before allocating the new one
        block = _BLOCKS.block = torch.empty(rows, vocab, dtype=torch.float32)
    return block[:rows]


def _plain_head_weight(
    head: torch.Tensor | torch.nn.Module, bias: torch.Tensor | None, softcap: float | None, hidden: torch.Tensor
) -> torch.Tensor | None:
    """The head's weight when the fused route gives exactly the checkpointed route's numbers, else ``None``."""
    if not _FUSED["enabled"] or bias is not None or softcap is not None:
        return None
    if torch.is_autocast_enabled(hidden.device.type):
        return None
    if isinstance(head, torch.nn.Module):
        if not is_plain_linear(head):
            return None  # a sharded (FSDP2, ZeRO-3) or wrapped head gathers or changes its weight in forward
        head = head.weight
    elif type(head) not in (torch.Tensor, torch.nn.Parameter) or hasattr(head, "ds_shape"):
        return None
    if head.dtype != torch.float32 or hidden.dtype != torch.float32 or head.device != hidden.device:
        return None
    return head


def _block_softmax_(block: torch.Tensor) -> torch.Tensor:
    """Turn logits into their softmax in place; return the rows' logsumexp ``(N,)``."""
    peak = block.amax(dim=-1, keepdim=True)
    block.sub_(peak).exp_()
    total = block.sum(dim=-1, keepdim=True)
    block.div_(total)
    return (peak + total.log()).squeeze(1)


class _HeadLogps(torch.autograd.Function):
    """``(N, H)`` hidden rows, ``(V, H)`` weight, ``(N,)`` targets -> per-row log-prob, logit sum, stats.

    The same numbers as :func:`_chunk_logps` on a plain fp32 head, chunk by chunk, with the backward written out:
    ``∂logp_i/∂z_i = onehot(y_i) − p_i``, so the weight gradient is ``Σ_i g_i (onehot − p_i)ᵀ h_i`` and the hidden
    gradient ``g_i (onehot − p_i) W``. The backward recomputes each block from the saved hidden rows and
    logsumexp (as checkpointing would) but in one buffer, in place.
    """

    @staticmethod
    def forward(ctx, hidden, weight, targets, chunk_size: int, stats: bool):
        n, vocab = hidden.shape[0], weight.shape[0]
        token_logps = hidden.new_empty(n)
        logit_sums = hidden.new_empty(n)
        lse = hidden.new_empty(n)
        extras = hidden.new_empty(n, 3) if stats else hidden.new_empty(0, 3)
        for start in range(0, n, chunk_size):
            stop = min(start + chunk_size, n)
            rows, tgt = hidden[start:stop], targets[start:stop]
            block = torch.mm(rows, weight.t(), out=_logits_block(stop - start, vocab, hidden))
            target_logits = block.gather(1, tgt.unsqueeze(1)).squeeze(1)
            logit_sums[start:stop] = block.sum(-1)
            if stats:
                extras[start:stop, 1] = (block.argmax(-1) == tgt).float()
            lse[start:stop] = _block_softmax_(block)  # block is now p
            token_logps[start:stop] = target_logits - lse[start:stop]
            if stats:
                extras[start:stop, 2] = 2.0 * torch.linalg.vector_norm(block, dim=-1).log()  # log Σ p²
                extras[start:stop, 0] = torch.special.entr(block, out=block).sum(-1)  # H = −Σ p log p
        ctx.save_for_backward(hidden, weight, targets, lse)
        ctx.chunk_size = chunk_size
        ctx.mark_non_differentiable(logit_sums, extras)
        return token_logps, logit_sums, extras

    @staticmethod
    def backward(ctx, grad_logps, _grad_sums, _grad_extras):
        hidden, weight, targets, lse = ctx.saved_tensors
        want_hidden, want_weight = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        grad_hidden = torch.empty_like(hidden) if want_hidden else None  # every row is written by its chunk
        grad_weight = None  # the first chunk's product, then accumulated: no (V, H) zero fill
        vocab = weight.shape[0]
        for start in range(0, hidden.shape[0], ctx.chunk_size):
            stop = min(start + ctx.chunk_size, hidden.shape[0])
            rows, g = hidden[start:stop], grad_logps[start:stop].unsqueeze(1)
            block = torch.mm(rows, weight.t(), out=_logits_block(stop - start, vocab, hidden))
            block.sub_(lse[start:stop].unsqueeze(1)).exp_()  # p
            block.mul_(-g).scatter_add_(1, targets[start:stop].unsqueeze(1), g)  # g · (onehot − p)
            if want_hidden:
                torch.mm(block, weight, out=grad_hidden[start:stop])
            if want_weight:
                if grad_weight is None:
                    grad_weight = torch.mm(block.t(), rows)
                else:
                    grad_weight.addmm_(block.t(), rows)
        if want_weight and grad_weight is None:  # no counted rows
            grad_weight = torch.zeros_like(weight)
        return grad_hidden, grad_weight, None, None, None


def token_logps_from_hidden(
    hidden: torch.Tensor,
    lm_head_weight: torch.Tensor | torch.nn.Module,
    labels: torch.Tensor,
    *,
    lm_head_bias: torch.Tensor | None = None,
    ignore_index: int = -100,
    chunk_size: int = 1024,
    average: bool = False,
    softcap: float | None = None,
    stats: bool = False,
    fused: bool = True,
) -> SequenceLogps:
    """Completion log-probs from hidden states, projecting onto the vocabulary only where labels count.

    Equal to ``completion_logps(hidden @ lm_head_weight.T, labels)`` (values and gradients), but the peak
    extra memory is one ``(chunk_size, V)`` fp32 block instead of ``(B, T, V)``.

    Args:
        hidden: ``(B, T, H)`` final hidden states (after the last norm), i.e. the LM head's input.
        lm_head_weight: ``(V, H)`` LM-head weight (``model.lm_head.weight``), or the LM-head module itself
            (``model.lm_head``, its bias included), called once per chunk: under FSDP2 or DeepSpeed ZeRO-3 its
            forward is what gathers the full weight, so pass the module there.
        labels: ``(B, T)`` token ids, ``ignore_index`` on prompt and padding.
        lm_head_bias: optional ``(V,)`` bias (Mistral has none).
        ignore_index: label value that is not scored.
        chunk_size: counted positions projected at once; lower it to save memory.
        average: return per-row means instead of sums (IPO); empty rows give 0.
        softcap: final-logit soft-cap of the model (:func:`logit_softcap`; ``None``: none).
        stats: also return :class:`TokenStats` (entropy, top-1, WPO term, per-token log-probs) from the same blocks.
        fused: take the fused route (:class:`_HeadLogps`) when the head is eligible (plain fp32, no bias, no
            soft-cap, no autocast) and :func:`use_fused_head` has not switched it off; ``False``: always checkpoint.

    Returns:
        :class:`SequenceLogps` with ``(B,)`` ``logps``, ``token_counts`` and ``logits_sum`` (and ``stats``).

    Raises:
        ValueError: on mismatched shapes (naming them) or a non-positive ``chunk_size``.
    """
    _check_shapes(hidden, labels, "hidden", "labels", dims=3)
    head_weight = lm_head_weight.weight if isinstance(lm_head_weight, torch.nn.Module) else lm_head_weight
    head_shape = tuple(getattr(head_weight, "ds_shape", head_weight.shape))  # ZeRO-3 keeps the full shape there
    if len(head_shape) != 2 or head_shape[1] != hidden.shape[2]:
        raise ValueError(
            f"lm_head_weight shape {head_shape} does not match hidden {tuple(hidden.shape)}: "
            "expected (V, H) with H = hidden.shape[-1]"
        )
    if chunk_size <= 0:
        raise ValueError(f"chunk_size must be positive, got {chunk_size}")
    batch = hidden.shape[0]
    shifted = labels[:, 1:]  # (B, T-1)
    mask = shifted != ignore_index  # (B, T-1)
    rows = torch.arange(batch, device=labels.device).unsqueeze(1).expand_as(shifted)[mask]  # (N,)
    selected = hidden[:, :-1, :][mask]  # (N, H): only positions whose next label counts
    targets = shifted[mask]  # (N,)

    plain = _plain_head_weight(lm_head_weight, lm_head_bias, softcap, hidden) if fused else None
    use_checkpoint = torch.is_grad_enabled() and (hidden.requires_grad or head_weight.requires_grad)
    token_logps, logit_sums, extras = [], [], []
    if plain is None:
        for start in range(0, selected.shape[0], chunk_size):
            args = (
                selected[start : start + chunk_size],
                lm_head_weight,
                lm_head_bias,
                targets[start : start + chunk_size],
                softcap,
                stats,
            )
            if use_checkpoint:
                # Recompute the (chunk, V) block in backward instead of keeping every block alive until then.
                lp, ls, *st = checkpoint(_chunk_logps, *args, use_reentrant=False)
            else:
                lp, ls, *st = _chunk_logps(*args)
            token_logps.append(lp)
            logit_sums.append(ls)
            extras.extend(st)
    elif selected.shape[0]:
        lp, ls, st = _HeadLogps.apply(selected, plain, targets, chunk_size, stats)
        token_logps, logit_sums, extras = [lp], [ls], [st] if stats else []

    counts = mask.sum(-1)  # (B,)
    sums = hidden.new_zeros(batch, dtype=torch.float32)
    logits_sum = hidden.new_zeros(batch, dtype=torch.float32)
    if token_logps:
        sums = sums.index_add(0, rows, torch.cat(token_logps))
        logits_sum = logits_sum.index_add(0, rows, torch.cat(logit_sums))
    elif hidden.requires_grad or head_weight.requires_grad:
        # Keep the graph connected (zero gradient) so callers can always call backward().
        head_term = lm_head_weight(hidden[:, :0]) if isinstance(lm_head_weight, torch.nn.Module) else lm_head_weight
        sums = sums + 0.0 * (hidden.sum() + head_term.sum()).float()
    logps = sums / counts.clamp(min=1) if average else sums
    if not stats:
        return SequenceLogps(logps=logps, token_counts=counts, logits_sum=logits_sum)
    per_row = hidden.new_zeros(batch, 3, dtype=torch.float32)
    per_token = hidden.new_zeros(mask.shape, dtype=torch.float32)
    log_sum_sq = hidden.new_zeros(mask.shape, dtype=torch.float32)
    if token_logps:
        flat = torch.cat(extras)
        per_row = per_row.index_add(0, rows, flat)
        per_token = per_token.masked_scatter(mask, torch.cat(token_logps))
        log_sum_sq = log_sum_sq.masked_scatter(mask, flat[:, 2])
    extra = TokenStats(per_row[:, 0], per_row[:, 1], log_sum_sq, per_token, mask)
    return SequenceLogps(logps=logps, token_counts=counts, logits_sum=logits_sum, stats=extra)


# --------------------------------------------------------------------------------------------------
# Prefix-shared pair rows
# --------------------------------------------------------------------------------------------------
# A prefix-shared row ``[prompt, chosen, rejected]`` carries two pre-shifted target maps: the hidden state at
# ``t`` predicts ``chosen_targets[:, t]`` and/or ``rejected_targets[:, t]``. Each map is turned into the usual
# "labels" form (``labels[:, t + 1]`` predicted at ``t``) by shifting it right by one, and scored with
# :func:`token_logps_from_hidden`, which projects onto the vocabulary only at counted
# positions. The result has the concatenated layout's order: ``[chosen_1..chosen_B, rejected_1..rejected_B]``.


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
        softcap: final-logit soft-cap (:func:`logit_softcap`).
        stats: also return per-token :class:`TokenStats`.

    Returns:
        :class:`SequenceLogps` of ``(2B,)`` tensors, chosen rows first, equal to what
        :func:`zephyr.modules.reference.pair_logps` gives on the concatenated layout of the same pairs.
    """
    if chosen_targets.shape != rejected_targets.shape:
        raise ValueError(
            f"chosen_targets {tuple(chosen_targets.shape)} and rejected_targets {tuple(rejected_targets.shape)} differ"
        )
    # one projection for both maps: the rows twice, chosen labels then rejected ones, so the head (and, fused, its
    # (V, H) weight gradient) runs once per batch instead of once per map; the output has the concatenated order
    labels = torch.cat([_as_labels(chosen_targets, ignore_index), _as_labels(rejected_targets, ignore_index)])
    return token_logps_from_hidden(
        torch.cat([hidden, hidden]),
        lm_head_weight,
        labels,
        lm_head_bias=lm_head_bias,
        ignore_index=ignore_index,
        chunk_size=chunk_size,
        average=average,
        softcap=softcap,
        stats=stats,
    )
