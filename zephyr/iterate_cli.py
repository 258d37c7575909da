"""``zephyr iterate``: iterative dDPO on the toy world, resumable (see :mod:`zephyr.iterate`)."""

from __future__ import annotations

import argparse


def _run(args: argparse.Namespace) -> int:
    from zephyr.iterate import run_iterate

    run_iterate(
        args.out, rounds=args.rounds, size=args.size, seed=args.seed, prompts=args.prompts,
        reference=args.reference, config=args.config, overrides=args.set,
    )  # fmt: skip
    return 0


def register(subparsers) -> None:
    """Add ``iterate`` to the ``zephyr`` command line."""
    p = subparsers.add_parser(
        "iterate",
        help="iterative dDPO: rounds of pool completions (with the current policy) -> judge -> binarize -> DPO",
        description="The demo's toy world: dSFT, then ROUNDS rounds where the previous round's policy joins the "
        "pool, the verifier judges, pairs are binarized and dDPO continues from that policy; plus a compute-matched "
        "single round. Real data: --config conf/iterate/ultrafeedback.yaml (iterate.start = the dSFT model, "
        "prompts from a hub dataset or a jsonl file, the pool and judge of a feedback config, each round scored by "
        "its win rate against the start model). Rerun the same command to resume. Writes OUT/round_<r>/, "
        "report.json, report.md, accuracy.png.",
    )
    p.add_argument("--out", default="runs/iter", help="output folder (default: runs/iter)")
    p.add_argument("--rounds", type=int, default=None, help="rounds (default: conf/iterate/toy.yaml's, 3)")
    p.add_argument("--size", choices=("full", "ci"), default="full", help="full or ci (the demo's reduced world)")
    p.add_argument("--seed", type=int, default=None, help="seed (default: conf/demo/full.yaml's)")
    p.add_argument("--prompts", choices=("fresh", "same"), default=None, help="a new prompt draw per round or the same")
    p.add_argument(
        "--reference", choices=("previous", "sft"), default=None, help="DPO reference: previous round's policy or dSFT"
    )
    p.add_argument("--config", default=None, help="YAML merged over conf/iterate/toy.yaml and the demo settings")
    p.add_argument(
        "--set", nargs="*", default=[], metavar="KEY=VALUE",
        help="override settings, e.g. feedback.prompts=600 iterate.generation.backend=openai",
    )  # fmt: skip
    p.set_defaults(func=_run)
