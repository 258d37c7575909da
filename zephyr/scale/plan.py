"""What ``zephyr.run.train`` asks of the scale package, in launch order.

1. :func:`prepare` (before any model is loaded): refuse impossible strategy x hardware combinations, derive
   ``trainer.accumulate_grad_batches`` from ``trainer.global_batch_size`` and print the memory estimate.
2. :func:`apply_kernel_options` (before the model is built): the Liger kernel switch.
3. :func:`compile_model` (after): ``torch.compile`` of each decoder layer in place.
4. :func:`trainer_arguments`: the strategy, the ``pl.Trainer`` keyword arguments (without zephyr's own
   ``trainer`` keys) and the per-rank batch split.
5. :func:`model_to_export` (after ``fit``, on every rank): the unsharded model holding full weights.
"""

from __future__ import annotations

import importlib.util
import logging
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf, open_dict

from zephyr.scale import ScaleConfigError
from zephyr.scale.batch import BatchPlan, plan_batches
from zephyr.scale.strategies import build_strategy, check_combination, is_zero3, strategy_name, world_size

log = logging.getLogger(__name__)

# keys of the `trainer` group that zephyr consumes itself (everything else goes to pl.Trainer)
ZEPHYR_TRAINER_KEYS = ("global_batch_size", "compile", "liger_kernel", "_target_")


def prepare(cfg: DictConfig, *, print_memory: bool = True) -> BatchPlan:
    """Check the combination, set the derived accumulation in ``cfg`` and print the memory table.

    Raises:
        ScaleConfigError: see :func:`~zephyr.scale.strategies.check_combination` and
            :func:`~zephyr.scale.batch.plan_batches`.
    """
    check_combination(cfg)
    plan = plan_batches(
        global_batch_size=cfg.trainer.get("global_batch_size"),
        micro_batch_size=int(cfg.data.batch_size),
        world_size=world_size(cfg.hardware),
        accumulate=int(cfg.trainer.get("accumulate_grad_batches", 1) or 1),
    )
    with open_dict(cfg):
        cfg.trainer.accumulate_grad_batches = plan.accumulate
        cfg.trainer.global_batch_size = plan.global_batch_size
        if is_zero3(cfg) and cfg.objective.get("chunked_loss", False):
            # the chunked loss reads lm_head.weight outside the head's forward, where ZeRO-3 holds only a shard
            log.warning("objective.chunked_loss=false under DeepSpeed ZeRO-3 (the LM head is gathered in its forward)")
            cfg.objective.chunked_loss = False
    log.info("batch: %s", plan.describe())
    if print_memory and cfg.model.get("config") is not None:
        from zephyr.scale.memory import print_memory_estimate

        print_memory_estimate(cfg)
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
    from zephyr.scale.fsdp2 import decoder_layers

    for layer in decoder_layers(model):
        layer.compile()
    log.info("torch.compile: %d decoder layers compiled in place", len(decoder_layers(model)))
    return model


def trainer_arguments(cfg: DictConfig) -> tuple[Any, dict[str, Any]]:
    """The Lightning strategy and the ``pl.Trainer`` keyword arguments from the ``trainer`` group.

    The per-rank batch split is the data modules' own (their batch sampler takes the trainer's rank and world
    size), so Lightning's sampler injection is turned off.

    Returns:
        ``(strategy, kwargs)``; ``kwargs`` has ``use_distributed_sampler=False`` (ranks are split by zephyr).
    """
    strategy = build_strategy(cfg)
    kwargs = OmegaConf.to_container(cfg.trainer, resolve=True)
    for key in ZEPHYR_TRAINER_KEYS:
        kwargs.pop(key, None)
    kwargs["use_distributed_sampler"] = False
    if strategy_name(cfg) == "deepspeed":
        kwargs.pop("gradient_clip_val", None)  # in the DeepSpeed config (gradient_clipping) instead
    return strategy, kwargs


def model_to_export(trainer: Any, hf_model: torch.nn.Module) -> torch.nn.Module | None:
    """The model the HF export should save; call on every rank (sharded strategies gather collectively).

    Returns:
        ``hf_model`` itself when it holds full weights; an unsharded copy with the gathered weights on rank 0
        under FSDP / ZeRO-3; ``None`` on the other ranks.
    """
    from zephyr.scale.gather import gather_full_state_dict, unsharded_model

    state_dict = gather_full_state_dict(trainer, hf_model)
    if state_dict is not None:
        return unsharded_model(hf_model, state_dict)
    if not trainer.is_global_zero:
        return None
    from torch.distributed.fsdp import FSDPModule

    if isinstance(hf_model, FSDPModule):
        raise RuntimeError("internal: an FSDP2-sharded model reached the export without a gathered state dict")
    return hf_model
