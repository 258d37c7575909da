"""Build the policy: a random-init model from config dims, or ``from_pretrained`` of any causal-LM checkpoint.

``model=tiny_mistral`` is Mistral-7B's architecture (RMSNorm, SwiGLU, GQA, RoPE, sliding window) at small
dims, randomly initialised from a fixed seed, so it runs on a laptop CPU. ``model=mistral_7b`` loads
``mistralai/Mistral-7B-v0.1`` by hub name, and ``model.path=DIR`` starts from any local HF checkpoint (the
dSFT export, for DPO); any family ``AutoModelForCausalLM`` knows (Llama, Mistral, Qwen2, Gemma2, ...) loads
that way, and ``model.config.model_type`` picks the family of a random-init model (default Mistral). The
attention kernel comes from ``hardware`` and is a preference: FlashAttention-2 falls back to SDPA with one
warning when flash-attn or CUDA is missing, and a family that does not support the kernel asked for (Gemma2
and SDPA) gets ``eager`` with one warning (:func:`family_attn_implementation`).
"""

from __future__ import annotations

import importlib.util
import logging
import os
from pathlib import Path
from typing import Any

import torch
from transformers import AutoConfig, AutoModelForCausalLM, MistralConfig, MistralForCausalLM, PreTrainedModel
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING

log = logging.getLogger(__name__)

DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
}


def resolve_attn_implementation(requested: str | None) -> str:
    """Return the attention kernel to use, downgrading ``flash_attention_2`` where it cannot run.

    Args:
        requested: ``"flash_attention_2"``, ``"sdpa"``, ``"eager"`` or ``None`` (transformers' default).

    Returns:
        ``requested``, or ``"sdpa"`` when FlashAttention-2 was asked for but flash-attn or CUDA is missing.
    """
    if requested != "flash_attention_2":
        return requested or "sdpa"
    if not torch.cuda.is_available():
        log.warning("attn_implementation=flash_attention_2 needs CUDA; falling back to sdpa")
        return "sdpa"
    if importlib.util.find_spec("flash_attn") is None:
        log.warning("flash-attn is not installed (pip install 'zephyr[gpu]'); falling back to sdpa")
        return "sdpa"
    return requested


# the class flag transformers checks before it accepts each attention kernel
_KERNEL_FLAGS = {
    "sdpa": "_supports_sdpa",
    "flash_attention_2": "_supports_flash_attn",
    "flash_attention_3": "_supports_flash_attn",
    "flex_attention": "_supports_flex_attn",
}


def family_attn_implementation(model_class: type | None, requested: str) -> str:
    """The kernel ``model_class`` can run: ``requested`` if the family supports it, else ``eager`` (one warning).

    Args:
        model_class: the ``*ForCausalLM`` class that will be built (``None``: unknown, ``requested`` is kept).
        requested: a kernel from :func:`resolve_attn_implementation`.
    """
    flag = _KERNEL_FLAGS.get(requested)
    if model_class is None or flag is None or getattr(model_class, flag, True):
        return requested
    log.warning(
        "%s does not support attn_implementation=%s (hardware.attn_implementation); using eager",
        model_class.__name__,
        requested,
    )
    return "eager"


def causal_lm_class(config: Any) -> type | None:
    """The ``AutoModelForCausalLM`` class for a ``PretrainedConfig`` (``None`` when the family is not registered)."""
    try:
        return MODEL_FOR_CAUSAL_LM_MAPPING[type(config)]
    except KeyError:
        return None


def _checkpoint_class(path: str, revision: str | None) -> type | None:
    """The class ``from_pretrained(path)`` will build, read from its ``config.json`` (``None`` if unreadable here)."""
    try:
        return causal_lm_class(AutoConfig.from_pretrained(path, revision=revision))
    except (OSError, ValueError, KeyError):
        return None


def _is_local(path: str) -> bool:
    return path.startswith((".", "/", "~")) or os.path.exists(path)


def build_model(
    path: str | None = None,
    config: dict[str, Any] | None = None,
    *,
    dtype: str = "float32",
    attn_implementation: str | None = "sdpa",
    init_seed: int = 0,
    revision: str | None = None,
    gradient_checkpointing: bool = False,
    quantization_config: Any = None,
    fused_mlp: bool = True,
    fused_rmsnorm: bool = False,
    segment_attention: bool = True,
    **unused: Any,
) -> PreTrainedModel:
    """Create the causal LM.

    Args:
        path: a local HF checkpoint directory or a hub name; ``None`` builds a random-init Mistral from ``config``.
        config: ``MistralConfig`` keyword arguments for random init (ignored when ``path`` is set); with a
            ``model_type`` key (``llama``, ``qwen2``, ``gemma2``...) that family's config instead.
        dtype: weight dtype; keep ``float32`` with ``bf16-mixed`` precision (master weights in fp32).
        attn_implementation: see :func:`resolve_attn_implementation`.
        init_seed: seed for random init, so the same config gives the same weights on every run.
        revision: hub revision when ``path`` is a hub name.
        gradient_checkpointing: recompute activations in backward (less memory, ~30 % slower).
        quantization_config: a ``BitsAndBytesConfig`` for ``from_pretrained`` (``adapter=qlora``: 4-bit base).
        fused_mlp: route SiLU-gated MLPs through :mod:`zephyr.models.fused_mlp` while training (the same numbers,
            two activations fewer saved per layer); ``False``: the family's own forward.
        fused_rmsnorm: route Llama-style RMSNorms through :mod:`zephyr.models.fused_norm` while training (the
            same forward numbers, one activation fewer saved per norm); opt-in: speed and peak RSS within noise
            on the CPU bench; ``False``: the family's own forward.
        segment_attention: under ``sdpa``, attend one packed sequence at a time when a batch passes its run
            lengths (:mod:`zephyr.models.segment_attention`: dSFT's packed rows; the same numbers); ``False``:
            transformers' masked SDPA over whole rows.
        **unused: other keys of the model config group (tokenizer, name) that are not for this function.

    Returns:
        A ``MistralForCausalLM`` (or whatever architecture the checkpoint or ``model_type`` declares) in train
        mode.

    Raises:
        FileNotFoundError: ``path`` looks local but has no ``config.json``.
    """
    if dtype not in DTYPES:
        raise ValueError(f"model.dtype={dtype!r} is not one of {sorted(DTYPES)}")
    torch_dtype = DTYPES[dtype]
    attn = resolve_attn_implementation(attn_implementation)
    if path:
        path = str(path)
        if _is_local(path):
            expanded = Path(path).expanduser()
            if not (expanded / "config.json").is_file():
                raise FileNotFoundError(f"model.path={path}: no config.json there (expected an exported HF checkpoint)")
            path = str(expanded)
        quantized = {"quantization_config": quantization_config, "device_map": {"": _kbit_device()}}
        attn = family_attn_implementation(_checkpoint_class(path, revision), attn)
        model = AutoModelForCausalLM.from_pretrained(
            path,
            revision=revision,
            dtype=torch_dtype,
            attn_implementation=attn,
            **(quantized if quantization_config else {}),
        )
    else:
        if not config:
            raise ValueError("model.config is required when model.path is null (random init)")
        kwargs = dict(config)
        model_type = kwargs.pop("model_type", None)
        if model_type is None:
            mcfg, model_class = MistralConfig(**kwargs), MistralForCausalLM
        else:
            try:
                mcfg = AutoConfig.for_model(str(model_type), **kwargs)
            except ValueError as e:
                raise ValueError(f"model.config.model_type={model_type!r}: {e}") from None
            model_class = causal_lm_class(mcfg)
            if model_class is None:
                raise ValueError(f"model.config.model_type={model_type!r} is not a causal-LM family of transformers")
        mcfg._attn_implementation = family_attn_implementation(model_class, attn)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(init_seed)
            model = model_class(mcfg)
        model = model.to(torch_dtype)
    if model.generation_config is not None:
        model.generation_config.pad_token_id = model.config.eos_token_id
    if gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if fused_mlp:
        from zephyr.models.fused_mlp import fuse_mlp

        fuse_mlp(model)
    if fused_rmsnorm:
        from zephyr.models.fused_norm import fuse_rmsnorm

        fuse_rmsnorm(model)
    if segment_attention:
        from zephyr.models.segment_attention import use_segment_attention

        use_segment_attention(model)
    model.train()
    return model


def _kbit_device() -> str:
    """Where a quantized base is loaded: this rank's GPU (``LOCAL_RANK``), else the CPU."""
    return f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}" if torch.cuda.is_available() else "cpu"


def count_parameters(model: torch.nn.Module) -> int:
    """Number of parameters (each tied tensor counted once)."""
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())
