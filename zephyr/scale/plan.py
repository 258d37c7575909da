"""The launch plan: strategy, world size, batch layout, precision and sharding decided once from the config.

:func:`launch_plan` derives a frozen :class:`LaunchPlan` from ``cfg`` in one place (``strategy`` x ``hardware``
x ``trainer.global_batch_size``); everything after reads that value instead of re-deriving it from ``cfg``.
``zephyr.run.train`` takes these steps, in launch order:

1. :func:`prepare` (before any model is loaded): build and check the plan (impossible strategy x hardware
   combinations and batch sizes are refused with one line), write the derived ``trainer.accumulate_grad_batches``
   into ``cfg`` and print the memory estimate for the plan.
2. :func:`apply_kernel_options` (before the model is built): the Liger kernel switch.
3. :func:`compile_model` (after): ``torch.compile`` of each decoder layer in place.
4. :func:`trainer_arguments`: the plan's strategy object and the ``pl.Trainer`` keyword arguments (without
   zephyr's own ``trainer`` keys); the per-rank batch split is the data modules' batch sampler's.
5. :func:`model_to_export` (after ``fit``, on every rank): the unsharded model holding full weights.
"""

from __future__ import annotations

import importlib.util
import logging
from dataclasses import dataclass
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf, open_dict

from zephyr.scale import ScaleConfigError
from zephyr.scale.batch import BatchPlan, plan_batches
from zephyr.scale.strategies import build_strategy, check_combination, strategy_name, strategy_option, world_size

log = logging.getLogger(__name__)

# keys of the `trainer` group that zephyr consumes itself (everything else goes to pl.Trainer)
ZEPHYR_TRAINER_KEYS = ("global_batch_size", "compile", "liger_kernel", "_target_")


@dataclass(frozen=True)
class LaunchPlan:
    """How one run is laid out over devices, derived once from the config by :func:`launch_plan`.

    Attributes:
        strategy: ``strategy.name`` (``auto``, ``ddp``, ``fsdp`` or ``deepspeed``).
        option: the ``conf/strategy`` option it corresponds to (``deepspeed_stage_3_offload``, ``fsdp``, ...).
        zero_stage: the DeepSpeed ZeRO stage (0 for every other strategy).
        accelerator: ``hardware.accelerator`` (``cpu``, ``gpu``, ...).
        precision: ``hardware.precision`` (``bf16-mixed``, ``32-true``, ...).
        batch: the :class:`~zephyr.scale.batch.BatchPlan` (global batch = micro-batch x accumulation x world).
    """

    strategy: str
    option: str
    zero_stage: int
    accelerator: str
    precision: str
    batch: BatchPlan

    @property
    def world_size(self) -> int:
        """Processes in the job (``hardware.devices`` x ``hardware.num_nodes``)."""
        return self.batch.world_size

    @property
    def accumulate(self) -> int:
        """Micro-batches per optimizer step on each device."""
        return self.batch.accumulate

    @property
    def global_batch_size(self) -> int:
        """Sequences per optimizer step over all ranks."""
        return self.batch.global_batch_size

    @property
    def micro_batch_size(self) -> int:
        """Sequences per forward/backward on one device (``data.batch_size``)."""
        return self.batch.micro_batch_size

    @property
    def on_gpu(self) -> bool:
        """Whether the run is on CUDA devices."""
        return self.accelerator in ("gpu", "cuda")

    @property
    def zero3(self) -> bool:
        """DeepSpeed ZeRO stage 3 (parameters exist only as shards outside module forwards)."""
        return self.strategy == "deepspeed" and self.zero_stage == 3

    @property
    def sharded(self) -> bool:
        """Whether weights are split across ranks (FSDP, ZeRO-3), so the export must gather them."""
        return self.strategy == "fsdp" or self.zero3

    def describe(self) -> str:
        """One line for the launch log: the strategy option, precision and the batch layout."""
        return f"strategy={self.option}, precision={self.precision}, {self.batch.describe()}"


def launch_plan(cfg: DictConfig, *, check: bool = True, cuda_available: bool | None = None) -> LaunchPlan:
    """Derive the :class:`LaunchPlan` of a composed train config (the one place that reads these keys).

    Args:
        cfg: the composed train config (``strategy``, ``hardware``, ``data.batch_size``, ``trainer``).
        check: refuse strategy x hardware combinations that cannot run on this machine
            (:func:`~zephyr.scale.strategies.check_combination`); ``False`` plans a preset for another machine
            (the memory estimate of an ``a100x16`` run printed on a laptop).
        cuda_available: override the CUDA probe of the check (tests check GPU presets on CPU machines).

    Raises:
        ScaleConfigError: see :func:`~zephyr.scale.strategies.check_combination` and
            :func:`~zephyr.scale.batch.plan_batches`.
    """
    name = strategy_name(cfg)
    stage = int(cfg.strategy.get("stage", 0)) if name == "deepspeed" else 0
    batch = plan_batches(
        global_batch_size=cfg.trainer.get("global_batch_size"),
        micro_batch_size=int(cfg.data.batch_size),
        world_size=world_size(cfg.hardware),
        accumulate=int(cfg.trainer.get("accumulate_grad_batches", 1) or 1),
    )
    plan = LaunchPlan(
        strategy=name,
        option=strategy_option(cfg),
        zero_stage=stage,
        accelerator=str(cfg.hardware.get("accelerator", "cpu")),
        precision=str(cfg.hardware.get("precision", "32-true")),
        batch=batch,
    )
    if check:
        check_combination(cfg, plan, cuda_available=cuda_available)
    return plan


def prepare(cfg: DictConfig, *, print_memory: bool = True) -> LaunchPlan:
    """Build and check the plan, set the derived accumulation in ``cfg`` and print the memory table.

    Raises:
        ScaleConfigError: see :func:`launch_plan`.
    """
    plan = launch_plan(cfg)
    with open_dict(cfg):
        cfg.trainer.accumulate_grad_batches = plan.accumulate
        cfg.trainer.global_batch_size = plan.global_batch_size
    log.info("launch: %s", plan.describe())
    if print_memory and cfg.model.get("config") is not None:
        from zephyr.scale.memory import print_memory_estimate

        print_memory_estimate(cfg, plan=plan)
    return plan


def apply_kernel_options(cfg: DictConfig) -> None:
    """``trainer.liger_kernel=true``: patch Mistral's RMSNorm, SwiGLU and RoPE with Liger's Triton kernels.

    The loss keeps zephyr's own chunked cross-entropy (``objective.chunked_loss``), which already avoids full
    logits, so Liger's fused linear cross-entropy is not used.

    Raises:
        ScaleConfigError: liger-kernel is not installed or there is no CUDA device (Triton kernels).
    """
    if not cfg.trainer.get("liger_kernel", False):
        return
    if importlib.util.find_spec("liger_kernel") is None:
        raise ScaleConfigError("trainer.liger_kernel=true needs liger-kernel: pip install liger-kernel (CUDA + Triton)")
    if not torch.cuda.is_available():
        raise ScaleConfigError("trainer.liger_kernel=true needs a CUDA device (Liger kernels are Triton GPU kernels)")
    from liger_kernel.transformers import apply_liger_kernel_to_mistral

    apply_liger_kernel_to_mistral(
        rope=True, rms_norm=True, swiglu=True, cross_entropy=False, fused_linear_cross_entropy=False
    )
    log.info("liger-kernel: RMSNorm, SwiGLU and RoPE patched for Mistral")


def compile_model(model: torch.nn.Module, cfg: DictConfig) -> torch.nn.Module:
    """``trainer.compile=true``: ``torch.compile`` every decoder layer in place (``nn.Module.compile``).

    Compiling the blocks rather than wrapping the whole model keeps parameter names (checkpoints and the HF
    export are unchanged) and composes with FSDP's per-layer units and activation checkpointing.
    """
    if not cfg.trainer.get("compile", False):
        return model
    from zephyr.models.segment_attention import drop_segment_attention
    from zephyr.scale.fsdp2 import decoder_layers

    if drop_segment_attention(model):
        log.info("torch.compile: model.segment_attention off (per-batch run lengths would recompile every layer)")
    for layer in decoder_layers(model):
        layer.compile()
    log.info("torch.compile: %d decoder layers compiled in place", len(decoder_layers(model)))
    return model


def trainer_arguments(cfg: DictConfig, plan: LaunchPlan) -> tuple[Any, dict[str, Any]]:
    """The plan's Lightning strategy and the ``pl.Trainer`` keyword arguments from the ``trainer`` group.

    The per-rank batch split is the data modules' own (their batch sampler takes the trainer's rank and world
    size), so Lightning's sampler injection is turned off.

    Returns:
        ``(strategy, kwargs)``; ``kwargs`` has ``use_distributed_sampler=False`` (ranks are split by zephyr).
    """
    strategy = build_strategy(cfg, plan)
    kwargs = OmegaConf.to_container(cfg.trainer, resolve=True)
    for key in ZEPHYR_TRAINER_KEYS:
        kwargs.pop(key, None)
    kwargs["use_distributed_sampler"] = False
    if plan.strategy == "deepspeed":
        kwargs.pop("gradient_clip_val", None)  # in the DeepSpeed config (gradient_clipping) instead
    return strategy, kwargs


def model_to_export(trainer: Any, hf_model: torch.nn.Module, plan: LaunchPlan) -> torch.nn.Module | None:
    """The model the HF export should save; call on every rank (sharded strategies gather collectively).

    Returns:
        ``hf_model`` itself when it holds full weights (``plan.sharded`` false); an unsharded copy with the
        gathered weights on rank 0 under FSDP / ZeRO-3; ``None`` on the other ranks.
    """
    from zephyr.scale.gather import gather_full_state_dict, unsharded_model

    if not plan.sharded:
        return hf_model if trainer.is_global_zero else None
    state_dict = gather_full_state_dict(trainer, hf_model)
    if state_dict is not None:
        return unsharded_model(hf_model, state_dict)
    if not trainer.is_global_zero:
        return None
    from torch.distributed.fsdp import FSDPModule

    if isinstance(hf_model, FSDPModule):
        raise RuntimeError("internal: an FSDP2-sharded model reached the export without a gathered state dict")
    return hf_model
