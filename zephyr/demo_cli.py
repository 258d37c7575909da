"""``zephyr demo``: run the whole recipe on the offline toy world and print the report (see :mod:`zephyr.demo`)."""

from __future__ import annotations

import argparse


def _run(args: argparse.Namespace) -> int:
    from zephyr.demo import run_demo

    if args.rounds < 1:
        raise ValueError(f"--rounds must be >= 1, got {args.rounds}")
    if args.rounds > 1:  # the iterative loop (zephyr iterate) on the same world and settings
        if args.seeds != 1:
            raise ValueError("--rounds > 1 runs one seed; run zephyr iterate --seed S once per seed")
        from zephyr.iterate import run_iterate

        run_iterate(args.out, rounds=args.rounds, size=args.size, seed=args.seed, overrides=args.set)
        return 0
    run_demo(args.out, size=args.size, seed=args.seed, seeds=args.seeds, overrides=args.set, force=args.force)
    return 0


def register(subparsers) -> None:
    """Add ``demo`` to the ``zephyr`` command line."""
    p = subparsers.add_parser(
        "demo",
        help="the whole recipe offline on CPU: toy dSFT data -> dSFT -> AI feedback -> dDPO -> eval -> report",
        description="Toy teacher data, dSFT, completions from a pool (with the dSFT model), verifier judging, "
        "binarizing, dDPO, then base / dSFT / compute-matched dSFT / dDPO / DPO-from-base on fixed held-out "
        "questions. Writes OUT/report.json, report.md, accuracy.png, stages.png.",
    )
    p.add_argument("--out", default="runs/demo", help="output folder (default: runs/demo)")
    p.add_argument(
        "--size", choices=("full", "ci"), default="full", help="full (make demo) or ci (reduced smoke test, ~30 s)"
    )
    p.add_argument("--seed", type=int, default=None, help="first seed (default: conf/demo/full.yaml's)")
    p.add_argument("--seeds", type=int, default=1, help="number of seeds; >1 reports mean ± std (default: 1)")
    p.add_argument(
        "--set", nargs="*", default=[], metavar="KEY=VALUE",
        help="override demo settings, e.g. threads=1 feedback.prompts=600 'ddpo=[objective.beta=0.05]'",
    )  # fmt: skip
    p.add_argument("--force", action="store_true", help="rerun seeds that already have a report.json")
    p.add_argument(
        "--rounds", type=int, default=1,
        help="dDPO rounds (default 1: this demo); >1 runs the iterative loop of `zephyr iterate` in OUT",
    )  # fmt: skip
    p.set_defaults(func=_run)
