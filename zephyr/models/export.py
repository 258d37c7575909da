"""Export a trained policy as a plain Hugging Face checkpoint that ``transformers.pipeline`` loads unchanged.

The directory gets ``model.safetensors`` (sharded above 5 GB), ``config.json``, ``generation_config.json``
(eos ``</s>``, pad = eos, the model card's sampling defaults) and the tokenizer files with the Zephyr chat
template, and ``zephyr_export.json`` records how the run rendered prompts (``prompt_format``), so serving,
generation and evaluation render exactly as training did (:func:`load_prompt_format`). Writes go to a
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
        record = dict(metadata or {})
        if prompt_format is not None:
            record[PROMPT_FORMAT_KEY] = dict(prompt_format)
        if record:
            (tmp / EXPORT_RECORD).write_text(json.dumps(record, indent=2, default=str) + "\n")
        if out.exists():
            old = out.with_name(f".{out.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(out, old)
            os.replace(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out)
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
