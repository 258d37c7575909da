"""``zephyr export CKPT --out DIR``: turn a Lightning checkpoint of a zephyr run into a Hugging Face model.

Useful after an interrupted run (export the last checkpoint) or to pick an intermediate one. The run's saved
Hydra config (``.hydra/config.yaml`` next to ``checkpoints/``) says how to rebuild the model and tokenizer.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def export_checkpoint(ckpt: str, out: str, *, config: str | None = None, dtype: str | None = None) -> Path:
    """Rebuild the run's model from its config, load the checkpoint weights and export to ``out``."""
    import torch
    from omegaconf import OmegaConf

    from zephyr.data.chat_template import prompt_format
    from zephyr.models.export import export_hf
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
    model = build_model(**mcfg)
    state = torch.load(ckpt_path, map_location="cpu", weights_only=False)["state_dict"]
    model.load_state_dict({k.removeprefix("model."): v for k, v in state.items() if k.startswith("model.")})
    tok = load_tokenizer(mcfg.get("tokenizer") or mcfg.get("path"))
    return export_hf(model, tok, out, dtype=dtype, prompt_format=prompt_format(cfg.data))


def _run(args: argparse.Namespace) -> int:
    out = export_checkpoint(args.checkpoint, args.out, config=args.config, dtype=args.dtype)
    print(f"exported {args.checkpoint} -> {out}")
    return 0


def register(sub) -> None:
    p = sub.add_parser("export", help="export a Lightning checkpoint of a zephyr run to Hugging Face format")
    p.add_argument("checkpoint", help="path to a .ckpt (e.g. RUN_DIR/checkpoints/last.ckpt)")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--config", default=None, help="the run's .hydra/config.yaml (default: found next to the run)")
    p.add_argument("--dtype", default=None, choices=["float32", "bfloat16"], help="cast weights on export")
    p.set_defaults(func=_run)
