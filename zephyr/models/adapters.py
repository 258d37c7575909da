"""LoRA / QLoRA adapters through ``peft``: the ``adapter=none|lora|qlora`` config group.

``adapter=lora`` wraps the built model with ``peft.get_peft_model`` (``LoraConfig``: ``adapter.r``,
``adapter.alpha``, ``adapter.dropout``, ``adapter.target_modules``, ``adapter.modules_to_save``); only the
adapters (and ``modules_to_save``) train, the base weights stay bit-identical. ``target_modules: null`` means
every linear layer of the decoder blocks (not the LM head, not the embeddings). ``adapter=qlora`` also loads the
base in 4-bit NF4 with double quantization and bf16 compute (``BitsAndBytesConfig``) and turns gradient
checkpointing on (``peft.prepare_model_for_kbit_training``). bitsandbytes (0.50 tested) runs these 4-bit layers on
CPU as well as CUDA (``pip install -e '.[qlora]'``).

The run exports the merged full model (``merge_and_unload`` on a fresh unquantized copy of the base, so a QLoRA
run's ``<run>/model`` is a plain bf16/fp32 checkpoint) and the PEFT adapter directory (``adapter_config.json``
+ ``adapter_model.safetensors``, loadable with ``peft.AutoPeftModelForCausalLM``). Bad values stop the run with
one line (:class:`zephyr.errors.ConfigError`) before anything trains.
"""

from __future__ import annotations

import importlib.util
import logging
import warnings
from typing import Any

import torch
from omegaconf import DictConfig

from zephyr.errors import ConfigError

log = logging.getLogger(__name__)

ADAPTERS = ("none", "lora", "qlora")
# strategies that shard the weights: the export's gather does not know PEFT's module names
_SHARDED = ("fsdp", "deepspeed_stage_3", "deepspeed_stage_3_offload")


def adapter_config(cfg: DictConfig) -> dict[str, Any]:
    """The ``adapter`` group as a plain dict (``{"name": "none"}`` when the group is absent)."""
    from omegaconf import OmegaConf

    node = cfg.get("adapter")
    if node is None:
        return {"name": "none"}
    return dict(OmegaConf.to_container(node, resolve=True))


def uses_adapter(cfg: DictConfig) -> bool:
    """Whether the run trains adapters (``adapter=lora`` or ``adapter=qlora``)."""
    return adapter_config(cfg).get("name", "none") != "none"


def check_adapter(cfg: DictConfig) -> None:
    """Refuse an adapter config that cannot run, in one line, before data or model are loaded.

    Raises:
        ConfigError: unknown ``adapter`` option, ``adapter.r`` <= 0, ``adapter.alpha`` <= 0, ``adapter.dropout``
            outside [0, 1), peft or bitsandbytes missing, QLoRA without a pretrained ``model.path``, or a
            sharded strategy.
    """
    acfg = adapter_config(cfg)
    name = acfg.get("name", "none")
    if name not in ADAPTERS:
        raise ConfigError(f"adapter.name={name!r} must be one of {', '.join(ADAPTERS)}")
    if name == "none":
        return
    r = acfg.get("r")
    if isinstance(r, bool) or not isinstance(r, int) or r <= 0:
        raise ConfigError(f"adapter.r={r!r} must be a positive integer (the LoRA rank, e.g. 16)")
    alpha = acfg.get("alpha")
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or alpha <= 0:
        raise ConfigError(f"adapter.alpha={alpha!r} must be a positive number (LoRA scales updates by alpha / r)")
    dropout = acfg.get("dropout", 0.0)
    if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0 <= dropout < 1:
        raise ConfigError(f"adapter.dropout={dropout!r} must be in [0, 1)")
    if importlib.util.find_spec("peft") is None:
        raise ConfigError(f"adapter={name} needs peft (a zephyr dependency): pip install 'peft>=0.13'")
    from zephyr.scale.strategies import strategy_option

    if strategy_option(cfg) in _SHARDED:
        raise ConfigError(
            f"adapter={name} with strategy={strategy_option(cfg)} is not supported (sharded weights): "
            "use strategy=auto, ddp or deepspeed_stage_2 (the frozen base is small enough per device with adapters)"
        )
    if name == "qlora":
        check_qlora(cfg)


def check_qlora(cfg: DictConfig) -> None:
    """``adapter=qlora`` needs bitsandbytes (4-bit layers), a backend it supports and a pretrained checkpoint."""
    if importlib.util.find_spec("bitsandbytes") is None:
        raise ConfigError("adapter=qlora needs bitsandbytes (4-bit NF4 base): pip install -e '.[qlora]'")
    accel = str(cfg.hardware.get("accelerator", "cpu"))
    if accel not in ("cpu", "gpu", "cuda", "auto"):
        raise ConfigError(f"adapter=qlora needs a CUDA GPU or the CPU (bitsandbytes 4-bit), not accelerator={accel}")
    if accel in ("gpu", "cuda") and not torch.cuda.is_available():
        raise ConfigError("adapter=qlora with hardware.accelerator=gpu needs CUDA, which this machine does not have")
    if not cfg.model.get("path"):
        raise ConfigError(
            "adapter=qlora needs a pretrained model.path=DIR (or hub name) to quantize to 4 bits; "
            "a random-init model has nothing to quantize (use adapter=lora)"
        )


def model_kwargs(cfg: DictConfig) -> dict[str, Any]:
    """Extra ``build_model`` keywords for the adapter: QLoRA's 4-bit ``quantization_config``, else none.

    The config is ``BitsAndBytesConfig``'s dict form (``from_pretrained`` takes either): Hydra's ``instantiate``
    would turn a config object into a dict with an enum it then cannot read back.
    """
    acfg = adapter_config(cfg)
    if acfg.get("name") != "qlora":
        return {}
    q = acfg.get("quantization") or {}
    return {
        "quantization_config": {
            "quant_method": "bitsandbytes",
            "load_in_4bit": True,
            "bnb_4bit_quant_type": str(q.get("quant_type", "nf4")),
            "bnb_4bit_use_double_quant": bool(q.get("double_quant", True)),
            "bnb_4bit_compute_dtype": str(q.get("compute_dtype", "bfloat16")),
        }
    }


def linear_module_names(model: torch.nn.Module) -> list[str]:
    """The distinct short names (``q_proj``, ``lm_head``, ...) of every linear layer of ``model``."""
    return sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)})


def decoder_linear_names(model: torch.nn.Module) -> list[str]:
    """The short names of the linear layers inside the decoder (its blocks): the default LoRA targets."""
    return linear_module_names(model.get_decoder())


def lora_config(model: torch.nn.Module, acfg: dict[str, Any]):
    """``peft.LoraConfig`` for ``model`` from the ``adapter`` group, its module names checked against the model.

    Raises:
        ConfigError: a ``target_modules`` or ``modules_to_save`` entry that names no module of the model.
    """
    from peft import LoraConfig

    linear = linear_module_names(model)
    targets = acfg.get("target_modules")
    if targets is None or targets == "all-linear":
        targets = decoder_linear_names(model)
    else:
        targets = [targets] if isinstance(targets, str) else list(targets)
        unknown = [t for t in targets if t not in linear]
        if unknown or not targets:
            raise ConfigError(
                f"adapter.target_modules: {', '.join(map(repr, unknown)) or 'empty list'} is not a linear module "
                f"of {type(model).__name__}; its linear modules are: {', '.join(linear)}"
            )
    to_save = acfg.get("modules_to_save")
    if to_save is not None:
        to_save = [to_save] if isinstance(to_save, str) else list(to_save)
        names = {n.rsplit(".", 1)[-1] for n, _ in model.named_modules() if n}
        unknown = [m for m in to_save if m not in names]
        if unknown:
            raise ConfigError(
                f"adapter.modules_to_save: {', '.join(map(repr, unknown))} is not a module of "
                f"{type(model).__name__} (e.g. embed_tokens, lm_head)"
            )
    return LoraConfig(
        r=int(acfg["r"]),
        lora_alpha=float(acfg["alpha"]),
        lora_dropout=float(acfg.get("dropout", 0.0)),
        target_modules=targets,
        modules_to_save=to_save,
        bias=str(acfg.get("bias", "none")),
        task_type="CAUSAL_LM",
    )


def apply_adapter(model: torch.nn.Module, acfg: dict[str, Any]) -> torch.nn.Module:
    """Wrap ``model`` with fresh LoRA adapters (``peft.get_peft_model``); ``model`` itself for ``adapter=none``.

    QLoRA's 4-bit base is first prepared with ``peft.prepare_model_for_kbit_training`` (norms in fp32, gradient
    checkpointing on, non-reentrant).
    """
    name = acfg.get("name", "none")
    if name == "none":
        return model
    from peft import get_peft_model, prepare_model_for_kbit_training

    config = lora_config(model, acfg)
    with warnings.catch_warnings():  # peft calls transformers' deprecated gradient_checkpointing aliases
        warnings.filterwarnings("ignore", message=".*gradient_checkpointing.* is deprecated.*", category=FutureWarning)
        if getattr(model, "is_loaded_in_4bit", False):
            model = prepare_model_for_kbit_training(
                model, use_gradient_checkpointing=True, gradient_checkpointing_kwargs={"use_reentrant": False}
            )
        peft_model = get_peft_model(model, config)
    peft_model.train()
    return peft_model


def unwrapped(model: torch.nn.Module) -> torch.nn.Module:
    """The transformers model under PEFT's wrapper (``get_base_model``, adapter layers in place), else ``model``."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def is_peft_model(model: torch.nn.Module) -> bool:
    """Whether ``model`` carries PEFT adapters (a ``peft.PeftModel``)."""
    return hasattr(model, "disable_adapter") and hasattr(model, "peft_config")


def parameter_counts(model: torch.nn.Module) -> tuple[int, int]:
    """``(trainable, total)`` parameters; a 4-bit base's packed weights are counted as their unpacked size."""
    if is_peft_model(model):
        return tuple(int(x) for x in model.get_nb_trainable_parameters())
    from zephyr.models.mistral import count_parameters

    unique = {id(p): p for p in model.parameters()}.values()
    return sum(p.numel() for p in unique if p.requires_grad), count_parameters(model)


def describe_parameters(model: torch.nn.Module) -> str:
    """``"parameters: 8,192 trainable / 4,178,240 total (0.196 %)"``, the line every run logs."""
    trainable, total = parameter_counts(model)
    return f"parameters: {trainable:,} trainable / {total:,} total ({100.0 * trainable / max(total, 1):.3f} %)"


def trainable_state(model: torch.nn.Module, state: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """The trained tensors of an adapter model (LoRA weights and ``modules_to_save`` copies), by parameter name.

    Args:
        model: the adapter model whose trainable parameter names select the entries.
        state: a state dict to take them from (a Lightning checkpoint's, prefix removed); default ``model``'s own.
    """
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    source = state if state is not None else dict(model.named_parameters())
    missing = [n for n in names if n not in source]
    if missing:
        raise ValueError(f"the checkpoint has no adapter weights {missing[:3]} (was it trained with this adapter=?)")
    return {n: source[n].detach() for n in names}


def merged_model(base: torch.nn.Module, acfg: dict[str, Any], trained: dict[str, torch.Tensor]) -> torch.nn.Module:
    """The full model with the trained adapters merged in: ``base`` + fresh adapters + ``trained``, unloaded.

    ``base`` is a fresh, unquantized copy of the run's base model (so QLoRA merges into bf16/fp32 weights, not
    into its 4-bit ones); ``trained`` is :func:`trainable_state` of the trained adapter model.
    """
    return load_trainable(apply_adapter(base, {**acfg, "name": "lora"}), trained).merge_and_unload()


def load_trainable(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> torch.nn.Module:
    """Copy the adapter weights in ``state`` (by parameter name) into ``model``'s fresh adapters; returns ``model``."""
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, value in trainable_state(model, state).items():  # raises when one is missing
            params[name].copy_(value.to(device=params[name].device, dtype=params[name].dtype))
    return model
