"""``zephyr export CKPT --out DIR [--adapter-only]``: turn a Lightning checkpoint of a zephyr run into a HF model.

Useful after an interrupted run (export the last checkpoint) or to pick an intermediate one. The run's saved
Hydra config (``.hydra/config.yaml`` next to ``checkpoints/``) says how to rebuild the model and tokenizer. A
LoRA / QLoRA run (``adapter=lora|qlora``) exports the merged full model to ``DIR``, or with ``--adapter-only``
the PEFT adapter directory (``adapter_config.json`` + ``adapter_model.safetensors``).
"""

from __future__ import annotations

import argparse
from pathlib import Path


def export_checkpoint(
    ckpt: str, out: str, *, config: str | None = None, dtype: str | None = None, adapter_only: bool = False
) -> Path:
    """Rebuild the run's model from its config, load the checkpoint weights and export to ``out``.

    Raises:
        FileNotFoundError: no checkpoint or run config.
        ValueError: ``adapter_only`` for a run that trained no adapters.
    """
    import torch
    from omegaconf import OmegaConf

    from zephyr.data.chat_template import prompt_format
    from zephyr.models.adapters import adapter_config, apply_adapter, load_trainable
    from zephyr.models.export import export_adapter_run, export_hf
    from zephyr.tokenizer import load_tokenizer

    ckpt_path = Path(ckpt)
    if not ckpt_path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {ckpt_path}")
    cfg_path = Path(config) if config else ckpt_path.parent.parent / ".hydra" / "config.yaml"
    if not cfg_path.is_file():
        raise FileNotFoundError(f"run config not found: {cfg_path} (pass --config RUN_DIR/.hydra/config.yaml)")
    cfg = OmegaConf.load(cfg_path)
    from zephyr.models.mistral import build_model

    mcfg = OmegaConf.to_container(cfg.model, resolve=True)
    mcfg.pop("_target_", None)
    acfg = adapter_config(cfg)
    if adapter_only and acfg.get("name", "none") == "none":
        raise ValueError(f"--adapter-only: the run of {ckpt_path} trained no adapters (adapter=none in {cfg_path})")
    state = torch.load(ckpt_path, map_location="cpu", weights_only=False)["state_dict"]
    state = {k.removeprefix("model."): v for k, v in state.items() if k.startswith("model.")}
    tok = load_tokenizer(mcfg.get("tokenizer") or mcfg.get("path"))
    if acfg.get("name", "none") == "none":
        model = build_model(**mcfg)
        model.load_state_dict(state)
        return export_hf(model, tok, out, dtype=dtype, prompt_format=prompt_format(cfg.data))
    # the base unquantized (a QLoRA run's 4-bit base weights are not read back), the trained adapters on top
    model = load_trainable(apply_adapter(build_model(**mcfg), {**acfg, "name": "lora"}), state)
    export_adapter_run(
        model,
        tok,
        adapter=acfg,
        load_base=lambda: build_model(**mcfg).eval(),
        base=mcfg.get("path"),
        adapter_dir=out if adapter_only else None,
        model_dir=None if adapter_only else out,
        dtype=dtype,
        prompt_format=prompt_format(cfg.data),
    )
    return Path(out)


def _run(args: argparse.Namespace) -> int:
    out = export_checkpoint(
        args.checkpoint, args.out, config=args.config, dtype=args.dtype, adapter_only=args.adapter_only
    )
    print(f"exported {args.checkpoint} -> {out}")
    return 0


def register(sub) -> None:
    p = sub.add_parser("export", help="export a Lightning checkpoint of a zephyr run to Hugging Face format")
    p.add_argument("checkpoint", help="path to a .ckpt (e.g. RUN_DIR/checkpoints/last.ckpt)")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--config", default=None, help="the run's .hydra/config.yaml (default: found next to the run)")
    p.add_argument("--dtype", default=None, choices=["float32", "bfloat16"], help="cast weights on export")
    p.add_argument(
        "--adapter-only",
        action="store_true",
        help="a LoRA/QLoRA run: write only the PEFT adapter (adapter_config.json + adapter_model.safetensors)",
    )
    p.set_defaults(func=_run)
