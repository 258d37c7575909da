"""Every strategy x hardware pair composes; GPU-only pairs are refused on CPU with one line; the paper preset."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from zephyr.scale import ScaleConfigError
from zephyr.scale.strategies import build_strategy, check_combination, world_size

CONF = Path(__file__).resolve().parents[3] / "conf"
STRATEGIES = sorted(p.stem for p in (CONF / "strategy").glob("*.yaml"))
HARDWARE = sorted(p.stem for p in (CONF / "hardware").glob("*.yaml"))
EXPECTED_HW = {  # devices, num_nodes, precision, attention
    "cpu": (1, 1, "32-true", "sdpa"),
    "gpu1": (1, 1, "bf16-mixed", "flash_attention_2"),
    "a100x8": (8, 1, "bf16-mixed", "flash_attention_2"),
    "a100x16": (8, 2, "bf16-mixed", "flash_attention_2"),
    "h100x8": (8, 1, "bf16-mixed", "flash_attention_2"),
}


@pytest.fixture(scope="module")
def grid(tmp_path_factory):
    """The composed config of every strategy x hardware pair, composed under one Hydra initialisation."""
    root = tmp_path_factory.mktemp("grid")
    GlobalHydra.instance().clear()
    out = {}
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        for s in STRATEGIES:
            for h in HARDWARE:
                out[s, h] = compose("train", overrides=[f"strategy={s}", f"hardware={h}", f"paths.root_dir={root}"])
    GlobalHydra.instance().clear()
    return out


def test_groups_have_the_issue_options():
    assert STRATEGIES == sorted(
        ["auto", "ddp", "fsdp", "deepspeed_stage_2", "deepspeed_stage_3", "deepspeed_stage_3_offload"]
    )
    assert HARDWARE == sorted(EXPECTED_HW)


def test_every_pair_composes_with_its_hardware_values(grid):
    assert len(grid) == len(STRATEGIES) * len(HARDWARE) == 30
    for (s, h), cfg in grid.items():
        devices, nodes, precision, attn = EXPECTED_HW[h]
        assert (cfg.hardware.devices, cfg.hardware.num_nodes, cfg.hardware.precision) == (devices, nodes, precision)
        assert cfg.model.attn_implementation == attn, (s, h)
        assert world_size(cfg.hardware) == devices * nodes
        assert cfg.strategy.name == ("deepspeed" if s.startswith("deepspeed") else s)


def test_pairs_valid_on_a_gpu_machine_pass_and_deepspeed_on_cpu_is_refused(grid):
    refused = []
    for (s, h), cfg in grid.items():
        try:
            check_combination(cfg, cuda_available=True)
        except ScaleConfigError as e:
            refused.append((s, h))
            assert "\n" not in str(e)
            assert "needs CUDA GPUs" in str(e) and f"strategy={s}" in str(e) and "hardware.accelerator=cpu" in str(e)
    assert sorted(refused) == [(s, "cpu") for s in STRATEGIES if s.startswith("deepspeed")]


def test_gpu_presets_on_a_machine_without_cuda_fail_with_one_line(grid):
    with pytest.raises(ScaleConfigError, match=r"hardware.accelerator=gpu but this machine has no CUDA device"):
        check_combination(grid["ddp", "a100x8"], cuda_available=False)


def test_bad_strategy_values_name_the_key(grid):
    from omegaconf import OmegaConf

    cfg = grid["deepspeed_stage_2", "a100x8"].copy()
    OmegaConf.update(cfg, "strategy.offload_param", "cpu")
    with pytest.raises(ScaleConfigError, match=r"strategy.offload_param=cpu needs stage 3 \(strategy.stage=2\)"):
        check_combination(cfg, cuda_available=True)
    OmegaConf.update(cfg, "strategy.offload_param", "nvme")
    with pytest.raises(ScaleConfigError, match=r"strategy.offload_param='nvme' must be one of"):
        check_combination(cfg, cuda_available=True)
    cfg = grid["auto", "cpu"].copy()
    OmegaConf.update(cfg, "strategy.name", "horovod")
    with pytest.raises(ScaleConfigError, match=r"strategy.name='horovod' is not one of"):
        check_combination(cfg)


def test_cpu_strategies_build_lightning_objects(grid):
    from pytorch_lightning.strategies import DDPStrategy, ModelParallelStrategy

    assert build_strategy(grid["auto", "cpu"]) == "auto"
    ddp = build_strategy(grid["ddp", "cpu"])
    assert isinstance(ddp, DDPStrategy) and ddp._ddp_kwargs["gradient_as_bucket_view"] is True
    fsdp = build_strategy(grid["fsdp", "cpu"])  # Lightning refuses FSDPStrategy on CPU: FSDP2 instead
    assert isinstance(fsdp, ModelParallelStrategy)
    assert (fsdp._data_parallel_size, fsdp._tensor_parallel_size) == (1, 1)


def test_fsdp_on_gpu_is_lightnings_fsdp_with_decoder_layer_units(grid):
    from pytorch_lightning.strategies import FSDPStrategy
    from transformers.models.mistral.modeling_mistral import MistralDecoderLayer

    s = build_strategy(grid["fsdp", "a100x16"], cuda_available=True)
    assert isinstance(s, FSDPStrategy)
    assert s.sharding_strategy.name == "FULL_SHARD"
    assert s._state_dict_type == "sharded"
    assert s.kwargs["auto_wrap_policy"]._module_classes == {MistralDecoderLayer}
    assert s.kwargs.get("limit_all_gathers") is True


def test_deepspeed_strategy_object_carries_the_generated_config(grid):
    pytest.importorskip("deepspeed")
    from pytorch_lightning.strategies import DeepSpeedStrategy

    cfg = grid["deepspeed_stage_3", "a100x16"]
    s = build_strategy(cfg, cuda_available=True)
    assert isinstance(s, DeepSpeedStrategy)
    assert s.config["zero_optimization"]["stage"] == 3
    assert s.config["bf16"] == {"enabled": True}
    assert "gradient_accumulation_steps" not in s.config  # Lightning sets it from accumulate_grad_batches
