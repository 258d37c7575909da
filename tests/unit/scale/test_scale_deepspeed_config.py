"""The DeepSpeed dict for ``strategy=deepspeed_stage_3`` has the recipe's accelerate ZeRO-3 values."""

from __future__ import annotations

import json

import pytest

from zephyr.scale import ScaleConfigError
from zephyr.scale.strategies import deepspeed_config

H = 4096  # Mistral-7B hidden size


@pytest.fixture
def stage3(compose):
    return compose("strategy=deepspeed_stage_3", "hardware=a100x16", "model=mistral_7b")


def test_stage3_matches_the_recipes_accelerate_zero3_yaml(stage3):
    """recipes.md §4: zero_stage 3, offload none/none, zero3_save_16bit_model true, mixed_precision bf16."""
    ds = deepspeed_config(
        stage3.strategy, precision="bf16-mixed", hidden_size=H, micro_batch_size=16, gradient_clip_val=1.0
    )
    zero = ds["zero_optimization"]
    assert zero["stage"] == 3
    assert zero["offload_optimizer"] == {"device": "none"}
    assert zero["offload_param"] == {"device": "none"}
    assert zero["stage3_gather_16bit_weights_on_model_save"] is True
    assert ds["bf16"] == {"enabled": True} and ds["fp16"] == {"enabled": False}
    assert stage3.strategy.zero3_init is True  # zero3_init_flag: the model is built under deepspeed.zero.Init
    # transformers' "auto" fill for the bucket sizes, from the hidden size
    assert zero["reduce_bucket_size"] == H * H == 16_777_216
    assert zero["stage3_prefetch_bucket_size"] == 15_099_494  # int(0.9 * 4096**2)
    assert zero["stage3_param_persistence_threshold"] == 40_960
    assert ds["train_micro_batch_size_per_gpu"] == 16
    assert ds["gradient_clipping"] == 1.0
    # Lightning refuses these two keys in the dict (it fills them from the Trainer)
    assert "gradient_accumulation_steps" not in ds and "train_batch_size" not in ds
    json.dumps(ds)  # DeepSpeed configs must be JSON


def test_bare_engine_config_gets_the_batch_triple(stage3):
    ds = deepspeed_config(
        stage3.strategy, precision="bf16-mixed", hidden_size=H, micro_batch_size=16, accumulate=2, world_size=16
    )
    assert (ds["train_micro_batch_size_per_gpu"], ds["gradient_accumulation_steps"], ds["train_batch_size"]) == (
        16,
        2,
        512,
    )
    with pytest.raises(ScaleConfigError, match="accumulate needs world_size"):
        deepspeed_config(stage3.strategy, precision="bf16-mixed", hidden_size=H, micro_batch_size=16, accumulate=2)


def test_offload_and_stage2_variants(compose):
    off = compose("strategy=deepspeed_stage_3_offload", "hardware=gpu1")
    ds = deepspeed_config(off.strategy, precision="bf16-mixed", hidden_size=H, micro_batch_size=1)
    assert ds["zero_optimization"]["offload_optimizer"] == {"device": "cpu", "pin_memory": True}
    assert ds["zero_optimization"]["offload_param"] == {"device": "cpu", "pin_memory": True}
    assert ds["zero_optimization"]["stage"] == 3

    s2 = compose("strategy=deepspeed_stage_2", "hardware=a100x8")
    ds = deepspeed_config(s2.strategy, precision="16-mixed", hidden_size=H, micro_batch_size=4)
    zero = ds["zero_optimization"]
    assert zero["stage"] == 2 and "offload_param" not in zero and "stage3_prefetch_bucket_size" not in zero
    assert zero["allgather_bucket_size"] == 500_000_000
    assert ds["fp16"] == {"enabled": True} and ds["bf16"] == {"enabled": False}
