"""FSDP2 ``fully_shard`` for Lightning's ``ModelParallelStrategy`` (``strategy=fsdp`` on CPU, or ``fsdp2``).

Lightning refuses its FSDP strategy on CPU, but PyTorch's FSDP2 runs there: ``ModelParallelStrategy`` builds a
data-parallel device mesh and calls the module's ``configure_model``, where each decoder layer and then the
whole model are wrapped with ``fully_shard`` (the layout torchtitan uses). Parameters become ``DTensor`` shards;
a layer's full weights exist only while it runs. The optimizer is created afterwards, on the shards.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch


def decoder_layers(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The transformer blocks of a Hugging Face causal LM (``model.model.layers`` for Mistral/Llama)."""
    base = getattr(model, "model", None)
    layers = getattr(base, "layers", None)
    if layers is None:
        raise TypeError(f"{type(model).__name__} has no .model.layers; cannot apply FSDP2 per decoder layer")
    return list(layers)


def is_fully_sharded(model: torch.nn.Module) -> bool:
    """Whether ``fully_shard`` was already applied to ``model``."""
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)


def apply_fully_shard(
    root: torch.nn.Module,
    model: torch.nn.Module,
    mesh,
    *,
    forward_methods: tuple[str, ...] = ("training_step", "validation_step"),
    bf16_compute: bool = False,
) -> torch.nn.Module:
    """Shard in place: one FSDP2 unit per decoder layer of ``model``, then ``root`` (embeddings, norm, head).

    The root unit is the LightningModule, not the HF model, because the objectives call
    ``model.base_model(...)`` and read ``lm_head.weight`` directly (the chunked loss) instead of calling the HF
    model's ``forward``; registering ``training_step``/``validation_step`` as FSDP forward methods makes FSDP2
    gather the root parameters around each step and reduce-scatter their gradients afterwards.

    Args:
        root: the LightningModule holding ``model``.
        model: the Hugging Face causal LM (``root.model``).
        mesh: the data-parallel ``DeviceMesh`` (``LightningModule.device_mesh``; its ``data_parallel`` dim when 2-D).
        forward_methods: methods of ``root`` that run the model.
        bf16_compute: gather and compute in bf16 with fp32 reductions (``MixedPrecisionPolicy``); leave False
            when Lightning's ``bf16-mixed`` autocast already handles it.

    Returns:
        ``root`` (now an ``FSDPModule``); a module already sharded is returned unchanged.
    """
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard, register_fsdp_forward_method

    if is_fully_sharded(root):
        return root
    if mesh is not None and mesh.ndim > 1:
        mesh = mesh["data_parallel"]
    kwargs = {"mesh": mesh}
    if bf16_compute:
        kwargs["mp_policy"] = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    for layer in decoder_layers(model):
        fully_shard(layer, **kwargs)
    fully_shard(root, **kwargs)
    for name in forward_methods:
        if hasattr(root, name):
            register_fsdp_forward_method(root, name)
    return root


@contextmanager
def zero3_build_context(strategy: Any) -> Iterator[None]:
    """Keep a ``HfDeepSpeedConfig`` alive while the model is built under DeepSpeed ZeRO-3 (else nothing).

    Lightning already runs ``configure_model`` inside ``deepspeed.zero.Init``, so modules created there (random
    init) are partitioned at construction; ``from_pretrained`` additionally needs transformers to know ZeRO-3 is
    on (``is_deepspeed_zero3_enabled``) so it loads each weight into its partition instead of a full copy.
    """
    config = getattr(strategy, "config", None) if getattr(strategy, "zero_stage_3", False) else None
    if config is None:
        yield
        return
    from transformers.integrations import HfDeepSpeedConfig

    hf_ds = HfDeepSpeedConfig(config)  # transformers holds a weak reference: keep it alive for the build
    try:
        yield
    finally:
        del hf_ds
