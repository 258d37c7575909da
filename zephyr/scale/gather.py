"""Full weights for the Hugging Face export from any strategy, so a sharded run exports the same files.

- single device / DDP: the module's own ``state_dict`` (every rank holds a full replica).
- FSDP2 (``ModelParallelStrategy``) and FSDP1 (``FSDPStrategy``): ``torch.distributed.checkpoint.state_dict.
  get_model_state_dict(full_state_dict=True, cpu_offload=True)``, a collective that leaves the full tensors on
  rank 0 (CPU).
- DeepSpeed ZeRO-3: the engine's ``_zero3_consolidated_16bit_state_dict()`` (the function behind
  ``stage3_gather_16bit_weights_on_model_save``), also a collective, full 16-bit weights on rank 0.

Every rank must call :func:`gather_full_state_dict`; only rank 0 gets a dict back. The export then loads it into
a fresh, unsharded copy of the architecture built on the meta device (:func:`unsharded_model`), because a
sharded module's class is rewritten (FSDP2 makes ``FSDPMistralForCausalLM``) and ``save_pretrained`` would
write that name into ``config.json``.
"""

from __future__ import annotations

from typing import Any

import torch


def _strip_prefix(state_dict: dict[str, torch.Tensor], anchor: str) -> dict[str, torch.Tensor]:
    """Drop the wrapper prefix (``model.``, ``_forward_module.model.``...) so keys match the HF model's."""
    prefix = next((k[: -len(anchor)] for k in state_dict if k.endswith(anchor)), None)
    if prefix is None:
        raise KeyError(f"gathered state dict has no key ending in {anchor!r} (keys: {sorted(state_dict)[:5]}...)")
    return {k[len(prefix) :]: v for k, v in state_dict.items() if k.startswith(prefix)}


def gather_full_state_dict(trainer: Any, hf_model: torch.nn.Module) -> dict[str, torch.Tensor] | None:
    """Collect the full weights of ``hf_model`` (the module's ``.model``) from whatever strategy trained it.

    Args:
        trainer: the fitted ``pl.Trainer``.
        hf_model: the Hugging Face model inside the LightningModule.

    Returns:
        On rank 0 the full state dict with Hugging Face key names (CPU tensors for sharded strategies);
        ``None`` on the other ranks. For unsharded strategies, ``None`` everywhere (use the model's own weights).
    """
    from pytorch_lightning.strategies import DeepSpeedStrategy, FSDPStrategy, ModelParallelStrategy

    strategy = trainer.strategy
    anchor = next(name for name, _ in hf_model.named_parameters())  # e.g. "model.embed_tokens.weight"
    if isinstance(strategy, DeepSpeedStrategy):
        engine = strategy.deepspeed_engine
        if engine.zero_optimization_stage() != 3:
            return None
        sd = engine._zero3_consolidated_16bit_state_dict()
        return _strip_prefix(sd, anchor) if trainer.is_global_zero else None
    if isinstance(strategy, (ModelParallelStrategy, FSDPStrategy)):
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        sd = get_model_state_dict(strategy.model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        return _strip_prefix(sd, anchor) if trainer.is_global_zero else None
    return None


def unsharded_model(hf_model: torch.nn.Module, state_dict: dict[str, torch.Tensor]) -> torch.nn.Module:
    """A plain copy of ``hf_model``'s architecture (its own config object) holding ``state_dict``."""
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        fresh = AutoModelForCausalLM.from_config(hf_model.config)
    missing, unexpected = fresh.load_state_dict(state_dict, strict=False, assign=True)
    if missing or unexpected:
        raise KeyError(f"gathered weights do not match the model: missing {missing[:5]}, unexpected {unexpected[:5]}")
    if getattr(hf_model, "generation_config", None) is not None:
        fresh.generation_config = hf_model.generation_config
    return fresh
