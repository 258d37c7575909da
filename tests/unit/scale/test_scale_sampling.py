"""Rank split of the resumable batches, trainer arguments, compile and Liger switches."""

from __future__ import annotations

import pytest

from zephyr.data.collate import ResumableBatchSampler
from zephyr.scale import ScaleConfigError
from zephyr.scale.launch import ZEPHYR_TRAINER_KEYS, apply_kernel_options, compile_model, trainer_arguments
from zephyr.scale.sampling import RankShardedBatchSampler


def _inner():
    return ResumableBatchSampler(10, 2, shuffle=True, seed=3)  # 5 batches of 2


def test_ranks_take_alternate_batches_of_the_single_process_sequence():
    whole = list(_inner())
    r0, r1 = list(RankShardedBatchSampler(_inner(), 0, 2)), list(RankShardedBatchSampler(_inner(), 1, 2))
    assert r0 == [whole[0], whole[2]] and r1 == [whole[1], whole[3]]  # the 5th batch is dropped on both ranks
    assert len(RankShardedBatchSampler(_inner(), 0, 2)) == 2


def test_epochs_advance_like_the_inner_sampler():
    s = RankShardedBatchSampler(_inner(), 1, 2)
    first, second = list(s), list(s)
    assert s.epoch == 2 and s.current_epoch == 1
    assert first != second


def test_resume_counts_rank_local_batches():
    whole = list(_inner())
    s = RankShardedBatchSampler(_inner(), 1, 2)
    s.start_batch = 1  # this rank already did one batch (global batches 0 and 1 consumed)
    assert s.inner.start_batch == 2 and s.start_batch == 1
    assert list(s) == [whole[3]]


def test_bad_rank():
    with pytest.raises(ValueError, match=r"rank=2 must be in \[0, world_size=2\)"):
        RankShardedBatchSampler(_inner(), 2, 2)


def test_trainer_arguments_drop_zephyr_keys_and_split_ranks(compose):
    cfg = compose("strategy=ddp", "hardware.devices=2", "trainer.compile=true")

    class FakeDataModule:
        trainer = None

        def train_dataloader(self):
            return "whole loader"

    dm = FakeDataModule()
    strategy, kwargs = trainer_arguments(cfg, dm)
    assert type(strategy).__name__ == "DDPStrategy"
    assert not set(ZEPHYR_TRAINER_KEYS) & set(kwargs)
    assert kwargs["use_distributed_sampler"] is False
    assert kwargs["max_steps"] == cfg.trainer.max_steps
    assert dm.train_dataloader() == "whole loader"  # no trainer yet: nothing to split


def test_compile_wraps_each_decoder_layer_in_place(compose, tiny_model):
    names = [n for n, _ in tiny_model.named_parameters()]
    compile_model(tiny_model, compose("trainer.compile=true"))
    assert all(layer._compiled_call_impl is not None for layer in tiny_model.model.layers)
    assert [n for n, _ in tiny_model.named_parameters()] == names  # checkpoint / export keys unchanged
    assert compile_model(tiny_model, compose()) is tiny_model


def test_liger_switch_explains_what_is_missing(compose):
    apply_kernel_options(compose())  # off: nothing happens
    with pytest.raises(ScaleConfigError, match=r"trainer.liger_kernel=true needs (liger-kernel|a CUDA device)"):
        apply_kernel_options(compose("trainer.liger_kernel=true"))
