"""Sweep bookkeeping as a Hydra callback: readable W&B names per job, and a summary table per multirun.

``conf/train.yaml`` registers :class:`SweepCallback` under ``hydra.callbacks``, so every ``python train.py -m``
gets, in its multirun folder (``runs/multirun/<task_name>/<time>/``):

* ``summary.csv`` and ``summary.json``: one row per job with ``job`` (its subfolder), ``overrides`` (the job's
  command-line overrides, comma-joined), one column per swept key (keys whose value differs between jobs, plus
  ``hydra.sweeper.params``), ``status``, the final metrics from the job's ``metrics.json`` (``train/*``,
  ``eval/*``, ``global_step``; ``heldout_*`` from a ``heldout`` block) and ``runtime_s``. Rows are read from
  disk, so the table is also right for launchers that run jobs elsewhere, and a failed job shows up with
  ``status=failed``.

Before each job it sets ``WANDB_NAME`` (built from the job's own overrides of the swept keys, e.g.
``beta=0.05,lr=0.0001``) and ``WANDB_RUN_GROUP`` (the experiment's ``task_name``) unless already set in the
environment by the user. ``conf/logger/wandb.yaml`` reads both into the logger's ``name``/``group`` when the job
builds its logger: passed explicitly, because W&B reads its environment once per process, so a name left to
W&B would be the first job's for every job of a local multirun. All runs of a sweep sit side by side in one
group. The swept keys are those of ``hydra.sweeper.params`` plus the sweep overrides of the command line
(``objective.beta=0.1,0.5``); with none known (a single run) the name has every visible override.
"""

from __future__ import annotations

import csv
import json
import logging
import os
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from zephyr.secrets import REDACTED, SECRET_KEY  # noqa: E402

log = logging.getLogger(__name__)

HIDDEN_KEYS = ("experiment", "sweep", "hydra", "paths.root_dir", "paths.output_dir")


def experiment_sweep(conf: Path, name: str) -> str | None:
    """The ``sweep`` option that ``conf/experiment/<name>.yaml`` pulls in through its defaults (or a base's).

    Experiments say what to run and ``conf/sweep/`` what to vary; a study such as ``dpo_beta`` is ``dpo_toy`` plus
    ``- /sweep: beta`` in its defaults list. ``None`` when neither it nor an experiment it builds on names one.
    """
    path = conf / "experiment" / f"{name}.yaml"
    if not path.is_file():
        return None
    for entry in OmegaConf.load(path).get("defaults") or []:
        if isinstance(entry, str) and entry != "_self_":
            if (found := experiment_sweep(conf, entry)) is not None:
                return found
        elif not isinstance(entry, str):
            for key, value in entry.items():
                if str(key).lstrip("/") == "sweep":
                    return str(value)
    return None


def sweep_conflict(args: list[str], conf: Path) -> str | None:
    """The one-line refusal for ``+experiment=E +sweep=S`` when E already pulls in a grid, else ``None``.

    Two grids are never merged: ``sweep=S`` (no ``+``) replaces the experiment's grid, which is what to write.
    """
    experiment = sweep = None
    for arg in args:
        key, value = _split(arg)
        if key == "experiment":
            experiment = value
        elif key == "sweep" and arg.startswith("+"):
            sweep = arg
    if experiment is None or sweep is None or (own := experiment_sweep(conf, experiment)) is None:
        return None
    return (
        f"{sweep} would add a second grid to +experiment={experiment}, which already sweeps sweep={own} "
        f"(conf/experiment/{experiment}.yaml): write {sweep.lstrip('+')} to replace its grid, or start from "
        f"an experiment without one (e.g. +experiment=dpo_toy {sweep})"
    )


def _split(override: str) -> tuple[str, str]:
    key, _, value = override.partition("=")
    return key.lstrip("+~"), value


def run_name(overrides: list[str], swept: list[str] | None = None) -> str | None:
    """A short readable run name: ``key=value`` pairs by their last key part, without experiment/sweep/paths.

    With ``swept``, only those keys are named (when the overrides set any of them).

    >>> run_name(["+experiment=dpo_beta", "objective.beta=0.05", "objective.optimizer.lr=1e-4"])
    'beta=0.05,lr=1e-4'
    >>> run_name(["objective.beta=0.05", "trainer.max_steps=2"], swept=["objective.beta"])
    'beta=0.05'
    """
    if swept and any(_split(o)[0] in swept for o in overrides):
        overrides = [o for o in overrides if _split(o)[0] in swept]
    parts = []
    for o in overrides:
        key, value = _split(o)
        if key.startswith(HIDDEN_KEYS):
            continue
        if SECRET_KEY.search(key):
            value = REDACTED
        parts.append(f"{key.rsplit('.', 1)[-1]}={value}")
    return ",".join(parts) or None


def sweep_keys(config: DictConfig) -> list[str]:
    """The keys a (multi)run config sweeps: ``hydra.sweeper.params`` and the command line's sweep overrides."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    keys = [str(k) for k in (OmegaConf.select(config, "hydra.sweeper.params", default=None) or {})]
    task = [str(o) for o in (OmegaConf.select(config, "hydra.overrides.task", default=None) or [])]
    try:
        parsed = OverridesParser.create().parse_overrides(task)
    except Exception:  # an override Hydra itself would refuse; the name falls back to every override
        parsed = []
    keys += [o.get_key_element().lstrip("+~") for o in parsed if o.is_sweep_override()]
    return list(dict.fromkeys(keys))


def _job_overrides(job_dir: Path) -> list[str] | None:
    f = job_dir / ".hydra" / "overrides.yaml"
    if not f.is_file():
        return None
    return [str(o) for o in OmegaConf.load(f)]


def summarize(sweep_dir: str | os.PathLike, swept: list[str] | None = None) -> list[dict[str, Any]]:
    """Build the summary rows of a multirun folder and write ``summary.csv`` / ``summary.json`` into it.

    Args:
        sweep_dir: the multirun folder (``hydra.sweep.dir``); each job is a subfolder with ``.hydra/``.
        swept: keys to give a column even when they do not vary (``hydra.sweeper.params``).

    Returns:
        The rows, in job order.
    """
    root = Path(sweep_dir)
    jobs = []
    for d in sorted((p for p in root.iterdir() if p.is_dir()), key=lambda p: (not p.name.isdigit(), p.name.zfill(8))):
        overrides = _job_overrides(d)
        if overrides is not None:
            jobs.append((d, overrides))
    values = [dict(_split(o) for o in ov) for _, ov in jobs]
    keys = list(dict.fromkeys([*(swept or []), *(k for v in values for k in v)]))
    swept_keys = [k for k in keys if k in (swept or []) or len({v.get(k) for v in values}) > 1]
    rows = []
    for (d, overrides), vals in zip(jobs, values):
        row: dict[str, Any] = {"job": d.name, "overrides": ",".join(overrides)}
        row.update({k: vals.get(k) for k in swept_keys})
        metrics_file = d / "metrics.json"
        if metrics_file.is_file():
            row["status"] = "ok"
            metrics = json.loads(metrics_file.read_text())
            runtime = metrics.pop("runtime_s", None)
            row.update(dict(sorted(metrics.items())))
            row["runtime_s"] = runtime
        else:
            row["status"] = "failed"
        rows.append(row)
    columns = list(dict.fromkeys(k for r in rows for k in r if k != "runtime_s")) + ["runtime_s"]
    with (root / "summary.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=columns)
        w.writeheader()
        w.writerows(rows)
    (root / "summary.json").write_text(json.dumps(rows, indent=2) + "\n")
    return rows


class SweepCallback(Callback):
    """Hydra callback: W&B name/group per job, ``summary.csv``/``summary.json`` at the end of a multirun."""

    def __init__(self) -> None:
        self._user_env = {k: os.environ.get(k) for k in ("WANDB_NAME", "WANDB_RUN_GROUP")}
        self._swept: list[str] = []

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._swept = sweep_keys(config)  # the command line's sweeps are only visible here, before expansion

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        overrides = [str(o) for o in (OmegaConf.select(config, "hydra.overrides.task", default=[]) or [])]
        swept = list(dict.fromkeys([*self._swept, *sweep_keys(config)]))
        name, group = run_name(overrides, swept), OmegaConf.select(config, "task_name", default=None)
        for env, value in (("WANDB_NAME", name), ("WANDB_RUN_GROUP", group)):
            if self._user_env[env]:
                continue  # the user's own choice wins
            if value:
                os.environ[env] = str(value)
            else:
                os.environ.pop(env, None)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(str(config.hydra.sweep.dir))
        if not sweep_dir.is_dir():
            return
        rows = summarize(sweep_dir, swept=self._swept or sweep_keys(config))
        log.info("sweep summary of %d jobs: %s", len(rows), sweep_dir / "summary.csv")
