"""Batches: padding or packing collators, and a batch sampler that resumes mid-epoch exactly.

Rows are laid out "padding-free": instead of a 2-D attention mask we pass ``position_ids`` that restart at 0
for each sequence (and for the padding tail), and transformers turns that into a block-diagonal causal mask.
The same layout serves one-conversation rows and packed rows, so the module has one code path.

Resuming: Lightning restores a dataloader that has ``state_dict``/``load_state_dict``. Ours records the epoch
and how many batches the training loop has *processed* (asked from the trainer, because Lightning fetches one
batch ahead), and the sampler restarts the same epoch permutation at that batch: no batch is repeated or
skipped after a kill -9 and ``ckpt_path=last``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
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
