"""The resumable loader under a real Lightning fit: a new order each epoch, and a resume reproduces every batch.

Lightning stops an epoch after ``len(loader)`` batches without exhausting the iterator, so these tests drive
``pl.Trainer`` rather than ``list(sampler)`` (which does exhaust it and once hid that every epoch repeated the
first one's order).
"""

from __future__ import annotations

import pytest
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import ModelCheckpoint

from zephyr.data.collate import ResumableBatchSampler, ResumableDataLoader

BATCH, STEPS, SEED = 4, 6, 3


class Recorder(pl.LightningModule):
    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))
        self.seen: dict[int, list[int]] = {}

    def training_step(self, batch, batch_idx):
        self.seen[self.global_step] = batch.tolist()
        return self.w * batch.float().sum()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.0)


class Items(pl.LightningDataModule):
    def __init__(self, n: int):
        super().__init__()
        self.n = n

    def train_dataloader(self):
        sampler = ResumableBatchSampler(self.n, BATCH, shuffle=True, seed=SEED)
        progress = lambda: int(self.trainer.fit_loop.epoch_loop.batch_progress.current.processed)  # noqa: E731
        return ResumableDataLoader(list(range(self.n)), sampler, progress=progress, collate_fn=torch.tensor)


def fit(n: int, ckpt_dir, ckpt_path=None) -> dict[int, list[int]]:
    module = Recorder()
    trainer = pl.Trainer(
        max_steps=STEPS,
        max_epochs=-1,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[ModelCheckpoint(dirpath=ckpt_dir, every_n_train_steps=1, save_top_k=-1, filename="{step}")],
    )
    trainer.fit(module, Items(n), ckpt_path=ckpt_path)
    return module.seen


def perm(epoch: int, n: int) -> list[int]:
    return torch.randperm(n, generator=torch.Generator().manual_seed(SEED + epoch)).tolist()


@pytest.mark.parametrize("n", [10, 14])  # 3 batches an epoch (short last one) / 4 batches
def test_each_epoch_draws_its_own_order_and_every_resume_point_reproduces_it(tmp_path, n):
    full = fit(n, tmp_path / "full")
    per_epoch = -(-n // BATCH)
    order = [perm(e, n) for e in range(STEPS // per_epoch + 1)]
    for step, batch in full.items():
        e, b = divmod(step, per_epoch)
        assert batch == order[e][b * BATCH : (b + 1) * BATCH], f"step {step}"
    assert full[0] != full[per_epoch]  # epoch 1 is not epoch 0 again

    for saved in range(1, STEPS):  # mid-epoch and exact-end-of-epoch checkpoints alike
        resumed = fit(n, tmp_path / f"from{saved}", ckpt_path=tmp_path / "full" / f"step={saved}.ckpt")
        assert resumed == {s: full[s] for s in range(saved, STEPS)}, f"resumed from step {saved}"


def test_a_pass_stopped_at_its_length_still_advances_the_epoch():
    s = ResumableBatchSampler(10, BATCH, shuffle=True, seed=SEED)
    first = [b for b, _ in zip(iter(s), range(len(s)))]  # what Lightning does: take len() batches, stop
    second = [b for b, _ in zip(iter(s), range(len(s)))]
    assert sum(first, []) == perm(0, 10) and sum(second, []) == perm(1, 10)
    assert (s.current_epoch, s.epoch) == (1, 2)
