"""``zephyr data sft | feedback | binarize``: the teacher-data and AI-feedback pipeline from the command line.

Each command reads an OmegaConf YAML (``--config``, layered on ``conf/feedback/toy.yaml``, the offline toy
world and the one home of every default: :func:`zephyr.feedback.config.load_config`) naming the backends
(``teacher``, ``user_sim``, ``pool``, ``judge``) and the knobs of each stage, applies the flags and
``--set key=value`` overrides, saves the resolved config to
``OUT/config_<command>.yaml`` (it holds no secrets: keys live only in environment variables) and writes its
outputs under ``--out``. Re-running a command with the same ``--out`` resumes it.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from zephyr.feedback.config import load_config


def _plain(node: Any) -> Any:
    return (
        OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) or OmegaConf.is_list(node) else node
    )


def _prepare(args: argparse.Namespace) -> tuple[DictConfig, Path]:
    sets = list(args.set or [])
    if args.seed is not None:
        sets.append(f"seed={args.seed}")
    if args.workers is not None:
        sets.append(f"workers={args.workers}")
    if args.no_progress:
        sets.append("progress=false")
    sets += getattr(args, "_extra_sets", [])
    cfg = load_config(args.config, sets)
    from zephyr.feedback.backends import find_secret_key

    secret = find_secret_key(OmegaConf.to_container(cfg, resolve=False))
    if secret:  # refused before OUT or its config file exists, so the key is written nowhere
        raise ValueError(
            f"{secret}: a secret in the config; put the key in an environment variable and name it with "
            "api_key_env (nothing was written)"
        )
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"config_{args.data_command}.yaml").write_text(OmegaConf.to_yaml(cfg))
    return cfg, out


def cmd_sft(args: argparse.Namespace) -> int:
    from zephyr.feedback.backends import build_backend
    from zephyr.feedback.dialogues import DialogueConfig, generate_dialogues
    from zephyr.feedback.selfinstruct import collect_instructions

    extra = []
    if args.n is not None:
        extra.append(f"sft.instructions.n={args.n}")
    if args.min_turns is not None:
        extra.append(f"sft.min_turns={args.min_turns}")
    if args.max_turns is not None:
        extra.append(f"sft.max_turns={args.max_turns}")
    args._extra_sets = extra
    cfg, out = _prepare(args)
    teacher = build_backend(_plain(cfg.teacher))
    user_sim = build_backend(_plain(cfg.user_sim)) if cfg.user_sim else None
    spec = _plain(cfg.sft.instructions)
    instructions, ireport = collect_instructions(spec, teacher, out, workers=cfg.workers, seed=cfg.seed)
    s = cfg.sft
    dcfg = DialogueConfig(
        min_turns=s.min_turns,
        max_turns=s.max_turns,
        seed=cfg.seed,
        workers=cfg.workers,
        drop_truncated=s.drop_truncated,
        assistant_gen=_plain(s.assistant_gen),
        user_gen=_plain(s.user_gen),
        test_size=s.test_size,
        progress=cfg.progress,
        fsync_interval=cfg.fsync_interval,
    )
    summary = generate_dialogues(instructions, teacher, out, user_sim=user_sim, cfg=dcfg)
    summary["instruction_report"] = ireport
    (out / "sft_summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary, indent=2))
    return 0 if not summary["failed"] else 1


def cmd_feedback(args: argparse.Namespace) -> int:
    from zephyr.feedback.backends import build_backend, build_pool
    from zephyr.feedback.complete import FeedbackConfig, collect_feedback, load_prompts

    extra = []
    if args.n is not None:
        extra.append(f"feedback.prompts.n={args.n}")
    if args.prompts is not None:
        extra += ["feedback.prompts.source=jsonl", f"feedback.prompts.path={args.prompts}"]
    if args.models_per_prompt is not None:
        mpp = "null" if args.models_per_prompt == "all" else int(args.models_per_prompt)
        extra.append(f"feedback.models_per_prompt={mpp}")
    if args.judge_retries is not None:
        extra.append(f"feedback.judge_retries={args.judge_retries}")
    args._extra_sets = extra
    cfg, out = _prepare(args)
    f = cfg.feedback
    prompts = load_prompts(_plain(f.prompts))
    pool = build_pool(_plain(cfg.pool))
    judge = build_backend(_plain(cfg.judge))
    fcfg = FeedbackConfig.from_config(cfg)
    summary = collect_feedback(prompts, pool, judge, out, fcfg)
    print(json.dumps(summary, indent=2))
    return 0 if summary["complete"] else 1


def cmd_binarize(args: argparse.Namespace) -> int:
    from zephyr.feedback.binarize import binarize, split_pairs
    from zephyr.feedback.store import read_jsonl, write_jsonl

    extra = []
    for flag in ("criterion", "rejected", "ties", "test_size"):
        if getattr(args, flag) is not None:
            extra.append(f"binarize.{flag}={getattr(args, flag)}")
    args._extra_sets = extra
    cfg, out = _prepare(args)
    b = cfg.binarize
    src = Path(args.input) if args.input else out / "ultrafeedback.jsonl"
    rows = read_jsonl(src)
    pairs, report = binarize(rows, criterion=b.criterion, rejected=b.rejected, ties=b.ties, seed=b.seed)
    train, test = split_pairs(pairs, float(b.test_size), seed=b.seed)
    report["train_prefs"] = write_jsonl(out / "train_prefs.jsonl", train)
    report["test_prefs"] = write_jsonl(out / "test_prefs.jsonl", test)
    report["input"] = str(src)
    (out / "binarize_report.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    return 0 if pairs else 1


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="OmegaConf YAML (default: the offline toy world, conf/feedback/toy.yaml)")
    p.add_argument("--out", required=True, help="output folder (re-running with the same folder resumes)")
    p.add_argument("--seed", type=int, help="seed of every sampling choice")
    p.add_argument("--workers", type=int, help="concurrent backend calls")
    p.add_argument("--no-progress", action="store_true", help="no Rich progress bar")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="config override, e.g. feedback.critique=false")


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``zephyr data {sft,feedback,binarize}``."""
    data = subparsers.add_parser("data", help="teacher data and AI feedback: sft | feedback | binarize")
    sub = data.add_subparsers(dest="data_command", required=True, metavar="STAGE")

    p = sub.add_parser("sft", help="dSFT data: instructions + teacher dialogues -> ultrachat_200k schema")
    _common(p)
    p.add_argument("--n", type=int, help="number of instructions (toy tasks, file rows or self-instruct target)")
    p.add_argument("--min-turns", type=int, help="fewest assistant turns per dialogue")
    p.add_argument("--max-turns", type=int, help="most assistant turns per dialogue")
    p.set_defaults(func=cmd_sft)

    p = sub.add_parser("feedback", help="completions from a model pool + UltraFeedback judging -> raw rows")
    _common(p)
    p.add_argument("--n", type=int, help="number of prompts")
    p.add_argument("--prompts", help="JSONL of prompts (field 'prompt'), e.g. ultrachat_200k rows")
    p.add_argument("--models-per-prompt", help="pool members sampled per prompt (UltraFeedback: 4), or 'all'")
    p.add_argument("--judge-retries", type=int, help="retries of an unparseable judge reply")
    p.set_defaults(func=cmd_feedback)

    p = sub.add_parser("binarize", help="raw UltraFeedback rows -> ultrafeedback_binarized pairs")
    _common(p)
    p.add_argument("--in", dest="input", help="raw rows (default: OUT/ultrafeedback.jsonl)")
    p.add_argument("--criterion", choices=["mean", "overall"], help="score: mean of aspects | overall critique")
    p.add_argument("--rejected", choices=["random", "random_lower", "lowest", "all_pairs"], help="how to pick rejected")
    p.add_argument("--ties", choices=["drop", "random"], help="equal-score pairs: drop | keep (random order)")
    p.add_argument("--test-size", type=float, help="fraction of prompts for test_prefs")
    p.set_defaults(func=cmd_binarize)


def main(argv: list[str] | None = None) -> int:
    """``python -m zephyr.feedback.cli data ...``: the same commands without the other command groups."""
    import sys

    parser = argparse.ArgumentParser(prog="zephyr", description=__doc__.splitlines()[0])
    register(parser.add_subparsers(dest="command", required=True, metavar="COMMAND"))
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError, KeyError, RuntimeError) as e:
        print(f"zephyr data {args.data_command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
