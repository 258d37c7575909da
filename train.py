"""Train with Hydra: ``python train.py [group=option ...] [+experiment=NAME] [-m ...]``.

Composes ``conf/train.yaml`` and calls :func:`zephyr.run.train`. Bad config values and bad data print one line
naming the key, file or row, and exit with status 2; so does a ``+sweep=`` / ``+launcher=`` option whose Hydra
plugin is not installed (checked before Hydra composes, which would otherwise print its config search path).
"""

import importlib.util
import re
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

CONF = Path(__file__).resolve().parent / "conf"

# Hydra plugin configs (``override /hydra/<kind>: <name>``) -> the plugin's module and how to install it
PLUGINS = {
    ("sweeper", "optuna"): ("hydra_plugins.hydra_optuna_sweeper", "the Optuna sweeper", "pip install -e '.[optuna]'"),
    ("launcher", "submitit_slurm"): (
        "hydra_plugins.hydra_submitit_launcher",
        "the submitit SLURM launcher",
        "pip install -e '.[scale]'",
    ),
}


def missing_plugin(args: list[str]) -> str | None:
    """The one-line error for the first override that needs a Hydra plugin that is not installed, else None."""
    for arg in args:
        wanted = []
        if m := re.fullmatch(r"hydra/(sweeper|launcher)=(\w+)", arg):
            wanted.append((m[1], m[2]))
        elif (m := re.fullmatch(r"\+{0,2}(\w+)=(\w+)", arg)) and (CONF / m[1] / f"{m[2]}.yaml").is_file():
            text = (CONF / m[1] / f"{m[2]}.yaml").read_text()
            wanted += re.findall(r"override\s+/hydra/(sweeper|launcher):\s*(\w+)", text)
        for key in wanted:
            if key not in PLUGINS:
                continue
            module, what, install = PLUGINS[key]
            try:
                found = importlib.util.find_spec(module) is not None
            except ModuleNotFoundError:
                found = False
            if not found:
                return f"{arg} needs {what} (Hydra plugin {module.split('.')[-1]}): {install}"
    return None


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    from zephyr.errors import USER_ERRORS, report_and_exit
    from zephyr.run import train

    try:
        metrics = train(cfg)
    except USER_ERRORS as e:
        report_and_exit(e)
    return metrics.get(cfg.get("optimized_metric") or "", None)


if __name__ == "__main__":
    from zephyr.sweep import sweep_conflict

    if problem := missing_plugin(sys.argv[1:]) or sweep_conflict(sys.argv[1:], CONF):
        print(f"train.py: error: {problem}", file=sys.stderr)
        sys.exit(2)
    main()
