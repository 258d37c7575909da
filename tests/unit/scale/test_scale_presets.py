"""``+experiment=zephyr_7b_sft hardware=a100x16 strategy=deepspeed_stage_3`` is the paper's dSFT; SLURM launcher."""

from __future__ import annotations

import pytest

from zephyr.scale.batch import plan_batches
from zephyr.scale.strategies import world_size


def test_zephyr_7b_sft_has_the_papers_values(compose):
    """arXiv 2310.16944 §4 / handbook sft/config_full.yaml (recipes.md §1-2)."""
    cfg = compose("+experiment=zephyr_7b_sft", "hardware=a100x16", "strategy=deepspeed_stage_3")
    assert cfg.model.path == "mistralai/Mistral-7B-v0.1"
    assert cfg.data.name == "HuggingFaceH4/ultrachat_200k"
    assert cfg.objective.optimizer.lr == 2.0e-5
    assert cfg.objective.optimizer.weight_decay == 0.0
    assert cfg.objective.optimizer._target_ == "torch.optim.AdamW"
    assert cfg.objective.scheduler.name == "cosine"
    assert cfg.objective.scheduler.warmup_ratio == 0.1
    assert cfg.trainer.global_batch_size == 512
    assert cfg.data.max_length == 2048 and cfg.data.packing is True
    assert cfg.trainer.max_epochs == 1 and cfg.trainer.max_steps == -1
    assert cfg.hardware.precision == "bf16-mixed"
    assert cfg.model.attn_implementation == "flash_attention_2"
    assert cfg.model.gradient_checkpointing is True
    assert (cfg.hardware.devices, cfg.hardware.num_nodes) == (8, 2)
    assert cfg.strategy.name == "deepspeed" and cfg.strategy.stage == 3
    assert cfg.strategy.offload_optimizer == "none" and cfg.strategy.offload_param == "none"
    assert cfg.strategy.zero3_init is True and cfg.strategy.save_16bit_model is True
    assert cfg.seed == 42
    plan = plan_batches(
        global_batch_size=cfg.trainer.global_batch_size,
        micro_batch_size=cfg.data.batch_size,
        world_size=world_size(cfg.hardware),
    )
    assert plan.micro_batch_size * plan.accumulate * plan.world_size == 512


def test_same_preset_keeps_512_on_one_node(compose):
    cfg = compose("+experiment=zephyr_7b_sft", "hardware=a100x8", "strategy=fsdp")
    plan = plan_batches(
        global_batch_size=cfg.trainer.global_batch_size,
        micro_batch_size=cfg.data.batch_size,
        world_size=world_size(cfg.hardware),
    )
    assert (plan.global_batch_size, plan.world_size, plan.accumulate) == (512, 8, 4)


def test_slurm_launcher_takes_nodes_and_gpus_from_hardware(compose):
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    cfg = compose(
        "+experiment=zephyr_7b_sft",
        "hardware=a100x16",
        "strategy=deepspeed_stage_3",
        "+launcher=slurm",
        "hydra.launcher.partition=gpu",
        return_hydra_config=True,
    )
    launcher = cfg.hydra.launcher
    assert launcher._target_ == "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"
    assert (launcher.nodes, launcher.gpus_per_node, launcher.tasks_per_node) == (2, 8, 8)
    assert launcher.partition == "gpu"
    assert launcher.timeout_min == 480
