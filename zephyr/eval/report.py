"""Plots and markdown for sweeps (Hydra multirun dirs) and for the demo's ``report.json``.

Used by ``zephyr report DIR`` and by the notebooks, which only call these functions.

Sweep directory format (written by the dDPO sweep): ``summary.json`` (a list of row dicts; ``summary.csv``
holds the same rows) with ``job``, ``overrides`` ("objective.beta=0.1,objective.lr=5e-7"), one column per
swept key, final metrics (``train/loss``, ``eval/rewards/accuracies``, ``eval/kl``, ``heldout_accuracy``,
``heldout_kl`` ..., any may be missing) and ``runtime_s``; each ``<job>/metrics.csv`` has per-step rows
(``step`` then sparse metric columns). W&B offline runs under the directory
(``wandb/offline-run-*/files/wandb-summary.json``) are read too when present.

Demo format: ``report.json`` = ``{"stages": {name: seconds}, "accuracy": {model: fraction},
"heldout_n", "seed", optional "accuracy_std", "seeds"}``.

A swept key of names (the loss study's ``loss``) is drawn as bars per name, replicates (a swept ``seed``)
as mean ± std; a numeric key as lines (log x for beta and learning rates).

Figures are ``matplotlib.figure.Figure`` objects built without pyplot, so the CLI needs no display and
leaks no global state; notebooks display them directly.
"""

from __future__ import annotations

import json
import math
import os
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd
from matplotlib.figure import Figure

SWEEP_METRICS = [
    "eval/rewards/accuracies",
    "eval/rewards/margins",
    "eval/kl",
    "heldout/accuracy",
    "heldout_accuracy",
    "heldout_kl",
    "eval/loss",
    "train/loss",
    "eval/rewards/chosen",
]
"""Metrics plotted against each swept key, in this order, when the summary has them."""
HELDOUT_METRICS = ("heldout_accuracy", "heldout_kl")
"""What a run's ``heldout`` block adds (:func:`zephyr.eval.heldout.run_heldout`), drawn on their own as well."""

LOG_SCALE_SUFFIXES = ("beta", "lr", "learning_rate")
NON_KEY_COLUMNS = {"job", "overrides", "runtime_s"}
DEMO_ORDER = ["base", "dsft", "dsft_compute_matched", "ddpo", "dpo_from_base"]


# --------------------------------------------------------------------------------------------------
# Sweeps
# --------------------------------------------------------------------------------------------------
def latest_multirun(root: str | os.PathLike = "runs/multirun") -> Path:
    """The most recently written directory under ``root`` that holds a ``summary.json`` or ``summary.csv``.

    Raises:
        FileNotFoundError: when there is none.
    """
    found = [p.parent for pat in ("summary.json", "summary.csv") for p in Path(root).rglob(pat)]
    if not found:
        raise FileNotFoundError(f"{root}: no multirun directory with summary.json/summary.csv")
    return max(found, key=lambda p: max(f.stat().st_mtime for f in p.glob("summary.*")))


def parse_overrides(overrides: str) -> dict[str, str]:
    """``"objective.beta=0.1,objective.lr=5e-7"`` -> ``{"objective.beta": "0.1", "objective.lr": "5e-7"}``.

    A comma inside brackets (a list value) does not split.
    """
    out, depth, cur = {}, 0, ""
    for ch in (overrides or "") + ",":
        if ch in "[{(":
            depth += 1
        elif ch in "]})":
            depth -= 1
        if ch == "," and depth == 0:
            if "=" in cur:
                k, v = cur.split("=", 1)
                out[k.strip().lstrip("+~")] = v.strip()
            cur = ""
        else:
            cur += ch
    return out


def load_sweep(multirun_dir: str | os.PathLike) -> pd.DataFrame:
    """The sweep's summary rows (``summary.json``, else ``summary.csv``) as a DataFrame.

    Raises:
        FileNotFoundError: when neither file exists.
        ValueError: when the summary is not a non-empty list of rows with a ``job`` column.
    """
    d = Path(multirun_dir)
    if (d / "summary.json").is_file():
        rows = json.loads((d / "summary.json").read_text())
        if not isinstance(rows, list) or not rows or not all(isinstance(r, dict) for r in rows):
            raise ValueError(f"{d / 'summary.json'}: expected a non-empty list of row objects")
        df = pd.DataFrame(rows)
    elif (d / "summary.csv").is_file():
        df = pd.read_csv(d / "summary.csv")
    else:
        raise FileNotFoundError(f"{d}: no summary.json or summary.csv (is this a multirun directory?)")
    if "job" not in df.columns:
        raise ValueError(f"{d}: summary rows need a 'job' column")
    df["job"] = df["job"].astype(str)
    return df


def swept_keys(df: pd.DataFrame) -> list[str]:
    """Swept config keys: keys named in ``overrides`` that are columns, else non-metric columns."""
    keys: list[str] = []
    if "overrides" in df.columns:
        for o in df["overrides"].dropna():
            keys += [k for k in parse_overrides(str(o)) if k in df.columns and k not in keys]
    if not keys:
        keys = [c for c in df.columns if c not in NON_KEY_COLUMNS and "/" not in c]
    return [k for k in keys if df[k].nunique(dropna=True) > 1] or keys


def metric_columns(df: pd.DataFrame) -> list[str]:
    """Metric columns present, ``SWEEP_METRICS`` first, then any other ``a/b`` column."""
    have = [m for m in SWEEP_METRICS if m in df.columns and df[m].notna().any()]
    return have + [c for c in df.columns if "/" in c and c not in have and df[c].notna().any()]


def _is_log_key(key: str) -> bool:
    return key.split(".")[-1].lower() in LOG_SCALE_SUFFIXES


def is_categorical(df: pd.DataFrame, key: str) -> bool:
    """Whether swept ``key`` takes names rather than numbers (``loss=sigmoid,ipo,...``): drawn as bars, not a line."""
    values = df[key].dropna()
    return bool(len(values)) and pd.to_numeric(values, errors="coerce").isna().any()


def _is_replicate(key: str) -> bool:
    return key.split(".")[-1].lower() == "seed"


def plot_metric_bars(df: pd.DataFrame, key: str, metric: str, ax) -> Any:
    """Bars of ``metric`` per value of the categorical ``key`` (in job order) on ``ax``; returns ``ax``.

    Rows that differ only in a ``seed`` key are replicates: the bar is their mean, the error bar their population
    standard deviation (as the demo's ± std) when there are several. Each setting of the other swept keys gets its
    own bar colour beside the others.
    """
    others = [k for k in swept_keys(df) if k != key and not _is_replicate(k)]
    sub = df[[key, metric, *others]].dropna(subset=[key, metric])
    cats = list(dict.fromkeys(sub[key].astype(str)))
    groups = list(sub.groupby(others, dropna=False, sort=False)) if others else [((), sub)]
    width = 0.8 / max(1, len(groups))
    n_max = 1
    for g_idx, (label, g) in enumerate(groups):
        vals: dict[str, list[float]] = {}
        for cat, v in zip(g[key].astype(str), g[metric].astype(float)):
            vals.setdefault(cat, []).append(v)
        means = [sum(vals[c]) / len(vals[c]) if c in vals else math.nan for c in cats]
        stds = [statistics.pstdev(vals[c]) if c in vals and len(vals[c]) > 1 else 0.0 for c in cats]
        n_max = max([n_max, *(len(v) for v in vals.values())])
        name = ", ".join(
            f"{k.split('.')[-1]}={v}" for k, v in zip(others, label if isinstance(label, tuple) else (label,))
        )
        xs = [i - 0.4 + width * (g_idx + 0.5) for i in range(len(cats))]
        ax.bar(xs, means, width=width, yerr=stds if n_max > 1 else None, capsize=3, label=name or None)
    ax.set_xticks(range(len(cats)), cats, rotation=30, ha="right")
    if len(sub) and (sub[metric].astype(float) >= 0).all():
        ax.set_ylim(bottom=0)  # bars start at 0 (accuracies, KLs): no axis centred on an all-zero column
    ax.set_xlabel(key)
    ax.set_ylabel(metric)
    reps = f" (mean ± std of {n_max} seeds)" if n_max > 1 else ""
    ax.set_title(f"{metric} per {key.split('.')[-1]}{reps}")
    ax.grid(alpha=0.3, axis="y")
    if others and len(sub):
        ax.legend(fontsize="small")
    return ax


def plot_metric_vs_key(df: pd.DataFrame, key: str, metric: str, ax) -> Any:
    """Plot ``metric`` against swept ``key`` on ``ax``: one line per combination of the other swept keys.

    Log x scale for beta and learning rates; a categorical key (names, e.g. the loss study's ``loss``) gets
    :func:`plot_metric_bars` instead. Returns ``ax``.
    """
    if is_categorical(df, key):
        return plot_metric_bars(df, key, metric, ax)
    others = [k for k in swept_keys(df) if k != key]
    sub = df[[key, metric, *others]].dropna(subset=[key, metric])
    groups = sub.groupby(others, dropna=False) if others else [((), sub)]
    for label, g in groups:
        g = g.sort_values(key)
        name = ", ".join(
            f"{k.split('.')[-1]}={v}" for k, v in zip(others, label if isinstance(label, tuple) else (label,))
        )
        ax.plot(g[key].astype(float), g[metric].astype(float), marker="o", label=name or None)
    if _is_log_key(key) and (sub[key].astype(float) > 0).all():
        ax.set_xscale("log")
    ax.set_xlabel(key)
    ax.set_ylabel(metric)
    ax.set_title(f"{metric} vs {key.split('.')[-1]}")
    ax.grid(alpha=0.3)
    if others and len(sub):
        ax.legend(fontsize="small")
    return ax


def plot_sweep(df: pd.DataFrame, key: str, metrics: Sequence[str] | None = None) -> Figure:
    """A grid with one panel per metric, each plotted against ``key``."""
    metrics = list(metrics) if metrics is not None else metric_columns(df)
    if not metrics:
        raise ValueError("the sweep summary has no metric columns to plot")
    cols = min(3, len(metrics))
    rows = math.ceil(len(metrics) / cols)
    fig = Figure(figsize=(4.5 * cols, 3.5 * rows), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False)
    for ax, metric in zip(axes.flat, metrics):
        plot_metric_vs_key(df, key, metric, ax)
    for ax in list(axes.flat)[len(metrics) :]:
        ax.set_visible(False)
    return fig


def load_job_metrics(multirun_dir: str | os.PathLike, job: str) -> pd.DataFrame | None:
    """A job's ``metrics.csv`` (per-step rows), or ``None`` when it has none."""
    path = Path(multirun_dir) / str(job) / "metrics.csv"
    return pd.read_csv(path) if path.is_file() else None


def plot_loss_curves(multirun_dir: str | os.PathLike, df: pd.DataFrame, metrics: Sequence[str] = ("train/loss",)):
    """Per-job curves of ``metrics`` (first present of them per job) against ``step``, one panel per metric.

    Returns:
        The figure, or ``None`` when no job has a ``metrics.csv`` with these columns.
    """
    curves = []
    for _, row in df.iterrows():
        m = load_job_metrics(multirun_dir, row["job"])
        if m is not None and "step" in m.columns:
            curves.append((row, m))
    present = [k for k in metrics if any(k in m.columns and m[k].notna().any() for _, m in curves)]
    if not present:
        return None
    fig = Figure(figsize=(6 * len(present), 4), layout="constrained")
    axes = fig.subplots(1, len(present), squeeze=False)[0]
    keys = swept_keys(df)
    for ax, metric in zip(axes, present):
        for row, m in curves:
            if metric not in m.columns:
                continue
            s = m[["step", metric]].dropna()
            label = ", ".join(f"{k.split('.')[-1]}={row[k]}" for k in keys) or str(row["job"])
            ax.plot(s["step"], s[metric], label=label)
        ax.set_xlabel("step")
        ax.set_ylabel(metric)
        ax.set_title(f"{metric} per job")
        ax.grid(alpha=0.3)
        ax.legend(fontsize="x-small")
    return fig


def load_wandb_offline(multirun_dir: str | os.PathLike) -> pd.DataFrame:
    """One row per W&B offline run (``wandb/offline-run-*``) under ``multirun_dir``; empty when none.

    The metrics come from the run's ``files/wandb-summary.json`` when W&B wrote one; the offline runs of recent
    W&B versions write none (their data sits in the binary ``run-*.wandb`` record only, which W&B's current
    Python package has no reader for), so otherwise they come from the ``metrics.json`` that zephyr writes in
    the same job directory (the final value of every logged scalar). ``source`` says which; a run with
    neither has only its name and path.
    """
    rows = []
    for run_dir in sorted(Path(multirun_dir).rglob("offline-run-*")):
        if not run_dir.is_dir() or run_dir.parent.name != "wandb":
            continue
        job_dir = run_dir.parent.parent
        row: dict[str, Any] = {"run": run_dir.name, "job": job_dir.name, "path": str(run_dir), "source": None}
        for source in (run_dir / "files" / "wandb-summary.json", job_dir / "metrics.json"):
            if source.is_file():
                try:
                    metrics = json.loads(source.read_text())
                except json.JSONDecodeError as e:
                    raise ValueError(f"{source}: not valid JSON ({e.msg})") from e
                row["source"] = source.name
                row.update({k: v for k, v in metrics.items() if "/" in k})
                break
        rows.append(row)
    return pd.DataFrame(rows)


def sweep_markdown(df: pd.DataFrame, title: str = "Sweep") -> str:
    """A markdown table of the sweep: job, swept keys, metrics, runtime; best row per metric below it."""
    keys, metrics = swept_keys(df), metric_columns(df)
    cols = ["job", *keys, *metrics] + (["runtime_s"] if "runtime_s" in df.columns else [])
    lines = [f"# {title}", "", f"{len(df)} jobs; swept: {', '.join(keys) or '(none)'}", ""]
    lines += ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    for _, r in df.iterrows():
        cells = []
        for c in cols:
            v = r.get(c)
            cells.append(
                "-"
                if v is None or (isinstance(v, float) and math.isnan(v))
                else f"{v:.4g}"
                if isinstance(v, float)
                else str(v)
            )
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    for m in metrics:
        if df[m].notna().any():
            best = df.loc[df[m].astype(float).idxmax() if "loss" not in m else df[m].astype(float).idxmin()]
            which = "lowest" if "loss" in m else "highest"
            setting = ", ".join(f"{k}={best[k]}" for k in keys)
            lines.append(f"- {which} `{m}`: {float(best[m]):.4g} (job {best['job']}: {setting})")
    return "\n".join(lines) + "\n"


def sweep_figures(multirun_dir: str | os.PathLike, df: pd.DataFrame | None = None) -> dict[str, Figure]:
    """All sweep figures by file name: ``<key>_sweep.png`` per swept key (every metric), ``<key>_heldout.png``
    (``heldout_accuracy`` and ``heldout_kl`` alone, when the jobs ran a ``heldout`` block: the loss study's headline)
    and ``loss_curves.png`` (when curves exist).
    """
    df = load_sweep(multirun_dir) if df is None else df
    figs = {f"{key.replace('/', '_')}_sweep.png": plot_sweep(df, key) for key in swept_keys(df)}
    held = [m for m in HELDOUT_METRICS if m in df.columns and df[m].notna().any()]
    if held:
        keys = [k for k in swept_keys(df) if not _is_replicate(k)] or swept_keys(df)
        figs.update({f"{key.replace('/', '_')}_heldout.png": plot_sweep(df, key, held) for key in keys})
    curves = plot_loss_curves(multirun_dir, df, ("train/loss", "eval/loss"))
    if curves is not None:
        figs["loss_curves.png"] = curves
    return figs


def resolve_dir(env_var: str, default: str) -> Path:
    """The directory named by ``$env_var``, else ``default`` under the working dir or its nearest parent having it.

    Notebooks run from ``notebooks/``; this finds the repository's ``runs/...`` from there. A relative
    ``$env_var`` is resolved against the directory the user ran from (``_start_dirs``), not ``notebooks/``.

    Raises:
        FileNotFoundError: when neither exists.
    """
    if os.environ.get(env_var):
        path = Path(os.environ[env_var]).expanduser()
        if path.is_absolute():
            if not path.is_dir():
                raise FileNotFoundError(f"${env_var}={path}: no such directory")
            return path
        bases = _start_dirs()
        for base in bases:
            if (base / path).is_dir():
                return (base / path).resolve()
        where = ", ".join(str(b) for b in bases)
        raise FileNotFoundError(f"${env_var}={path}: no such directory (relative to {where})")
    for start in dict.fromkeys([Path.cwd(), *_start_dirs()]):  # the notebook's own tree first, as before
        for base in [start, *start.parents]:
            if (base / default).is_dir():
                return base / default
    raise FileNotFoundError(f"set ${env_var} or create {default} (searched from {Path.cwd()} upwards)")


def _start_dirs() -> list[Path]:
    """Where a relative path given by the user starts: the directory they ran from, then the working dir.

    A notebook kernel (Jupyter, ``pytest --nbmake``) runs in ``notebooks/`` while the user typed the command
    elsewhere: ``$ZEPHYR_ORIG_CWD`` when set, else ``$PWD`` (the shell's directory, inherited by the kernel),
    come before ``Path.cwd()``.
    """
    dirs = []
    for raw in (os.environ.get("ZEPHYR_ORIG_CWD"), os.environ.get("PWD")):
        if raw and Path(raw).is_absolute() and Path(raw).is_dir():
            dirs.append(Path(raw))
    dirs.append(Path.cwd())
    return list(dict.fromkeys(dirs))


def find_multirun() -> Path:
    """``$ZEPHYR_MULTIRUN_DIR``, else the newest sweep under ``runs/multirun`` (found from the working dir up)."""
    if os.environ.get("ZEPHYR_MULTIRUN_DIR"):
        return resolve_dir("ZEPHYR_MULTIRUN_DIR", "runs/multirun")
    return latest_multirun(resolve_dir("ZEPHYR_MULTIRUN_DIR", "runs/multirun"))


def find_demo() -> Path:
    """``$ZEPHYR_DEMO_DIR``, else ``runs/demo`` (found from the working dir up)."""
    return resolve_dir("ZEPHYR_DEMO_DIR", "runs/demo")


def write_sweep_report(multirun_dir: str | os.PathLike, out_dir: str | os.PathLike | None = None) -> list[Path]:
    """Write ``<key>_sweep.png`` per swept key, ``loss_curves.png`` and ``report.md`` into ``out_dir``.

    Args:
        multirun_dir: the Hydra multirun directory.
        out_dir: default ``<multirun_dir>/report``.

    Returns:
        The files written.
    """
    df = load_sweep(multirun_dir)
    out = Path(out_dir) if out_dir is not None else Path(multirun_dir) / "report"
    out.mkdir(parents=True, exist_ok=True)
    written = []
    md = [sweep_markdown(df, title=f"Sweep report: {Path(multirun_dir).name}")]
    for name, fig in sweep_figures(multirun_dir, df).items():
        fig.savefig(out / name, dpi=110)
        written.append(out / name)
        md.append(f"![{name[:-4]}]({name})\n")
    (out / "report.md").write_text("\n".join(md))
    written.append(out / "report.md")
    return written


# --------------------------------------------------------------------------------------------------
# Demo
# --------------------------------------------------------------------------------------------------
def load_demo_report(demo_dir: str | os.PathLike) -> dict[str, Any]:
    """``<demo_dir>/report.json``, checked for ``stages`` and ``accuracy`` mappings.

    Raises:
        FileNotFoundError: when the file is missing.
        ValueError: when a required key is missing or not a mapping.
    """
    path = Path(demo_dir) / "report.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no demo report (run the demo first)")
    rep = json.loads(path.read_text())
    for key in ("stages", "accuracy"):
        if not isinstance(rep.get(key), dict):
            raise ValueError(f"{path}: '{key}' must be a mapping")
    return rep


def plot_demo_accuracy(report: dict[str, Any]) -> Figure:
    """Bar chart of held-out accuracy per model (error bars from ``accuracy_std`` when present)."""
    acc = report["accuracy"]
    names = [n for n in DEMO_ORDER if n in acc] + [n for n in acc if n not in DEMO_ORDER]
    std = report.get("accuracy_std") or {}
    fig = Figure(figsize=(1.4 * len(names) + 2, 4), layout="constrained")
    ax = fig.subplots()
    vals = [float(acc[n]) for n in names]
    errs = [float(std.get(n, 0.0)) for n in names] if std else None
    bars = ax.bar(names, vals, yerr=errs, capsize=4, color="#4c72b0")
    for b, v in zip(bars, vals):
        ax.text(b.get_x() + b.get_width() / 2, v + 0.01, f"{v:.2f}", ha="center", va="bottom", fontsize="small")
    seeds = report.get("seeds", report.get("seed"))
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("held-out accuracy")
    ax.set_title(f"Held-out accuracy (n={report.get('heldout_n', '?')}, seed={seeds})")
    ax.tick_params(axis="x", labelrotation=20)
    return fig


def plot_demo_stages(report: dict[str, Any]) -> Figure:
    """Horizontal bars of wall-clock seconds per demo stage."""
    stages = report["stages"]
    fig = Figure(figsize=(6, 0.5 * len(stages) + 1.5), layout="constrained")
    ax = fig.subplots()
    ax.barh(list(stages)[::-1], [float(v) for v in stages.values()][::-1], color="#55a868")
    ax.set_xlabel("seconds")
    ax.set_title(f"Stage times (total {sum(float(v) for v in stages.values()):.0f} s)")
    return fig


def demo_markdown(report: dict[str, Any]) -> str:
    """The accuracy comparison, per-family accuracy (when the report has ``by_family``) and stage times in markdown."""
    acc, std = report["accuracy"], report.get("accuracy_std") or {}
    names = [n for n in DEMO_ORDER if n in acc] + [n for n in acc if n not in DEMO_ORDER]
    lines = [
        "# Demo report",
        "",
        f"held-out n = {report.get('heldout_n', '?')}, seed(s) = {report.get('seeds', report.get('seed'))}",
        "",
        "| model | accuracy |",
        "|---|---|",
    ]
    for n in names:
        lines.append(f"| {n} | {float(acc[n]):.3f}" + (f" ± {float(std[n]):.3f}" if n in std else "") + " |")
    by_family = report.get("by_family") or {}
    fams = sorted(set().union(*(by_family.get(n, {}) for n in names)))
    if fams:
        lines += ["", "Per task family:", "", "| model | " + " | ".join(fams) + " |", "|---|" + "---|" * len(fams)]
        for n in names:
            row = by_family.get(n, {})
            lines.append(f"| {n} | " + " | ".join(f"{float(row[f]):.3f}" if f in row else "" for f in fams) + " |")
    lines += ["", "| stage | seconds |", "|---|---|"]
    lines += [f"| {k} | {float(v):.1f} |" for k, v in report["stages"].items()]
    lines.append(f"| **total** | {sum(float(v) for v in report['stages'].values()):.1f} |")
    return "\n".join(lines) + "\n"


def write_demo_report(demo_dir: str | os.PathLike, out_dir: str | os.PathLike | None = None) -> list[Path]:
    """Write ``accuracy.png``, ``stages.png`` and ``report.md`` for a demo directory (default into it)."""
    rep = load_demo_report(demo_dir)
    out = Path(out_dir) if out_dir is not None else Path(demo_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, fig in (("accuracy.png", plot_demo_accuracy(rep)), ("stages.png", plot_demo_stages(rep))):
        fig.savefig(out / name, dpi=110)
        written.append(out / name)
    md = demo_markdown(rep) + "\n![accuracy](accuracy.png)\n\n![stages](stages.png)\n"
    (out / "report.md").write_text(md)
    return [*written, out / "report.md"]


def write_report(path: str | os.PathLike, out_dir: str | os.PathLike | None = None) -> list[Path]:
    """Demo dir (has ``report.json``) or multirun dir (has ``summary.json``/``.csv``) -> PNGs + ``report.md``.

    Raises:
        FileNotFoundError: when ``path`` is neither.
    """
    p = Path(path)
    if not p.is_dir():
        raise FileNotFoundError(f"{p}: not a directory")
    if (p / "report.json").is_file():
        return write_demo_report(p, out_dir)
    if (p / "summary.json").is_file() or (p / "summary.csv").is_file():
        return write_sweep_report(p, out_dir)
    raise FileNotFoundError(f"{p}: neither a demo dir (report.json) nor a multirun dir (summary.json/summary.csv)")
