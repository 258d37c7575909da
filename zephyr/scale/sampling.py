"""Give each rank its share of the resumable batches, so N processes see exactly the 1-process batch sequence.

The data modules' :class:`~zephyr.data.collate.ResumableBatchSampler` yields one global sequence of
micro-batches (same permutation per epoch on every rank). :class:`RankShardedBatchSampler` hands micro-batch
``i`` to rank ``i % world_size``, so with ``world_size`` ranks and accumulation ``a`` one optimizer step consumes
the same ``world_size x a`` micro-batches a single process would with accumulation ``world_size x a``: the
gradient is the same average of per-micro-batch means (DDP averages over ranks, Lightning over accumulation
steps). Every rank gets the same number of batches (a trailing remainder is dropped) so no rank waits in a
collective the others never reach.

Lightning's own ``DistributedSampler`` injection is turned off (``use_distributed_sampler=False``) because it
cannot rebuild a custom batch sampler, and it would shard *items* rather than micro-batches.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from torch.utils.data import Sampler


class RankShardedBatchSampler(Sampler[list[int]]):
    """Every ``world_size``-th batch of ``inner``, starting at ``rank``.

    Resume state is kept in rank-local batches: ``start_batch`` (set by the data loader's ``load_state_dict``)
    counts batches *this rank* has done and is turned into the inner sampler's global position.

    Args:
        inner: the global :class:`~zephyr.data.collate.ResumableBatchSampler`.
        rank: this process's global rank.
        world_size: number of processes.
    """

    def __init__(self, inner: Any, rank: int, world_size: int):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank={rank} must be in [0, world_size={world_size})")
        self.inner, self.rank, self.world_size = inner, rank, world_size
        self.batch_size = inner.batch_size
        self.drop_last = True

    def __len__(self) -> int:
        return len(self.inner) // self.world_size

    # the attributes ResumableDataLoader reads and writes, forwarded to the inner sampler
    @property
    def epoch(self) -> int:
        return self.inner.epoch

    @epoch.setter
    def epoch(self, value: int) -> None:
        self.inner.epoch = value

    @property
    def current_epoch(self) -> int:
        return self.inner.current_epoch

    @property
    def start_batch(self) -> int:
        return self.inner.start_batch // self.world_size

    @start_batch.setter
    def start_batch(self, value: int) -> None:
        self.inner.start_batch = int(value) * self.world_size

    def __iter__(self) -> Iterator[list[int]]:
        start = self.inner.start_batch  # global position; a multiple of world_size
        limit = len(self) * self.world_size
        # run the inner sampler to its end (never break early): that is where it advances its epoch
        for i, batch in enumerate(self.inner, start=start):
            if i < limit and i % self.world_size == self.rank:
                yield batch


def shard_loader(loader: Any, rank: int, world_size: int) -> Any:
    """A copy of a ``ResumableDataLoader`` whose batches are this rank's share (the loader itself when 1 rank)."""
    if world_size <= 1:
        return loader
    from zephyr.data.collate import ResumableDataLoader

    sampler = RankShardedBatchSampler(loader.batch_sampler, rank, world_size)
    return ResumableDataLoader(
        loader.dataset,
        sampler,
        progress=loader._progress,
        collate_fn=loader.collate_fn,
        num_workers=loader.num_workers,
        persistent_workers=loader.persistent_workers,
    )


def distribute_train_loader(datamodule: Any) -> None:
    """Make ``datamodule.train_dataloader()`` return this rank's share once the trainer knows the ranks.

    The rank is read when Lightning asks for the loader (inside ``fit``, after the process group exists), from
    ``datamodule.trainer``. Evaluation loaders are left whole: every rank evaluates the full set, so the logged
    ``eval/*`` values are exact without cross-rank reduction.
    """
    original = datamodule.train_dataloader

    def train_dataloader():
        loader = original()
        trainer = datamodule.trainer
        if trainer is None:
            return loader
        return shard_loader(loader, trainer.global_rank, trainer.world_size)

    datamodule.train_dataloader = train_dataloader
