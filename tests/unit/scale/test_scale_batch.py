"""Global batch set once -> per-device x accumulation x world; clear errors when it cannot divide."""

from __future__ import annotations

import pytest

from zephyr.scale import ScaleConfigError
from zephyr.scale.batch import BatchPlan, plan_batches
from zephyr.scale.plan import prepare


@pytest.mark.parametrize(
    ("world", "micro", "accumulate"),
    [(16, 16, 2), (8, 16, 4), (1, 16, 32), (16, 32, 1), (8, 32, 2)],  # 32 x 2 x 8 is the handbook's 512
)
def test_paper_global_batch_on_any_hardware(world, micro, accumulate):
    plan = plan_batches(global_batch_size=512, micro_batch_size=micro, world_size=world)
    assert plan == BatchPlan(512, micro, accumulate, world)
    assert plan.micro_batch_size * plan.accumulate * plan.world_size == 512


def test_without_global_batch_the_product_is_reported():
    plan = plan_batches(global_batch_size=None, micro_batch_size=4, world_size=2, accumulate=3)
    assert plan.global_batch_size == 24
    assert plan.describe() == "global batch 24 = 4 per device x 3 accumulation x 2 devices"


def test_indivisible_micro_batch_lists_the_sizes_that_work():
    with pytest.raises(ScaleConfigError) as e:
        plan_batches(global_batch_size=512, micro_batch_size=24, world_size=16)
    msg = str(e.value)
    assert "trainer.global_batch_size=512 is not divisible by data.batch_size=24 x 16 devices = 384" in msg
    assert "[1, 2, 4, 8, 16, 32]" in msg


def test_global_batch_not_a_multiple_of_the_world():
    with pytest.raises(ScaleConfigError, match=r"cannot be split over 16 devices .* multiple of 16"):
        plan_batches(global_batch_size=100, micro_batch_size=1, world_size=16)


def test_explicit_accumulation_that_disagrees_is_refused():
    assert plan_batches(global_batch_size=64, micro_batch_size=8, world_size=2, accumulate=4).accumulate == 4
    with pytest.raises(ScaleConfigError, match=r"accumulate_grad_batches=3 conflicts .* needs 4"):
        plan_batches(global_batch_size=64, micro_batch_size=8, world_size=2, accumulate=3)


def test_non_positive_sizes():
    with pytest.raises(ScaleConfigError, match=r"data.batch_size=0 must be >= 1"):
        plan_batches(global_batch_size=8, micro_batch_size=0, world_size=1)
    with pytest.raises(ScaleConfigError, match=r"trainer.global_batch_size=0 must be >= 1"):
        plan_batches(global_batch_size=0, micro_batch_size=1, world_size=1)


def test_prepare_writes_the_derived_accumulation_into_the_config(compose):
    cfg = compose("trainer.global_batch_size=64", "data.batch_size=8", "hardware.devices=2")
    plan = prepare(cfg, print_memory=False)
    assert plan.accumulate == 4
    assert cfg.trainer.accumulate_grad_batches == 4 and cfg.trainer.global_batch_size == 64
