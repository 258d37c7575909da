"""Batches: every collator (padding, packing, preference pairs concatenated or prefix-shared) and the batch
sampler, which resumes mid-epoch exactly and gives each rank its share.

Rows are laid out "padding-free": instead of a 2-D attention mask we pass ``position_ids`` that restart at 0
for each sequence (and for the padding tail), and transformers turns that into a block-diagonal causal mask.
The same layout serves one-conversation rows and packed rows, so the module has one code path.

Resuming: Lightning restores a dataloader that has ``state_dict``/``load_state_dict``. Ours records the epoch
and how many batches the training loop has *processed* (asked from the trainer, because Lightning fetches one
batch ahead), and the sampler restarts the same epoch permutation at that batch: no batch is repeated or
skipped after a kill -9 and ``ckpt_path=last``.

Preference pairs come in two layouts. :func:`collate_pairs` is TRL's concatenated ``(2B, T)`` one (chosen rows
first). :func:`collate_pairs_shared` is the prefix-shared one, described here.

The concatenated layout (:func:`collate_pairs`) runs every prompt twice, once
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
``-100``), likewise ``rejected_targets`` (see :func:`zephyr.objectives.logprobs.prefix_shared_logps`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import torch
from torch.utils.data import DataLoader, Sampler

IGNORE_INDEX = -100


def collate_rows(rows: Sequence[Sequence[tuple[list[int], list[int]]]], pad_id: int, pad_to_multiple_of: int = 8):
    """Lay out rows of one or more sequences each.

    Args:
        rows: each row is a list of ``(input_ids, labels)`` sequences placed one after another (one sequence
            per row without packing).
        pad_id: token id for the padding tail (its labels are ``-100``).
        pad_to_multiple_of: round the batch length up (helps kernels; 1 disables).

    Returns:
        dict with ``input_ids`` (B, T), ``labels`` (B, T), ``position_ids`` (B, T) restarting per sequence,
        ``num_tokens`` () the real (non-pad) token count and ``num_loss_tokens`` () the tokens with a label.
    """
    lengths = [sum(len(ids) for ids, _ in row) for row in rows]
    T = max(lengths)
    if pad_to_multiple_of > 1:
        T = -(-T // pad_to_multiple_of) * pad_to_multiple_of
    B = len(rows)
    input_ids = torch.full((B, T), pad_id, dtype=torch.long)
    labels = torch.full((B, T), IGNORE_INDEX, dtype=torch.long)
    position_ids = torch.zeros((B, T), dtype=torch.long)
    for b, row in enumerate(rows):
        at = 0
        for ids, labs in row:
            n = len(ids)
            input_ids[b, at : at + n] = torch.tensor(ids)
            # the first token of a packed sequence must not be predicted from the previous sequence's last token
            labs = list(labs)
            labs[0] = IGNORE_INDEX
            labels[b, at : at + n] = torch.tensor(labs)
            position_ids[b, at : at + n] = torch.arange(n)
            at += n
        if at < T:
            position_ids[b, at:] = torch.arange(T - at)  # the padding tail is its own (masked) segment
    return {
        "input_ids": input_ids,
        "labels": labels,
        "position_ids": position_ids,
        "num_tokens": torch.tensor(sum(lengths)),
        "num_loss_tokens": (labels != IGNORE_INDEX).sum(),
    }


class ResumableBatchSampler(Sampler[list[int]]):
    """Shuffled (or sequential) batches of indices whose position can be saved and restored; one rank's share.

    The permutation of epoch ``e`` is drawn from ``seed + e``, so it is the same after a restart and on every
    rank. With ``world_size`` ranks, rank ``r`` takes global micro-batches ``r, r + world_size, ...`` of that one
    sequence, so N processes with accumulation ``a`` consume per optimizer step the same ``N x a`` micro-batches
    one process would with accumulation ``N x a`` (DDP averages over ranks, Lightning over accumulation steps).
    Every rank gets the same number of batches (a trailing remainder is dropped), so no rank waits in a
    collective the others never reach. Lightning's ``DistributedSampler`` injection is off
    (``use_distributed_sampler=False``): it would shard items, not micro-batches.

    Args:
        num_items: dataset length.
        batch_size: items per micro-batch.
        shuffle: a new seeded permutation each epoch (else dataset order).
        seed: permutation seed.
        drop_last: drop a short last batch (single process; several ranks always drop the remainder).
        rank: this process's global rank.
        world_size: number of processes.
    """

    def __init__(
        self,
        num_items: int,
        batch_size: int,
        *,
        shuffle: bool,
        seed: int,
        drop_last: bool = False,
        rank: int = 0,
        world_size: int = 1,
    ):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank={rank} must be in [0, world_size={world_size})")
        self.num_items, self.batch_size, self.shuffle, self.seed, self.drop_last = (
            num_items,
            batch_size,
            shuffle,
            seed,
            drop_last,
        )
        self.rank, self.world_size = rank, world_size
        self.epoch = 0  # the epoch the next pass will draw
        self.current_epoch = 0  # the epoch of the pass in progress (or the last one)
        self.start_batch = 0  # batches of the current epoch this rank has already done (set on resume)

    def _global_len(self) -> int:
        full, rest = divmod(self.num_items, self.batch_size)
        return full if self.drop_last or rest == 0 else full + 1

    def __len__(self) -> int:
        return self._global_len() // self.world_size

    def _order(self) -> list[int]:
        if not self.shuffle:
            return list(range(self.num_items))
        g = torch.Generator().manual_seed(self.seed + self.epoch)
        return torch.randperm(self.num_items, generator=g).tolist()

    def __iter__(self) -> Iterator[list[int]]:
        # Not a generator: the epoch advances when the pass begins. Lightning stops after ``len(self)`` batches
        # without exhausting the iterator, so a counter bumped after the last yield would never move and every
        # epoch would repeat the first one's order.
        self.current_epoch, order, start = self.epoch, self._order(), self.start_batch
        self.epoch += 1
        self.start_batch = 0  # a restored position applies to the first pass only
        return self._batches(order, start)

    def _batches(self, order: list[int], start: int) -> Iterator[list[int]]:
        for local in range(start, len(self)):
            b = local * self.world_size + self.rank  # this rank's share of the one global sequence
            yield order[b * self.batch_size : (b + 1) * self.batch_size]


class ResumableDataLoader(DataLoader):
    """A DataLoader over a :class:`ResumableBatchSampler` that Lightning can checkpoint.

    Args:
        progress: returns how many batches of the current epoch the training loop has processed; wired to
            the trainer by the data module.
    """

    def __init__(
        self, dataset, batch_sampler: ResumableBatchSampler, progress: Callable[[], int] | None = None, **kwargs: Any
    ):
        super().__init__(dataset, batch_sampler=batch_sampler, **kwargs)
        self._progress = progress

    def state_dict(self) -> dict[str, int]:
        sampler: ResumableBatchSampler = self.batch_sampler  # type: ignore[assignment]
        done = self._progress() if self._progress is not None else 0
        if done >= len(sampler):
            return {"epoch": sampler.current_epoch + 1, "batches_done": 0}
        return {"epoch": sampler.current_epoch, "batches_done": done}

    def load_state_dict(self, state: dict[str, int]) -> None:
        sampler: ResumableBatchSampler = self.batch_sampler  # type: ignore[assignment]
        sampler.epoch = int(state["epoch"])
        sampler.start_batch = int(state["batches_done"])


# --------------------------------------------------------------------------------------------------
# Preference pairs: the concatenated and the prefix-shared layout
# --------------------------------------------------------------------------------------------------
def collate_pairs(items: list[dict[str, Any]], pad_id: int, pad_to_multiple_of: int = 8) -> dict[str, torch.Tensor]:
    """Lay out B tokenised pairs as 2B padding-free rows, chosen first.

    Args:
        items: B dicts with ``prompt``, ``chosen``, ``rejected`` (token id lists) and ``index`` (int).
        pad_id: padding token id (labels of padding are ``-100``).
        pad_to_multiple_of: round the row length up to a multiple of this.

    Returns:
        ``input_ids``, ``labels``, ``position_ids``: ``(2B, T)``; ``index``: ``(B,)``; ``num_tokens``,
        ``num_loss_tokens``: ``()``. Labels are ``-100`` on the prompt, so only completion tokens count.
    """
    rows = []
    for key in ("chosen", "rejected"):
        for it in items:
            prompt, completion = it["prompt"], it[key]
            rows.append([(prompt + completion, [IGNORE_INDEX] * len(prompt) + completion)])
    batch = collate_rows(rows, pad_id=pad_id, pad_to_multiple_of=pad_to_multiple_of)
    batch["index"] = torch.tensor([int(it["index"]) for it in items], dtype=torch.long)
    return batch


def collate_pairs_shared(
    items: list[dict[str, Any]], pad_id: int, pad_to_multiple_of: int = 8
) -> dict[str, torch.Tensor]:
    """Lay out B tokenised pairs as B prefix-shared rows ``[prompt, chosen, rejected]``.

    :func:`collate_pairs_prefix_shared`, with ``num_tokens`` set to the pair token count
    (``2·prompt + chosen + rejected``, what the concatenated layout's ``num_tokens`` counts) so logged
    throughput does not change meaning with the layout; the tokens actually in the rows are ``num_row_tokens``.

    Returns:
        ``input_ids``, ``position_ids``, ``chosen_targets``, ``rejected_targets``: ``(B, T)``;
        ``attention_mask``: ``(B, 1, T, T)`` bool; ``index``: ``(B,)``; ``num_tokens``, ``num_pair_tokens``,
        ``num_row_tokens``: ``()``.
    """
    batch = collate_pairs_prefix_shared(items, pad_id=pad_id, pad_to_multiple_of=pad_to_multiple_of)
    batch["num_row_tokens"] = batch["num_tokens"]
    batch["num_tokens"] = batch["num_pair_tokens"]
    return batch


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
            ``index`` (int), as built by :class:`zephyr.data.preference.PreferenceDataModule`.
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
