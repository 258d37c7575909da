"""Build the Lightning strategy for ``strategy=`` x ``hardware=``, and the DeepSpeed config dict.

Strategy configs (``conf/strategy/*.yaml``) describe *what* to shard; this file maps them onto existing
engines, nothing home-made:

- ``auto``: Lightning's choice (single device; DDP when ``devices`` > 1).
- ``ddp``: ``DDPStrategy`` (NCCL on GPU, gloo on CPU).
- ``fsdp``: ``FSDPStrategy`` (FSDP1, one unit per decoder layer) on GPU; on CPU Lightning refuses FSDP, so
  ``ModelParallelStrategy`` with FSDP2 ``fully_shard`` (applied in the module's ``configure_model``, see
  :mod:`zephyr.scale.fsdp2`) does the sharding.
- ``deepspeed``: ``DeepSpeedStrategy(config=...)`` with the dict from :func:`deepspeed_config`, which for
  ``deepspeed_stage_3`` reproduces the recipe's accelerate ``deepspeed_zero3.yaml`` (zero stage 3, no offload,
  zero3 init, 16-bit weights gathered on save, bf16). GPU only under Lightning.

Combinations that cannot run are refused by :func:`check_combination` with one line naming the keys. The
name, option and world-size helpers here are read once per run, by :func:`zephyr.scale.plan.launch_plan`; the
checks and the strategy object take the resulting :class:`~zephyr.scale.plan.LaunchPlan`.
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING, Any

import torch
from omegaconf import DictConfig, OmegaConf

from zephyr.scale import ScaleConfigError

if TYPE_CHECKING:
    from zephyr.scale.plan import LaunchPlan

STRATEGIES = ("auto", "ddp", "fsdp", "deepspeed")
OFFLOAD_DEVICES = ("none", "cpu")
FSDP_IMPLEMENTATIONS = ("auto", "fsdp2")


def world_size(hardware: DictConfig | dict[str, Any]) -> int:
    """Processes in the job: ``devices`` per node x ``num_nodes``.

    Args:
        hardware: the ``hardware`` config group (``devices`` an int, a list of device ids, or ``auto``/-1).

    Returns:
        The world size; ``auto``/-1 counts visible CUDA devices (1 on CPU).
    """
    devices = hardware.get("devices", 1)
    if isinstance(devices, (list, tuple)) or OmegaConf.is_list(devices):
        per_node = len(devices)
    elif devices in ("auto", -1, "-1"):
        per_node = torch.cuda.device_count() if hardware.get("accelerator") in ("gpu", "cuda") else 1
        per_node = max(per_node, 1)
    else:
        per_node = int(devices)
    return per_node * int(hardware.get("num_nodes", 1) or 1)


def strategy_name(cfg: DictConfig) -> str:
    """``strategy.name`` (``auto`` when the group is absent)."""
    s = cfg.get("strategy")
    return str(s.get("name", "auto")) if s is not None else "auto"


def strategy_option(cfg: DictConfig) -> str:
    """The ``conf/strategy`` option a config corresponds to (``deepspeed_stage_3_offload``, ``fsdp``, ...)."""
    name = strategy_name(cfg)
    if name != "deepspeed":
        return name
    s = cfg.strategy
    stage = int(s.get("stage", 3))
    offload = str(s.get("offload_param", "none")) != "none" or str(s.get("offload_optimizer", "none")) != "none"
    return f"deepspeed_stage_{stage}" + ("_offload" if offload and stage == 3 else "")


def check_combination(cfg: DictConfig, plan: LaunchPlan, *, cuda_available: bool | None = None) -> None:
    """Refuse strategy x hardware combinations that cannot run, with one line naming the keys.

    Args:
        cfg: the composed train config (the ``strategy`` group's own keys: stage, offload, implementation).
        plan: the run's plan (strategy name and option, accelerator).
        cuda_available: override the CUDA probe (tests check GPU presets on CPU machines); default asks torch.

    Raises:
        ScaleConfigError: unknown strategy name, DeepSpeed without CUDA GPUs, an unknown offload device or FSDP
            implementation, parameter offload below stage 3, or a GPU preset on a machine without CUDA.
    """
    name, accel = plan.strategy, plan.accelerator
    if name not in STRATEGIES:
        raise ScaleConfigError(f"strategy.name={name!r} is not one of {STRATEGIES} (conf/strategy/)")
    if cuda_available is None:
        cuda_available = torch.cuda.is_available()
    if plan.on_gpu and not cuda_available:
        raise ScaleConfigError(
            f"hardware.accelerator={accel} but this machine has no CUDA device; use hardware=cpu here "
            "(the GPU presets are for gpu1 / a100x8 / a100x16 / h100x8 machines)"
        )
    if name == "deepspeed":
        s = cfg.strategy
        if not plan.on_gpu:
            raise ScaleConfigError(
                f"strategy={plan.option} needs CUDA GPUs but hardware.accelerator={accel}: "
                "Lightning's DeepSpeed strategy is CUDA-only; on CPU use strategy=ddp or strategy=fsdp, or check the "
                "DeepSpeed config with `torchrun --nproc_per_node 2 -m zephyr.scale.deepspeed_cpu_check`"
            )
        stage = int(s.get("stage", 0))
        if stage not in (1, 2, 3):
            raise ScaleConfigError(f"strategy.stage={stage} must be 1, 2 or 3 (DeepSpeed ZeRO stage)")
        for key in ("offload_optimizer", "offload_param"):
            if str(s.get(key, "none")) not in OFFLOAD_DEVICES:
                raise ScaleConfigError(f"strategy.{key}={s.get(key)!r} must be one of {OFFLOAD_DEVICES}")
        if str(s.get("offload_param", "none")) != "none" and stage != 3:
            raise ScaleConfigError(f"strategy.offload_param={s.offload_param} needs stage 3 (strategy.stage={stage})")
    if name == "fsdp":
        impl = str(cfg.strategy.get("implementation", "auto"))
        if impl not in FSDP_IMPLEMENTATIONS:
            raise ScaleConfigError(f"strategy.implementation={impl!r} must be one of {FSDP_IMPLEMENTATIONS}")


def _auto_bucket(value: Any, default: float) -> int:
    return int(default) if value in (None, "auto") else int(float(value))


def deepspeed_config(
    strategy: DictConfig | dict[str, Any],
    *,
    precision: str,
    hidden_size: int,
    micro_batch_size: int,
    gradient_clip_val: float | None = None,
    accumulate: int | None = None,
    world_size: int | None = None,
) -> dict[str, Any]:
    """The DeepSpeed config dict for a ``deepspeed_*`` strategy config.

    Matches what accelerate writes for the recipe's ``deepspeed_zero3.yaml``: ``zero_optimization.stage``,
    ``offload_optimizer/offload_param.device``, ``stage3_gather_16bit_weights_on_model_save`` (=
    ``zero3_save_16bit_model``) and ``bf16.enabled`` (= ``mixed_precision: bf16``); the ``auto`` bucket sizes
    are filled with transformers' rule (reduce bucket hidden^2, prefetch 0.9 hidden^2, persistence threshold
    10 hidden). ``zero3_init`` is not a DeepSpeed key: it says to build the model under ``deepspeed.zero.Init``.

    Args:
        strategy: the ``strategy`` config group (``name: deepspeed``).
        precision: ``hardware.precision`` (``bf16-mixed``/``bf16-true`` -> bf16, ``16-mixed`` -> fp16).
        hidden_size: the model's hidden size (for the ``auto`` bucket sizes).
        micro_batch_size: per-device micro-batch (``train_micro_batch_size_per_gpu``).
        gradient_clip_val: clip norm (``gradient_clipping``); ``None`` leaves it to Lightning.
        accumulate: gradient accumulation steps. Lightning sets this itself and refuses it in the dict, so pass it
            only for a bare ``deepspeed.initialize`` (then ``world_size`` is needed too for ``train_batch_size``).
        world_size: processes in the job (with ``accumulate``).

    Returns:
        A JSON-serialisable DeepSpeed config.
    """
    s = dict(OmegaConf.to_container(strategy, resolve=True)) if isinstance(strategy, DictConfig) else dict(strategy)
    stage = int(s.get("stage", 3))
    zero: dict[str, Any] = {
        "stage": stage,
        "overlap_comm": bool(s.get("overlap_comm", True)),
        "contiguous_gradients": bool(s.get("contiguous_gradients", True)),
        "reduce_bucket_size": _auto_bucket(s.get("reduce_bucket_size"), hidden_size * hidden_size),
    }
    offload_opt = str(s.get("offload_optimizer", "none"))
    pin = bool(s.get("pin_memory", True))
    zero["offload_optimizer"] = {"device": offload_opt} | ({"pin_memory": pin} if offload_opt != "none" else {})
    if stage == 3:
        offload_param = str(s.get("offload_param", "none"))
        zero["offload_param"] = {"device": offload_param} | ({"pin_memory": pin} if offload_param != "none" else {})
        zero["stage3_gather_16bit_weights_on_model_save"] = bool(s.get("save_16bit_model", True))
        zero["stage3_prefetch_bucket_size"] = int(0.9 * hidden_size * hidden_size)
        zero["stage3_param_persistence_threshold"] = 10 * hidden_size
        zero["stage3_max_live_parameters"] = int(float(s.get("stage3_max_live_parameters", 1e9)))
        zero["stage3_max_reuse_distance"] = int(float(s.get("stage3_max_reuse_distance", 1e9)))
        zero["sub_group_size"] = int(float(s.get("sub_group_size", 1e9)))
    else:
        zero["allgather_bucket_size"] = int(float(s.get("allgather_bucket_size", 5e8)))
    config: dict[str, Any] = {
        "zero_optimization": zero,
        "bf16": {"enabled": precision.startswith("bf16")},
        "fp16": {"enabled": precision.startswith("16")},
        "train_micro_batch_size_per_gpu": int(micro_batch_size),
        "zero_allow_untested_optimizer": True,  # torch AdamW from the objective config, as accelerate passes it
        "wall_clock_breakdown": False,
    }
    if gradient_clip_val is not None:
        config["gradient_clipping"] = float(gradient_clip_val)
    if accumulate is not None:
        if world_size is None:
            raise ScaleConfigError("deepspeed_config: accumulate needs world_size (train_batch_size)")
        config["gradient_accumulation_steps"] = int(accumulate)
        config["train_batch_size"] = int(micro_batch_size) * int(accumulate) * int(world_size)
    return config


def _decoder_layer_classes() -> set[type[torch.nn.Module]]:
    from transformers.models.mistral.modeling_mistral import MistralDecoderLayer

    return {MistralDecoderLayer}


def build_strategy(cfg: DictConfig, plan: LaunchPlan) -> Any:
    """The ``strategy=`` argument for ``pl.Trainer`` (a name or a strategy object).

    Args:
        cfg: the composed train config (``strategy``, ``model``, ``trainer``: the engine's own settings).
        plan: the run's checked plan (:func:`zephyr.scale.plan.launch_plan`): strategy, world size, precision,
            micro-batch.
    """
    name = plan.strategy
    s = cfg.strategy
    if name == "auto":
        return "auto"
    if name == "ddp":
        from pytorch_lightning.strategies import DDPStrategy

        return DDPStrategy(
            find_unused_parameters=bool(s.get("find_unused_parameters", False)),
            gradient_as_bucket_view=bool(s.get("gradient_as_bucket_view", True)),
            static_graph=bool(s.get("static_graph", False)),
        )
    if name == "fsdp":
        if not plan.on_gpu or str(s.get("implementation", "auto")) == "fsdp2":
            from pytorch_lightning.strategies import ModelParallelStrategy

            # data-parallel FSDP2 over every rank; fully_shard itself is applied in configure_model
            return ModelParallelStrategy(
                data_parallel_size=plan.world_size,
                tensor_parallel_size=1,
                save_distributed_checkpoint=str(s.get("state_dict_type", "sharded")) == "sharded",
            )
        from pytorch_lightning.strategies import FSDPStrategy

        layers = _decoder_layer_classes()
        return FSDPStrategy(
            auto_wrap_policy=layers,
            activation_checkpointing_policy=layers if s.get("activation_checkpointing", True) else None,
            sharding_strategy=str(s.get("sharding_strategy", "FULL_SHARD")),
            state_dict_type=str(s.get("state_dict_type", "sharded")),
            cpu_offload=bool(s.get("cpu_offload", False)),
            limit_all_gathers=bool(s.get("limit_all_gathers", True)),
        )
    from pytorch_lightning.strategies import DeepSpeedStrategy

    ds = deepspeed_config(
        s,
        precision=plan.precision,
        hidden_size=int(cfg.model.config.hidden_size),
        micro_batch_size=plan.micro_batch_size,
        gradient_clip_val=cfg.trainer.get("gradient_clip_val"),
    )
    # Lightning warns that an overridden configure_gradient_clipping (ZephyrModule's, for FSDP1 and fused bf16
    # steps) "will not actually clip" under DeepSpeed; here the engine clips (``gradient_clipping`` above) and the
    # hook falls through to Lightning's no-op, so the warning would only mislead
    warnings.filterwarnings("ignore", message="Since DeepSpeed handles gradient clipping internally")
    return DeepSpeedStrategy(config=ds)
