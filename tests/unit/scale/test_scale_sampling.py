"""Rank split of the resumable batches, trainer arguments, compile and Liger switches."""

from __future__ import annotations

import pytest

from zephyr.data.collate import ResumableBatchSampler
from zephyr.scale import ScaleConfigError
from zephyr.scale.plan import ZEPHYR_TRAINER_KEYS, apply_kernel_options, compile_model, launch_plan, trainer_arguments


def _sampler(rank=0, world_size=1):
    return ResumableBatchSampler(10, 2, shuffle=True, seed=3, rank=rank, world_size=world_size)  # 5 batches of 2


def test_ranks_take_alternate_batches_of_the_single_process_sequence():
    whole = list(_sampler())
    r0, r1 = list(_sampler(0, 2)), list(_sampler(1, 2))
    assert r0 == [whole[0], whole[2]] and r1 == [whole[1], whole[3]]  # the 5th batch is dropped on both ranks
    assert len(_sampler(0, 2)) == 2 and len(_sampler()) == 5


def test_epochs_advance_like_one_process():
    s, one = _sampler(1, 2), _sampler()
    first, second = list(s), list(s)
    whole_first, whole_second = list(one), list(one)
    assert s.epoch == 2 and s.current_epoch == 1
    assert first == whole_first[1:4:2] and second == whole_second[1:4:2] and first != second


def test_resume_counts_rank_local_batches():
    whole = list(_sampler())
    s = _sampler(1, 2)
    s.start_batch = 1  # this rank already did one batch (global batches 0 and 1 consumed)
    assert list(s) == [whole[3]]


def test_bad_rank():
    with pytest.raises(ValueError, match=r"rank=2 must be in \[0, world_size=2\)"):
        _sampler(2, 2)


def test_data_module_splits_by_the_trainers_rank(tokenizer):
    from functools import partial
    from types import SimpleNamespace

    from zephyr.data.sft import SFTDataModule
    from zephyr.toy.teacher import sft_dialogues

    dm = SFTDataModule(tokenizer=tokenizer, batch_size=4, eval_size=8, toy=partial(sft_dialogues, 64, 0))
    dm.setup("fit")
    whole = list(dm.train_dataloader().batch_sampler)
    dm.trainer = SimpleNamespace(global_rank=1, world_size=2)
    mine = dm.train_dataloader().batch_sampler
    assert (mine.rank, mine.world_size) == (1, 2) and list(mine) == whole[1 : 2 * (len(whole) // 2) : 2]


def test_trainer_arguments_drop_zephyr_keys(compose):
    cfg = compose("strategy=ddp", "hardware.devices=2", "trainer.compile=true")
    strategy, kwargs = trainer_arguments(cfg, launch_plan(cfg))
    assert type(strategy).__name__ == "DDPStrategy"
    assert not set(ZEPHYR_TRAINER_KEYS) & set(kwargs)
    assert kwargs["use_distributed_sampler"] is False  # the data modules' batch sampler splits the ranks
    assert kwargs["max_steps"] == cfg.trainer.max_steps


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
