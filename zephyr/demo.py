"""``zephyr demo``: the whole Zephyr recipe on the offline toy world, end to end on a CPU, with an honest report.

Stages (each timed; ``report.json`` keeps ``stages`` name -> seconds):

1. ``sft_data``   the imperfect toy teacher writes a FIXED, limited dSFT set (``ultrachat_200k`` schema);
2. ``dsft``       ``zephyr.run.train`` on it (random-init tiny Mistral -> ``dsft/model``);
3. ``sampling``   every pool member (rule-based students of different strengths + the dSFT model itself,
                  answering through a local-checkpoint backend) completes toy prompts from the train split;
4. ``judging``    the verifier judge rates every completion on the four UltraFeedback aspects, through the
                  real prompt builders and parsers of :mod:`zephyr.feedback.judge` (3 and 4 are one
                  :func:`zephyr.feedback.complete.collect_feedback` call; its wall time is split by timing
                  the backends, exact because calls run one at a time);
5. ``binarize``   chosen = best mean rating, rejected = a random other completion (``ultrafeedback_binarized``);
6. ``ddpo``       ``train`` with ``objective=dpo`` from the dSFT export on those pairs (DPO + ``rpo_alpha`` NLL);
7. ``dsft_compute_matched``  the dSFT model trained further on the same teacher data for as many optimizer
                  steps as fit in the wall time of stages 3-6 at the dSFT stage's measured seconds per step;
8. ``dpo_from_base``  the same DPO run starting from the random-init base model (no dSFT);
9. ``eval``       base, dSFT, compute-matched dSFT, dDPO and DPO-from-base answer the same FIXED held-out
                  questions with greedy decoding; ``zephyr.toy.is_correct`` grades them.

With ``seeds > 1`` each seed runs in ``<out>/seed_<s>/`` (a finished seed is reused) and ``<out>/report.json``
holds the mean over seeds (``accuracy``), the population standard deviation (``accuracy_std``), min/max and
the per-seed figures. ``report.md``, ``accuracy.png`` and ``stages.png`` come from :mod:`zephyr.eval.report`.
"""

from __future__ import annotations

import json
import logging
import os
import statistics
import time
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from zephyr.conf import compose, dotlist_layers, merge_layers

# the held-out evaluation lives in zephyr.eval.heldout (a training run's `heldout` block uses it too)
from zephyr.eval.heldout import evaluate, heldout_tasks, world_families

log = logging.getLogger(__name__)

SIZES = ("full", "ci")
MODELS = ("base", "dsft", "dsft_compute_matched", "ddpo", "dpo_from_base")
"""The evaluated models, in ``report.json`` order."""

QUIET_TRAINING = [
    "logger=none",
    "trainer.enable_progress_bar=false",
    "trainer.val_check_interval=null",
    "final_eval=false",
]
"""Overrides every demo training run gets: no W&B, no per-step bar. Checkpoints stay on (conf/callbacks, every 50
steps): a stage killed midway resumes from its newest one (:func:`_train`)."""


# --------------------------------------------------------------------------------------------------
# Settings
# --------------------------------------------------------------------------------------------------
def load_settings(size: str = "full", overrides: Sequence[str] = ()) -> DictConfig:
    """``conf/demo/<size>.yaml`` composed by Hydra (``ci`` lists ``full`` first), then dotlist ``overrides``.

    Raises:
        ValueError: unknown size, a malformed override, or an override of a key ``full.yaml`` does not have
            (``world.teacher`` takes any key: ``make_teacher`` checks them).
    """
    if size not in SIZES:
        raise ValueError(f"demo size must be one of {SIZES}, got {size!r}")
    return merge_layers(
        compose(f"demo/{size}"),
        dotlist_layers(overrides),
        open_keys=("world.teacher",),  # ToyTeacher keyword arguments: checked by make_teacher
        noun="demo setting",
        hint="(see conf/demo/full.yaml)",
    )


def model_config(settings: DictConfig) -> dict[str, Any]:
    """The random-init model config of the demo: ``conf/model/tiny_mistral.yaml`` with the demo's overrides."""
    cfg = compose("train", [f"paths.root_dir={Path.cwd()}", "paths.output_dir=unused", *settings.model])
    return OmegaConf.to_container(cfg.model.config, resolve=True)  # type: ignore[return-value]


# --------------------------------------------------------------------------------------------------
# Timing the pool and the judge
# --------------------------------------------------------------------------------------------------
class TimedBackend:
    """Wraps a backend and adds the wall time of its calls to ``clock[key]`` (exact when calls are sequential)."""

    def __init__(self, inner, clock: dict[str, float], key: str):
        self.inner, self.clock, self.key = inner, clock, key
        self.name = inner.name
        if hasattr(inner, "chat_batch"):
            self.chat_batch = self._timed(inner.chat_batch)
        self.chat = self._timed(inner.chat)

    def _timed(self, fn: Callable) -> Callable:
        def call(*args, **kwargs):
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.clock[self.key] = self.clock.get(self.key, 0.0) + time.perf_counter() - t0

        return call


# --------------------------------------------------------------------------------------------------
# The world's teacher (its held-out evaluation: zephyr.eval.heldout)
# --------------------------------------------------------------------------------------------------
def make_teacher(settings: DictConfig, seed: int):
    """The imperfect teacher of the world: ``ToyTeacher(seed, **world.teacher)``.

    Raises:
        ValueError: ``world.teacher`` names a field :class:`~zephyr.toy.rules.ErrorProfile` does not have.
    """
    from zephyr.toy import ToyTeacher

    kwargs = OmegaConf.to_container(settings.get("world", {}).get("teacher") or OmegaConf.create({}), resolve=True)
    try:
        return ToyTeacher(seed, **kwargs)  # type: ignore[arg-type]
    except TypeError as err:
        raise ValueError(f"demo world.teacher: {err}") from None


# --------------------------------------------------------------------------------------------------
# The pipeline
# --------------------------------------------------------------------------------------------------
class Stages:
    """Times named stages, prints a rule per stage with rich, keeps ``name -> seconds`` in ``stages.json``.

    A rerun in the same folder reuses a stage that finished before (its time is in ``stages.json`` and its
    output exists), so a crash late in the pipeline does not throw away the dSFT run.
    """

    def __init__(self, console, path: Path):
        self.console = console
        self.path = path
        self.seconds: dict[str, float] = {}
        self.previous: dict[str, float] = json.loads(path.read_text()) if path.is_file() else {}

    def reuse(self, name: str, *outputs: Path) -> bool:
        """Whether ``name`` finished in an earlier run (recorded and every output present); if so, keep its time."""
        if name not in self.previous or not all(p.exists() for p in outputs):
            return False
        self.seconds[name] = float(self.previous[name])
        self.console.print(f"[yellow]{name}[/]: reusing the earlier run ({self.seconds[name]:.1f} s)")
        return True

    @contextmanager
    def __call__(self, name: str, what: str):
        self.console.rule(f"[bold]{name}[/]: {what}")
        t0 = time.perf_counter()
        yield
        self.seconds[name] = round(time.perf_counter() - t0, 2)
        self.save()
        self.console.print(f"[green]{name}[/] done in {self.seconds[name]:.1f} s")

    def save(self) -> None:
        self.path.write_text(json.dumps({**self.previous, **self.seconds}, indent=2) + "\n")


def _train(overrides: list[str]) -> dict[str, float]:
    """One training stage: resumed from its newest checkpoint when an earlier run was killed midway, else fresh.

    ``ckpt_path=last`` continues a killed run (its time in ``stages.json`` then covers only the resumed part);
    without a checkpoint, ``overwrite=true`` replaces what a killed run left. The checkpoints of a finished stage
    are deleted: its export is the output, and they only served a resume.
    """
    import shutil

    from zephyr.run import train

    cfg = compose("train", [*overrides, "ckpt_path=last", "overwrite=true"])
    metrics = train(cfg)
    shutil.rmtree(Path(str(cfg.paths.output_dir)) / "checkpoints", ignore_errors=True)
    return metrics


def _feedback(
    settings: DictConfig,
    out: Path,
    seed: int,
    dsft_model: Path,
    clock: dict[str, float],
    console,
    *,
    prompts: list[dict[str, Any]] | None = None,
    policy=None,
) -> None:
    """Completions from the pool (rule students + the dSFT model) and verifier judging -> ``ultrafeedback.jsonl``.

    :mod:`zephyr.iterate` passes ``prompts`` (default: the demo's draw of ``feedback.prompts`` train questions)
    and ``policy``, the backend that answers for the pool's ``dsft`` member (default: the dSFT checkpoint).
    """
    from zephyr.feedback.complete import FeedbackConfig, collect_feedback, load_prompts
    from zephyr.generation import LocalCheckpointBackend
    from zephyr.toy import VerifierJudge, default_pool

    names = list(settings.feedback.pool)
    rule = {s.name: s for s in default_pool(seed)}
    unknown = [x for x in names if x != "dsft" and x not in rule]
    if unknown:
        raise ValueError(f"demo feedback.pool: unknown members {unknown}; known {sorted(rule)} and 'dsft'")
    pool = [
        TimedBackend(
            (policy or LocalCheckpointBackend(dsft_model, "dsft", batch_size=int(settings.feedback.batch_size)))
            if x == "dsft"
            else rule[x],
            clock, "sampling",
        )
        for x in names
    ]  # fmt: skip
    judge = TimedBackend(VerifierJudge(), clock, "judging")
    if prompts is None:
        prompts = load_prompts(
            {"source": "toy_tasks", "n": int(settings.feedback.prompts), "seed": 10_000 + seed,
             "families": world_families(settings)}
        )  # fmt: skip
    fcfg = FeedbackConfig.from_config(
        models_per_prompt=settings.feedback.models_per_prompt,
        seed=seed,
        workers=int(settings.feedback.workers),
        batch_size=int(settings.feedback.batch_size),
        critique=bool(settings.feedback.critique),
        world_knowledge=False,
        completion_gen={
            "temperature": float(settings.feedback.temperature),
            "top_p": float(settings.feedback.top_p),
            "max_tokens": int(settings.feedback.max_tokens),
        },
        progress=False,
    )
    summary = collect_feedback(prompts, pool, judge, out / "feedback", fcfg)
    if summary["judged_prompts"] == 0:
        raise RuntimeError(f"{out / 'feedback'}: no prompt was judged ({summary['example_errors']})")
    console.print(f"{summary['judged_prompts']} prompts judged, pool {names}")


def dsft_stages(
    settings: DictConfig, out: Path, seed: int, stage: Stages, common: list[str], console
) -> tuple[list[str], Path, int]:
    """Stages 1-2 (``sft_data``, ``dsft``) in ``out``, reused when finished; returns the dSFT data overrides,
    the dSFT export folder and its optimizer steps.
    """
    from zephyr.feedback.store import write_jsonl
    from zephyr.toy import sft_dialogues

    data_dir = out / "data"
    sft_path = data_dir / "sft.jsonl"
    if not stage.reuse("sft_data", sft_path):
        with stage("sft_data", "the imperfect teacher writes the fixed dSFT set"):
            n, (lo, hi) = int(settings.sft_data.n), settings.sft_data.turns
            teacher, families = make_teacher(settings, seed), world_families(settings)
            rows = sft_dialogues(n, seed, turns=(int(lo), int(hi)), families=families, teacher=teacher)
            write_jsonl(sft_path, rows)
            console.print(f"{len(rows)} dialogues -> {sft_path}")

    data_sft = ["data=local_sft", f"data.path={sft_path}", "data.eval_size=0"]
    dsft_model = out / "dsft" / "model"
    if not stage.reuse("dsft", dsft_model / "config.json", out / "dsft" / "metrics.json"):
        with stage("dsft", "distilled SFT on the teacher's dialogues"):
            m = _train([*common, *data_sft, *settings.dsft, f"paths.output_dir={out / 'dsft'}", "task_name=dsft"])
            console.print(f"{int(m['global_step'])} steps, final train/loss {m.get('train/loss', float('nan')):.3f}")
    dsft_steps = max(1, int(json.loads((out / "dsft" / "metrics.json").read_text()).get("global_step", 1)))
    return data_sft, dsft_model, dsft_steps


def run_one(settings: DictConfig, out: Path, seed: int, console=None) -> dict[str, Any]:
    """Run every stage for one seed in ``out`` and write ``out/report.json``; returns the report."""
    from rich.console import Console

    from zephyr.feedback.binarize import binarize
    from zephyr.feedback.store import read_jsonl, write_jsonl
    from zephyr.models.export import load_prompt_format
    from zephyr.models.mistral import build_model
    from zephyr.tokenizer import load_tokenizer

    console = console or Console()
    out = out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    stage = Stages(console, out / "stages.json")
    common = [f"paths.root_dir={out}", f"seed={seed}", *QUIET_TRAINING, *settings.model]
    data_dir = out / "data"
    data_sft, dsft_model, dsft_steps = dsft_stages(settings, out, seed, stage, common, console)

    feedback_rows = out / "feedback" / "ultrafeedback.jsonl"
    if not (stage.reuse("sampling", feedback_rows) and stage.reuse("judging", feedback_rows)):
        clock: dict[str, float] = {}
        with stage("feedback", "pool completions + verifier judging (UltraFeedback aspects)"):
            _feedback(settings, out, seed, dsft_model, clock, console)
        fb_total = stage.seconds.pop("feedback")
        judging = min(clock.get("judging", 0.0), fb_total)
        stage.seconds["sampling"] = round(fb_total - judging, 2)
        stage.seconds["judging"] = round(judging, 2)
        stage.save()

    with stage("binarize", "chosen = best mean rating, rejected = a random other"):
        pairs, brep = binarize(
            read_jsonl(feedback_rows), criterion=settings.binarize.criterion, rejected=settings.binarize.rejected,
            ties=settings.binarize.ties, seed=seed,
        )  # fmt: skip
        if not pairs:
            raise RuntimeError(f"{out / 'feedback'}: binarizing gave no pairs ({brep})")
        pairs_path = data_dir / "pairs.jsonl"
        write_jsonl(pairs_path, pairs)
        console.print(f"{len(pairs)} pairs -> {pairs_path}; chosen from {brep['chosen_models']}")

    data_dpo = ["objective=dpo", "data=local_prefs", f"data.path={pairs_path}"]
    if not stage.reuse("ddpo", out / "ddpo" / "model" / "config.json", out / "ddpo" / "metrics.json"):
        with stage("ddpo", "DPO (+ NLL on chosen) from the dSFT model"):
            _train([*common, *data_dpo, *settings.ddpo, f"model.path={dsft_model}",
                    f"paths.output_dir={out / 'ddpo'}", "task_name=ddpo"])  # fmt: skip
    m_ddpo = json.loads((out / "ddpo" / "metrics.json").read_text())

    budget = sum(stage.seconds[k] for k in ("sampling", "judging", "binarize", "ddpo"))
    sec_per_step = stage.seconds["dsft"] / dsft_steps
    matched_steps = max(1, round(budget / sec_per_step))
    if not stage.reuse("dsft_compute_matched", out / "dsft_compute_matched" / "model" / "config.json"):
        with stage("dsft_compute_matched", f"dSFT trained further: {matched_steps} steps ~ {budget:.0f} s"):
            dsft_no_steps = [o for o in settings.dsft if not o.startswith("trainer.max_steps=")]
            _train([*common, *data_sft, *dsft_no_steps, f"trainer.max_steps={matched_steps}",
                    f"model.path={dsft_model}", f"paths.output_dir={out / 'dsft_compute_matched'}",
                    "task_name=dsft_compute_matched"])  # fmt: skip

    if not stage.reuse("dpo_from_base", out / "dpo_from_base" / "model" / "config.json"):
        with stage("dpo_from_base", "the same DPO run from the random-init base (no dSFT)"):
            _train([*common, *data_dpo, *settings.ddpo, f"paths.output_dir={out / 'dpo_from_base'}",
                    "task_name=dpo_from_base"])  # fmt: skip

    results: dict[str, dict[str, Any]] = {}
    with stage("eval", f"greedy answers to {int(settings.eval.n)} held-out questions, graded by the verifier"):
        tasks = heldout_tasks(settings)
        tokenizer = load_tokenizer()
        for name in MODELS:
            if name == "base":
                model, fmt = build_model(config=model_config(settings), init_seed=seed), True
            else:
                model = build_model(path=str(out / name / "model"))
                fmt = load_prompt_format(out / name / "model")["insert_empty_system"]
            results[name] = evaluate(model, tokenizer, tasks, settings, insert_empty_system=fmt)
            console.print(f"{name:>22}: {results[name]['accuracy']:.3f}")
            del model

    report = {
        "seed": seed,
        "size": settings.get("size_name", "full"),
        "heldout_n": len(tasks),
        "accuracy": {k: round(v["accuracy"], 4) for k, v in results.items()},
        "stages": stage.seconds,
        "total_s": round(sum(stage.seconds.values()), 1),
        "compute_budget_s": round(budget, 1),
        "compute_matched_steps": matched_steps,
        "dsft_steps": dsft_steps,
        "pairs": len(pairs),
        "chosen_models": brep["chosen_models"],
        "rejected_models": brep["rejected_models"],
        "ddpo_metrics": {k: round(v, 4) for k, v in m_ddpo.items() if k.startswith("train/")},
        "by_family": {k: v["by_family"] for k, v in results.items()},
        "examples": {k: v["examples"] for k, v in results.items()},
        "settings": OmegaConf.to_container(settings, resolve=True),
    }
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    return report


def aggregate(reports: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Mean over seeds (``accuracy``, ``stages``, ``by_family``), population std, min and max, per-seed figures."""
    if not reports:
        raise ValueError("aggregate: no per-seed reports")
    names = [k for k in MODELS if all(k in r["accuracy"] for r in reports)]
    acc = {k: [float(r["accuracy"][k]) for r in reports] for k in names}
    stages = {k: statistics.fmean(float(r["stages"].get(k, 0.0)) for r in reports) for k in reports[0]["stages"]}
    by_family: dict[str, dict[str, float]] = {}
    if all(r.get("by_family") for r in reports):
        for k in names:
            fams = sorted(set().union(*(r["by_family"].get(k, {}) for r in reports)))
            by_family[k] = {
                f: round(statistics.fmean(float(r["by_family"][k][f]) for r in reports), 4)
                for f in fams
                if all(f in r["by_family"].get(k, {}) for r in reports)
            }
    return {
        "seed": int(reports[0]["seed"]),
        "seeds": [int(r["seed"]) for r in reports],
        "heldout_n": int(reports[0]["heldout_n"]),
        "accuracy": {k: round(statistics.fmean(v), 4) for k, v in acc.items()},
        "accuracy_std": {k: round(statistics.pstdev(v), 4) for k, v in acc.items()},
        "accuracy_min": {k: min(v) for k, v in acc.items()},
        "accuracy_max": {k: max(v) for k, v in acc.items()},
        "stages": {k: round(v, 2) for k, v in stages.items()},
        "total_s": round(sum(stages.values()), 1),
        **({"by_family": by_family} if by_family else {}),
        "per_seed": [{"seed": r["seed"], "accuracy": r["accuracy"], "total_s": r.get("total_s")} for r in reports],
    }


def print_report(report: dict[str, Any], console) -> None:
    """Accuracy table (mean ± std over seeds when there are several, per family when known) and stage times."""
    from rich.table import Table

    std = report.get("accuracy_std") or {}
    by_family = report.get("by_family") or {}
    fams = sorted(set().union(*by_family.values())) if by_family else []
    t = Table(title=f"held-out accuracy (n={report['heldout_n']}, seeds={report.get('seeds', [report['seed']])})")
    t.add_column("model", no_wrap=True)
    t.add_column("accuracy", justify="right", no_wrap=True)
    for f in fams:  # family headers wrap at "_" so the table fits an 80-column terminal
        t.add_column(f.replace("_", " "), justify="right", style="dim", overflow="fold")
    for k, v in report["accuracy"].items():
        row = by_family.get(k, {})
        cells = [f"{row[f]:.3f}" if f in row else "" for f in fams]
        t.add_row(k, f"{v:.3f}" + (f" ± {std[k]:.3f}" if k in std else ""), *cells)
    console.print(t)
    s = Table(title="stage wall time (s)")
    s.add_column("stage")
    s.add_column("seconds", justify="right")
    for k, v in report["stages"].items():
        s.add_row(k, f"{float(v):.1f}")
    s.add_row("[bold]total", f"{sum(float(v) for v in report['stages'].values()):.1f}")
    console.print(s)


def run_demo(
    out: str | os.PathLike = "runs/demo",
    *,
    size: str = "full",
    seed: int | None = None,
    seeds: int = 1,
    overrides: Sequence[str] = (),
    force: bool = False,
) -> dict[str, Any]:
    """Run the demo for ``seeds`` consecutive seeds, write ``report.json`` + markdown + PNGs, print the report.

    Args:
        out: output folder (one seed: everything in it; several: ``seed_<s>/`` subfolders + the aggregate).
        size: ``full`` (``make demo``) or ``ci`` (reduced).
        seed: first seed (default: the settings' ``seed``).
        seeds: number of seeds.
        overrides: dotlist overrides of the demo settings (``ddpo=[...]`` replaces a list).
        force: rerun seeds whose ``report.json`` already exists.

    Returns:
        The report written to ``<out>/report.json``.
    """
    from rich.console import Console

    from zephyr.eval.report import write_demo_report

    if seeds < 1:
        raise ValueError(f"--seeds must be >= 1, got {seeds}")
    settings = load_settings(size, overrides)
    settings.size_name = size
    if settings.get("threads"):
        torch.set_num_threads(int(settings.threads))
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("WANDB_MODE", "offline")
    console = Console()
    first = int(settings.seed if seed is None else seed)
    root = Path(out)
    reports = []
    for s in range(first, first + seeds):
        folder = root if seeds == 1 else root / f"seed_{s}"
        done = folder / "report.json"
        if seeds > 1 and done.is_file() and not force:
            console.print(f"seed {s}: reusing {done}")
            reports.append(json.loads(done.read_text()))
            continue
        console.rule(f"[bold magenta]seed {s} ({size})")
        reports.append(run_one(settings, folder, s, console))
    report = reports[0] if seeds == 1 else aggregate(reports)
    root.mkdir(parents=True, exist_ok=True)
    (root / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    written = write_demo_report(root)
    print_report(report, console)
    console.print("wrote " + ", ".join(str(p) for p in [root / "report.json", *written]))
    return report
