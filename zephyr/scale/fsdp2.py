"""FSDP2 ``fully_shard`` for Lightning's ``ModelParallelStrategy`` (``strategy=fsdp`` on CPU, or ``fsdp2``).

Lightning refuses its FSDP strategy on CPU, but PyTorch's FSDP2 runs there: ``ModelParallelStrategy`` builds a
data-parallel device mesh and calls the module's ``configure_model``, where each decoder layer and then the
whole model are wrapped with ``fully_shard`` (the layout torchtitan uses). Parameters become ``DTensor`` shards;
a layer's full weights exist only while it runs. The optimizer is created afterwards, on the shards.

Started from a local checkpoint (``model.path``), the model is built on the meta device
(:func:`meta_model_from_checkpoint`), sharded, allocated shard-sized (:func:`materialize`) and filled tensor by
tensor from the safetensors files (:func:`load_checkpoint_shards`), so no rank ever holds the full model. A
random-init model is built whole on each rank (same seed) and sharded right after. On CPU, glibc is told to
return freed buffers to the OS (:func:`zephyr.scale.host_memory.return_freed_host_memory`), else the step peak
is not below one process's.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
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


def local_checkpoint(path: Any) -> Path | None:
    """``path`` as a local HF checkpoint folder FSDP2 can load shard by shard (safetensors), else ``None``."""
    if not path:
        return None
    p = Path(str(path)).expanduser()
    has_weights = (p / "model.safetensors").is_file() or (p / "model.safetensors.index.json").is_file()
    return p if (p / "config.json").is_file() and has_weights else None


def meta_model_from_checkpoint(build: Any) -> torch.nn.Module:
    """The architecture ``build`` (a partial of :func:`zephyr.models.mistral.build_model` with a local ``path``)
    would load, with its parameters on the meta device (no memory) and its buffers (RoPE) real.

    Set up as ``build_model`` sets up a loaded checkpoint: attention kernel, dtype, the checkpoint's
    generation config with ``pad_token_id`` = EOS, gradient checkpointing, train mode.
    """
    from accelerate import init_empty_weights
    from transformers import AutoConfig, AutoModelForCausalLM, GenerationConfig

    from zephyr.models.mistral import DTYPES, causal_lm_class, family_attn_implementation, resolve_attn_implementation

    kw = dict(getattr(build, "keywords", {}))
    path = local_checkpoint(kw.get("path"))
    if path is None:
        raise ValueError(f"model.path={kw.get('path')}: not a local safetensors checkpoint")
    config = AutoConfig.from_pretrained(path)
    attn = family_attn_implementation(
        causal_lm_class(config), resolve_attn_implementation(kw.get("attn_implementation", "sdpa"))
    )
    with init_empty_weights(include_buffers=False):
        model = AutoModelForCausalLM.from_config(
            config, attn_implementation=attn, dtype=DTYPES[str(kw.get("dtype", "float32"))]
        )
    if (path / "generation_config.json").is_file():
        model.generation_config = GenerationConfig.from_pretrained(path)
    if model.generation_config is not None:
        model.generation_config.pad_token_id = model.config.eos_token_id
    if kw.get("gradient_checkpointing"):
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return model.train()


def materialize(root: torch.nn.Module, device: torch.device | str) -> None:
    """Allocate the (sharded) parameters of a meta-built ``root`` on ``device``, keeping its real buffers."""
    buffers = {name: b.detach().clone() for name, b in root.named_buffers() if b.device.type != "meta"}
    root.to_empty(device=device)
    with torch.no_grad():
        for name, b in root.named_buffers():
            if name in buffers:
                b.copy_(buffers[name])


def load_checkpoint_shards(model: torch.nn.Module, path: Path) -> int:
    """Copy each rank's shard of every weight from the safetensors files of ``path`` into the FSDP2 ``model``.

    One full tensor is read at a time (memory-mapped) and only this rank's slice of it is kept
    (``distribute_tensor`` with ``src_data_rank=None``: every rank slices its own copy, no communication).

    Returns:
        The number of tensors loaded.

    Raises:
        KeyError: a parameter of ``model`` has no tensor in the checkpoint (naming it and the folder).
    """
    from safetensors import safe_open
    from torch.distributed.tensor import DTensor, distribute_tensor

    index = path / "model.safetensors.index.json"
    files = sorted(set(json.loads(index.read_text())["weight_map"].values())) if index.is_file() else []
    files = [path / f for f in files] or [path / "model.safetensors"]
    params = dict(model.named_parameters())
    loaded: set[str] = set()
    with torch.no_grad():
        for file in files:
            with safe_open(str(file), framework="pt") as sf:
                for key in sf.keys():
                    param = params.get(key)
                    if param is None:
                        continue
                    full = sf.get_tensor(key).to(param.dtype)
                    if isinstance(param, DTensor):
                        shard = distribute_tensor(full, param.device_mesh, param.placements, src_data_rank=None)
                        param.to_local().copy_(shard.to_local())
                    else:
                        param.copy_(full)
                    loaded.add(key)
                    del full
    missing = sorted(set(params) - loaded)
    if missing:
        raise KeyError(f"{path}: no weights for {missing[:5]} in the checkpoint")
    return len(loaded)
