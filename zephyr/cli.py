"""zephyr command line: data | serve | generate | eval | report | export | demo | iterate.

Training is Hydra's job (``python train.py ...``); this CLI holds the other verbs. Each command group lives
next to its code and adds itself through a ``register(subparsers)`` function, so this file only lists them.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# module -> provides register(subparsers) adding one or more commands
COMMAND_MODULES = [
    "zephyr.models.export_cli",
    "zephyr.feedback.cli",
    "zephyr.serve.cli",
    "zephyr.eval.cli",
    "zephyr.demo_cli",
    "zephyr.iterate_cli",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="zephyr", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Parse ``argv`` and run the chosen command; errors print one line and exit 2."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError, KeyError, RuntimeError) as e:
        print(f"zephyr {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
