"""Export a trained policy as a plain Hugging Face checkpoint that ``transformers.pipeline`` loads unchanged.

The directory gets ``model.safetensors`` (sharded above 5 GB), ``config.json``, ``generation_config.json``
(eos ``</s>``, pad = eos, the model card's sampling defaults) and the tokenizer files with the Zephyr chat
template, and ``zephyr_export.json`` records how the run rendered prompts (``prompt_format``), so serving,
generation and evaluation render exactly as training did (:func:`load_prompt_format`). An adapter run also
gets :func:`export_adapter` (the PEFT adapter directory, with the same tokenizer and record). Writes go to a
temporary sibling directory that is renamed into place, so an interrupted export
never leaves a half-written model where a later stage would load it.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from transformers import GenerationConfig, PreTrainedModel

from zephyr.tokenizer import save_tokenizer

EXPORT_RECORD = "zephyr_export.json"
PROMPT_FORMAT_KEY = "prompt_format"


def export_hf(
    model: PreTrainedModel,
    tokenizer,
    out_dir: str | os.PathLike,
    *,
    state_dict: dict[str, torch.Tensor] | None = None,
    dtype: str | None = None,
    metadata: dict[str, Any] | None = None,
    prompt_format: dict[str, bool] | None = None,
) -> Path:
    """Save ``model`` and ``tokenizer`` to ``out_dir`` in Hugging Face format.

    Args:
        model: the trained model (its config and class are saved).
        tokenizer: the chat tokenizer.
        out_dir: target directory; replaced atomically if it exists.
        state_dict: full (gathered) weights when the model is sharded (FSDP/ZeRO-3); default the model's own.
        dtype: ``"bfloat16"``/``"float32"`` to cast the saved weights; default unchanged.
        metadata: extra facts written to ``zephyr_export.json`` (run config, steps, metrics).
        prompt_format: how training rendered prompts (:func:`zephyr.data.chat_template.prompt_format`);
            recorded in ``zephyr_export.json`` for :func:`load_prompt_format`.

    Returns:
        The export directory.
    """
    out = Path(out_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}."))
    try:
        if dtype is not None:
            target = getattr(torch, dtype)
            sd = state_dict if state_dict is not None else model.state_dict()
            state_dict = {k: v.to(target) if v.is_floating_point() else v for k, v in sd.items()}
            model.config.dtype = dtype
        model.save_pretrained(tmp, state_dict=state_dict, safe_serialization=True)
        if dtype is not None:  # save_pretrained writes the live model's dtype, not the cast weights'
            config_file = tmp / "config.json"
            config_file.write_text(json.dumps({**json.loads(config_file.read_text()), "dtype": dtype}, indent=2) + "\n")
        gen = GenerationConfig(
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
            do_sample=True,
            temperature=0.7,
            top_k=50,
            top_p=0.95,
            max_new_tokens=256,
        )
        gen.save_pretrained(tmp)
        save_tokenizer(tokenizer, tmp)
        _write_record(tmp, metadata, prompt_format)
        _move_into_place(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _write_record(folder: Path, metadata: dict[str, Any] | None, prompt_format: dict[str, bool] | None) -> None:
    record = dict(metadata or {})
    if prompt_format is not None:
        record[PROMPT_FORMAT_KEY] = dict(prompt_format)
    if record:
        (folder / EXPORT_RECORD).write_text(json.dumps(record, indent=2, default=str) + "\n")


def _move_into_place(tmp: Path, out: Path) -> None:
    """Rename the finished ``tmp`` folder to ``out``, replacing what is there."""
    if out.exists():
        old = out.with_name(f".{out.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(out, old)
        os.replace(tmp, out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, out)


def export_adapter(
    model,
    tokenizer,
    out_dir: str | os.PathLike,
    *,
    base: str | None,
    base_model: PreTrainedModel | None = None,
    metadata: dict[str, Any] | None = None,
    prompt_format: dict[str, bool] | None = None,
) -> Path:
    """Save a PEFT model's adapter (``adapter_config.json`` + ``adapter_model.safetensors``) to ``out_dir``.

    ``peft.AutoPeftModelForCausalLM.from_pretrained(out_dir)`` loads it: ``base_model_name_or_path`` is ``base``
    (a local checkpoint's absolute path or a hub name). A random-init base (``base`` None) has no checkpoint to
    point at, so ``base_model`` is saved to ``out_dir/base`` and named there. The tokenizer and the
    ``zephyr_export.json`` record (``prompt_format``) are saved beside the adapter, as in :func:`export_hf`.
    """
    out = Path(out_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}."))
    try:
        final = base
        if base is None:
            if base_model is None:
                raise ValueError("export_adapter: a random-init base needs base_model to save beside the adapter")
            base_model.save_pretrained(tmp / "base", safe_serialization=True)
            save_tokenizer(tokenizer, tmp / "base")
            base, final = str(tmp / "base"), str((out / "base").resolve())
        elif Path(base).expanduser().is_dir():
            base = final = str(Path(base).expanduser().resolve())
        for cfg in model.peft_config.values():
            cfg.base_model_name_or_path = base
        model.save_pretrained(tmp, safe_serialization=True)
        for cfg in model.peft_config.values():
            cfg.base_model_name_or_path = final
        config_file = tmp / "adapter_config.json"
        config_file.write_text(json.dumps({**json.loads(config_file.read_text()), "base_model_name_or_path": final}))
        save_tokenizer(tokenizer, tmp)
        _write_record(tmp, metadata, prompt_format)
        _move_into_place(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def load_prompt_format(model_dir: str | os.PathLike) -> dict[str, bool]:
    """How the checkpoint in ``model_dir`` was trained to see prompts (``prompt_format`` of its export record).

    A checkpoint that zephyr did not export (a hub model, a plain HF directory) has no record: its prompts are
    rendered as given, the way ``transformers.pipeline`` + ``apply_chat_template`` would.
    """
    path = Path(model_dir) / EXPORT_RECORD
    try:
        record = json.loads(path.read_text()) if path.is_file() else {}
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: unreadable export record ({e})") from None
    fmt = record.get(PROMPT_FORMAT_KEY) or {}
    return {"insert_empty_system": bool(fmt.get("insert_empty_system", False))}


def export_adapter_run(
    model,
    tokenizer,
    *,
    adapter: dict[str, Any],
    load_base,
    base: str | None,
    adapter_dir: str | os.PathLike | None,
    model_dir: str | os.PathLike | None,
    dtype: str | None = None,
    metadata: dict[str, Any] | None = None,
    prompt_format: dict[str, bool] | None = None,
) -> None:
    """Export an adapter run: the PEFT adapter to ``adapter_dir`` and the merged full model to ``model_dir``.

    Args:
        model: the trained ``peft.PeftModel`` (possibly on a 4-bit base).
        tokenizer: the chat tokenizer.
        adapter: the run's ``adapter`` config group (:func:`zephyr.models.adapters.adapter_config`).
        load_base: builds a fresh, unquantized copy of the base model (the merge target, and the random-init base
            saved beside the adapter).
        base: ``model.path`` (local folder or hub name); None for a random-init base.
        adapter_dir: where :func:`export_adapter` writes (None: skipped).
        model_dir: where :func:`export_hf` writes the merged model (None: skipped).
        dtype: as in :func:`export_hf` (the merged model's saved dtype).
        metadata: as in :func:`export_hf`.
        prompt_format: as in :func:`export_hf`.
    """
    from zephyr.models.adapters import merged_model, trainable_state

    trained = trainable_state(model)
    if adapter_dir is not None:
        export_adapter(
            model,
            tokenizer,
            adapter_dir,
            base=base,
            base_model=load_base() if base is None else None,
            metadata=metadata,
            prompt_format=prompt_format,
        )
    if model_dir is not None:
        merged = merged_model(load_base(), adapter, trained)
        export_hf(merged, tokenizer, model_dir, dtype=dtype, metadata=metadata, prompt_format=prompt_format)
