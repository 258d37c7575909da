"""``zephyr iterate``: iterative dDPO on the toy world: rounds of generate -> judge -> binarize -> DPO.

The demo's world, settings and evaluation (:mod:`zephyr.demo`), with the feedback loop repeated:

* ``sft_data``, ``dsft`` as in the demo (``<out>/data``, ``<out>/dsft``), then ``eval_dsft``;
* round ``r`` in ``<out>/round_<r>/``: prompts (``iterate.prompts``: ``fresh`` = a new draw of
  ``feedback.prompts`` train questions each round, round 1's being the demo's; ``same`` = round 1's set);
  completions from the pool where the round ``r-1`` policy answers for the ``dsft`` member (``round<r-1>`` in
  the rows; round 1: the dSFT model) and verifier judging through :func:`zephyr.feedback.complete.collect_feedback`
  (the ``zephyr data feedback`` path: row-level resume) -> ``feedback/``; ``binarize`` with the demo's policy ->
  ``pairs.jsonl``; ``ddpo`` from the round ``r-1`` export with reference = that export (``previous``) or the
  dSFT model (``sft``), reference log-probs cached in ``ref_cache/`` (key: the reference weights' fingerprint)
  -> ``ddpo/model`` (the round's export); ``eval`` on the held-out questions -> ``eval.json``;
* ``compute_matched/``: one dDPO round from the dSFT model on every round's prompts (deduplicated), trained for
  the rounds' total DPO optimizer steps.

Each folder keeps ``stages.json``; a rerun of the same command reuses finished stages (and finished feedback rows
inside an interrupted feedback stage). ``<out>/report.json`` holds ``rounds``, ``accuracy``, ``heldout_n``,
``seed``; ``report.md`` and ``accuracy.png`` are drawn from it.

Real data (``iterate.start`` set; the example is ``conf/iterate/ultrafeedback.yaml``): the toy stages are skipped
and the loop starts from the ``start`` model. Round ``r`` takes the ``r``-th slice (``fresh``) or the first slice
(``same``) of a seeded shuffle of ``iterate.prompt_source`` (a :func:`zephyr.feedback.complete.load_prompts` spec:
``jsonl`` or ``hub``), the pool and judge come from the ``iterate.feedback`` file (filtered by ``iterate.pool``;
its ``dsft`` member is the policy), and the ``eval`` stage becomes ``win_rate``: the round's export against the
start model on ``iterate.win_rate.prompts``, judged pairwise in both orders (:mod:`zephyr.eval.win_rate`), per
prompt source in ``per_family``. The start model answers those prompts once (``<out>/start/answers.jsonl``). The
report then has ``metric: "win_rate"``, a ``win_rate`` block shaped like ``accuracy`` (``dsft`` = 0.5, the start
model against itself) and ``accuracy`` entries of ``None``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from zephyr.conf import compose, dotlist_layers, file_layer, merge_layers
from zephyr.demo import QUIET_TRAINING, SIZES, Stages

ROUND_STAGES = ("sampling", "judging", "binarize", "ddpo", "eval")
REAL_ROUND_STAGES = ("sampling", "judging", "binarize", "ddpo", "win_rate")
PROMPTS = ("fresh", "same")
REFERENCES = ("previous", "sft")
BACKENDS = ("local", "openai", "vllm")
REPORT_KEYS = ("rounds", "accuracy", "heldout_n", "seed")
REAL_EXAMPLE = "conf/iterate/ultrafeedback.yaml"


# --------------------------------------------------------------------------------------------------
# Settings
# --------------------------------------------------------------------------------------------------
def load_iterate_settings(
    size: str = "full", overrides: Sequence[str] = (), config: str | os.PathLike | None = None
) -> DictConfig:
    """``conf/iterate/toy.yaml`` composed over the demo ``size``, then the ``config`` file, then dotlist ``overrides``.

    Raises:
        FileNotFoundError: no ``config`` file.
        ValueError: an unreadable config file, an unknown key in it or in ``overrides``, or a bad value of
            ``iterate.prompts`` / ``iterate.reference`` / ``iterate.generation.backend`` / ``iterate.rounds``.
    """
    if size not in SIZES:
        raise ValueError(f"demo size must be one of {SIZES}, got {size!r}")
    layers = [file_layer(config)] if config is not None else []
    cfg = merge_layers(
        compose("iterate/toy", [f"demo@_global_={size}"]),
        [*layers, *dotlist_layers(overrides)],  # --set wins over the file
        open_keys=("world.teacher",),
        hint="(see conf/iterate/toy.yaml, conf/demo/full.yaml)",
    )
    check_settings(cfg)
    return cfg


def check_settings(cfg: DictConfig) -> None:
    """Refuse bad ``iterate.*`` values with one line naming the key."""
    it = cfg.iterate
    for key, value, allowed in (
        ("prompts", it.prompts, PROMPTS),
        ("reference", it.reference, REFERENCES),
        ("generation.backend", it.generation.backend, BACKENDS),
    ):
        if value not in allowed:
            raise ValueError(f"iterate.{key} must be one of {'|'.join(allowed)}, got {value!r}")
    if not isinstance(it.rounds, int) or it.rounds < 1:
        raise ValueError(f"iterate.rounds must be an integer >= 1, got {it.rounds!r}")
    if is_real(cfg):
        for key in ("prompt_source", "feedback"):
            if it.get(key) is None:
                raise ValueError(f"iterate.start is set (real data): set iterate.{key} too (see {REAL_EXAMPLE})")
        for key, spec in (("prompt_source", it.prompt_source), ("win_rate.prompts", it.win_rate.prompts)):
            if spec is not None and not (isinstance(spec.get("n"), int) and spec.n >= 1):
                raise ValueError(f"iterate.{key}.n: prompts per round (or held-out prompts), an integer >= 1")
        if it.generation.backend == "local" and not (Path(str(it.start)) / "config.json").is_file():
            raise ValueError(f"iterate.start={it.start}: generation.backend=local loads a local model folder (with "
                             "config.json); download it first or use backend=vllm|openai")  # fmt: skip
        if not Path(str(it.feedback)).is_file():
            raise FileNotFoundError(f"iterate.feedback: feedback config file not found: {it.feedback}")
        if it.pool is not None and "dsft" not in it.pool:
            raise ValueError(f"iterate.pool: name the policy member 'dsft' (answered by the round r-1 policy), got "
                             f"{list(it.pool)}")  # fmt: skip
        return
    pool = list(it.pool if it.pool is not None else cfg.feedback.pool)
    if "dsft" not in pool:
        raise ValueError(f"iterate.pool: name the policy member 'dsft' (answered by the round r-1 policy), got {pool}")


def is_real(cfg: DictConfig) -> bool:
    """Real data: ``iterate.start`` names the dSFT model, so the toy world's stages are skipped."""
    return cfg.iterate.get("start") is not None


# --------------------------------------------------------------------------------------------------
# Round ingredients
# --------------------------------------------------------------------------------------------------
def prompt_seed(seed: int, round_: int, mode: str) -> int:
    """The toy-task draw seed of a round's prompts: round 1 (and every round with ``same``) is the demo's."""
    return 10_000 + seed if mode == "same" or round_ == 1 else 10_000 + seed + 1_000 * (round_ - 1)


def round_prompts(settings: DictConfig, seed: int, round_: int) -> list[dict[str, Any]]:
    """Round ``round_``'s prompts (``iterate.prompts`` = fresh | same): ``feedback.prompts`` toy train questions,
    or with real data :func:`source_slice` of ``iterate.prompt_source``.
    """
    from zephyr.demo import world_families
    from zephyr.feedback.complete import load_prompts

    if is_real(settings):
        it = settings.iterate
        return source_slice(OmegaConf.to_container(it.prompt_source, resolve=True), seed, round_, str(it.prompts),
                            int(it.rounds))  # fmt: skip
    spec = {"source": "toy_tasks", "n": int(settings.feedback.prompts), "families": world_families(settings)}
    return load_prompts({**spec, "seed": prompt_seed(seed, round_, str(settings.iterate.prompts))})


def source_slice(spec: dict[str, Any], seed: int, round_: int, mode: str, rounds: int) -> list[dict[str, Any]]:
    """Round ``round_``'s ``spec["n"]`` prompts of a prompt source: the whole source shuffled with ``seed``, then
    slice ``round_ - 1`` (``fresh``: no prompt seen twice over the ``rounds``) or slice 0 (``same``).

    Raises:
        ValueError: the source holds fewer prompts than ``rounds`` fresh slices need (one line, with the counts).
    """
    import random

    from zephyr.feedback.complete import load_prompts

    n = int(spec["n"])
    rows = load_prompts({**spec, "n": None})
    need = n * rounds if mode == "fresh" else n
    if len(rows) < need:
        where = spec.get("path") or spec.get("name")
        raise ValueError(
            f"iterate.prompt_source ({where}): {len(rows)} distinct prompts, {mode} prompts over {rounds} round(s) of "
            f"n={n} need {need}"
        )
    random.Random(seed).shuffle(rows)
    k = round_ - 1 if mode == "fresh" else 0
    return rows[k * n : (k + 1) * n]


def union_prompts(rounds: Sequence[Sequence[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Every round's prompts in order, each prompt once (the compute-matched round's prompt set)."""
    seen: set[str] = set()
    out = []
    for rows in rounds:
        for p in rows:
            if p["prompt_id"] not in seen:
                seen.add(p["prompt_id"])
                out.append(p)
    return out


def check_vllm() -> None:
    """Refuse ``iterate.generation.backend=vllm`` without CUDA or without vLLM installed (one line)."""
    if not torch.cuda.is_available():
        raise ValueError(
            "iterate.generation.backend=vllm needs a CUDA GPU and none is visible; use backend=local "
            "(CPU) or backend=openai with base_url"
        )
    try:
        import vllm  # noqa: F401
    except ImportError:
        raise ValueError("iterate.generation.backend=vllm: vLLM is not installed (pip install -e '.[vllm]')") from None


class VLLMBackend:
    """``ChatBackend`` over an in-process vLLM engine on an exported checkpoint (optional extra ``.[vllm]``, CUDA).

    Raises:
        ValueError: no CUDA device, or vLLM is not installed (one line each).
    """

    def __init__(self, path: str | os.PathLike, name: str, *, gpu_memory_utilization: float = 0.5):
        check_vllm()
        from vllm import LLM, SamplingParams

        self._params = SamplingParams
        self.llm = LLM(model=str(path), gpu_memory_utilization=float(gpu_memory_utilization))
        self.name, self.path = name, str(path)

    def chat_batch(self, batch, *, temperature=0.7, top_p=1.0, max_tokens=256, n=1, seed=None, stop=None) -> list[Any]:
        """One ``ChatResponse`` per conversation, ``n`` texts each (vLLM batches them itself)."""
        from zephyr.chat import ChatResponse

        params = self._params(
            temperature=temperature, top_p=top_p, max_tokens=max_tokens, n=n, seed=seed, stop=stop or None
        )
        outs = self.llm.chat([list(m) for m in batch], params, use_tqdm=False)
        return [
            ChatResponse(
                texts=[c.text.strip() for c in o.outputs],
                prompt_tokens=len(o.prompt_token_ids or []),
                completion_tokens=sum(len(c.token_ids) for c in o.outputs),
                model=self.name,
                finish_reasons=["length" if c.finish_reason == "length" else "stop" for c in o.outputs],
            )
            for o in outs
        ]

    def chat(self, messages, **kwargs) -> Any:
        """``chat_batch`` of one conversation."""
        return self.chat_batch([messages], **kwargs)[0]


def policy_backend(settings: DictConfig, model_dir: Path, name: str):
    """The backend answering for the pool's policy member (``iterate.generation.backend``)."""
    gen = settings.iterate.generation
    if gen.backend == "local":
        from zephyr.generation import LocalCheckpointBackend

        return LocalCheckpointBackend(model_dir, name, batch_size=int(settings.feedback.batch_size))
    if gen.backend == "openai":
        from zephyr.feedback.backends import OpenAIBackend

        if not gen.base_url:
            raise ValueError("iterate.generation.backend=openai needs iterate.generation.base_url (the endpoint)")
        return OpenAIBackend(
            model=str(gen.model or model_dir), base_url=str(gen.base_url), api_key_env=gen.api_key_env, name=name
        )
    return VLLMBackend(model_dir, name, gpu_memory_utilization=float(gen.gpu_memory_utilization))


def member_name(spec: Any) -> str | None:
    """A pool member's name as its backend will record it, read from its spec without building it."""
    if not isinstance(spec, dict):
        return None
    if spec.get("name"):
        return str(spec["name"])
    if spec.get("model"):
        return str(spec["model"])
    return Path(str(spec["path"])).name if spec.get("path") else None


def real_feedback(
    settings: DictConfig, rdir: Path, seed: int, prompts: list[dict[str, Any]], policy, console
) -> dict[str, float]:
    """Real data: completions from the ``iterate.feedback`` file's pool (the members ``iterate.pool`` names, the
    ``dsft`` one answered by ``policy``) judged by its judge -> ``rdir/feedback``; seconds of the two stages.

    Raises:
        ValueError: ``iterate.pool`` names a member the file's pool does not have.
        RuntimeError: no prompt was judged.
    """
    from zephyr.feedback.backends import build_backend, build_pool
    from zephyr.feedback.complete import FeedbackConfig, collect_feedback
    from zephyr.feedback.config import load_config

    fcfg = load_config(str(settings.iterate.feedback), [f"seed={seed}"])
    specs = OmegaConf.to_container(fcfg.pool, resolve=True)
    wanted = None if settings.iterate.pool is None else [x for x in settings.iterate.pool if x != "dsft"]
    if wanted is not None and isinstance(specs, list):  # not built: a member left out may be unreachable here
        known = [member_name(x) for x in specs]
        missing = [x for x in wanted if x not in known]
        if missing:
            raise ValueError(f"iterate.pool: {missing} not in the pool of {settings.iterate.feedback} ({known})")
        specs = [x for x in specs if member_name(x) in wanted]
    members = build_pool(specs) if specs else []
    if wanted is not None:
        members = [m for m in members if m.name in wanted]
    pool = [*(m for m in members if m.name != policy.name), policy]
    judge = build_backend(OmegaConf.to_container(fcfg.judge, resolve=True))
    summary = collect_feedback(prompts, pool, judge, rdir / "feedback", FeedbackConfig.from_config(fcfg))
    if summary["judged_prompts"] == 0:
        raise RuntimeError(f"{rdir / 'feedback'}: no prompt was judged ({summary['example_errors']})")
    console.print(
        f"{summary['judged_prompts']}/{len(prompts)} prompts judged, pool {[m.name for m in pool]}"
        + (f"; failed: {len(summary['failed_prompts'])} prompts (rerun to retry)" if summary["failed_prompts"] else "")
    )
    return {"sampling": summary["completions"]["seconds"], "judging": summary["judging"]["seconds"]}


def win_rate_questions(settings: DictConfig) -> list[dict[str, Any]]:
    """The held-out prompts of ``iterate.win_rate`` as single-turn MT-Bench questions; a prompt with a known
    answer (``correct_answers``) is judged against it (``pair-math-v1``, the reference-guided template).
    """
    from zephyr.feedback.complete import load_prompts

    spec = settings.iterate.win_rate.prompts
    if spec is None:
        return []
    out = []
    for p in load_prompts(OmegaConf.to_container(spec, resolve=True)):
        ref = next((a for a in p["correct_answers"] if a and a != "None"), None)
        out.append({"question_id": p["prompt_id"], "category": "math" if ref else "general",
                    "turns": [p["instruction"]], "reference": [ref or ""], "source": p["source"]})  # fmt: skip
    return out


def answer_set(settings: DictConfig, model: str | Path, name: str, questions, path: Path) -> dict[str, dict]:
    """``model``'s answers to ``questions`` (appended to ``path``, resumed from it), as ``win_rate`` reads them."""
    from zephyr.eval.mt_bench import generate_answers
    from zephyr.eval.win_rate import load_answer_set

    done = load_answer_set(path, questions) if path.is_file() else {}
    if all(str(q["question_id"]) in done for q in questions):  # the model is not even loaded
        return done
    backend = policy_backend(settings, Path(model), name)
    generate_answers(questions, backend, path, max_tokens=int(settings.iterate.win_rate.max_tokens), progress=False)
    return load_answer_set(path, questions)


def round_win_rate(settings: DictConfig, rdir: Path, export: Path, name: str, questions, baseline, judge):
    """The round's policy against the start model on the held-out prompts, both orders; per prompt ``source``."""
    from zephyr.eval.win_rate import win_rate
    from zephyr.feedback.store import read_jsonl

    answers = answer_set(settings, export, name, questions, rdir / "win_rate" / "answers.jsonl")
    judgments = rdir / "win_rate" / "judgments.jsonl"
    result = win_rate(answers, baseline, judge, name_a=name, name_b="dsft", out_path=judgments)
    source = {q["question_id"]: q["source"] for q in questions}
    by: dict[str, list[float]] = {}
    for r in read_jsonl(judgments):
        if r["preference"] is not None:
            by.setdefault(source[r["id"]], []).append(r["preference"])
    return {**result, "by_source": {k: sum(v) / len(v) for k, v in sorted(by.items())}}


def train_overrides(settings: DictConfig, out: Path, seed: int, round_: int) -> list[str]:
    """Overrides every training run of the loop gets: the demo's, ``+iterate.round`` and W&B when enabled."""
    quiet = [o for o in QUIET_TRAINING if not (settings.iterate.wandb and o == "logger=none")]
    logger = ["logger=wandb"] if settings.iterate.wandb else []
    return [f"paths.root_dir={out}", f"seed={seed}", *quiet, *logger, *settings.model, f"+iterate.round={round_}"]


@contextmanager
def wandb_run(settings: DictConfig, group: str, name: str):
    """Set ``WANDB_RUN_GROUP`` (unless the user set it) and ``WANDB_NAME`` for one training run when W&B is on."""
    if not settings.iterate.wandb:
        yield
        return
    saved = {k: os.environ.get(k) for k in ("WANDB_RUN_GROUP", "WANDB_NAME")}
    os.environ.setdefault("WANDB_RUN_GROUP", group)
    os.environ["WANDB_NAME"] = name
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def ddpo_overrides(settings: DictConfig, steps: int | None = None) -> list[str]:
    """The demo's ``ddpo`` overrides; with ``steps``, trained for exactly that many optimizer steps."""
    if steps is None:
        return list(settings.ddpo)
    keep = [o for o in settings.ddpo if not o.startswith(("trainer.max_steps=", "trainer.max_epochs="))]
    return [*keep, f"trainer.max_steps={steps}", "trainer.max_epochs=-1"]


def round_dpo_overrides(
    settings: DictConfig, rdir: Path, common: list[str], start: Path, reference: Path | None, steps: int | None
) -> list[str]:
    """The ``train`` overrides of a round's DPO run: its pairs, the ``ddpo`` list, the start policy and reference."""
    return [*common, "objective=dpo", "data=local_prefs", f"data.path={rdir / 'pairs.jsonl'}",
            *ddpo_overrides(settings, steps), f"model.path={start}",
            *reference_overrides(reference, rdir / "ref_cache"),
            f"paths.output_dir={rdir / 'ddpo'}", f"task_name={rdir.name}_ddpo"]  # fmt: skip


def reference_overrides(reference: Path | None, cache_dir: Path) -> list[str]:
    """``objective.reference`` overrides: the per-round cache folder, and a reference other than the start model."""
    over = [f"objective.reference.cache_dir={cache_dir}"]
    return [*over, f"objective.reference.path={reference}"] if reference is not None else over


def evaluate_dir(settings: DictConfig, model_dir: Path, tasks, tokenizer) -> dict[str, Any]:
    """:func:`zephyr.demo.evaluate` of an export folder, rendered as it was trained."""
    from zephyr.demo import evaluate
    from zephyr.models.export import load_prompt_format
    from zephyr.models.mistral import build_model

    model = build_model(path=str(model_dir))
    fmt = load_prompt_format(model_dir)["insert_empty_system"]
    return evaluate(model, tokenizer, tasks, settings, insert_empty_system=fmt)


# --------------------------------------------------------------------------------------------------
# One round
# --------------------------------------------------------------------------------------------------
def run_round(
    settings: DictConfig,
    rdir: Path,
    *,
    seed: int,
    round_: int,
    prompts: list[dict[str, Any]],
    start: Path,
    start_name: str,
    reference: Path | None,
    common: list[str],
    steps: int | None,
    evaluation: tuple[Any, Any],
    group: str,
    console,
) -> dict[str, Any]:
    """Feedback, binarize, dDPO and eval in ``rdir`` (each stage reused when finished); the round's summary.

    Args:
        settings: the loop's settings.
        rdir: the round's folder.
        seed: the run's seed.
        round_: the round number (binarize seed, messages).
        prompts: the round's prompts.
        start: the policy the round starts from; it answers for the pool's ``dsft`` member as ``start_name``.
        start_name: the policy's name in the feedback rows.
        common: the training overrides (:func:`train_overrides`).
        group: the W&B group.
        console: rich console.
        reference: the DPO reference when it is not ``start`` (``None``: ``start``).
        steps: optimizer steps of the DPO run (``None``: the demo's ``ddpo`` schedule).
        evaluation: ``(held-out tasks, tokenizer)``.
    """
    from zephyr.demo import _feedback, _train
    from zephyr.feedback.binarize import binarize
    from zephyr.feedback.store import read_jsonl, write_jsonl

    rdir.mkdir(parents=True, exist_ok=True)
    stage = Stages(console, rdir / "stages.json")
    rows = rdir / "feedback" / "ultrafeedback.jsonl"
    if not (stage.reuse("sampling", rows) and stage.reuse("judging", rows)):
        clock: dict[str, float] = {}
        if settings.iterate.pool is not None:
            settings = OmegaConf.merge(settings, {"feedback": {"pool": list(settings.iterate.pool)}})
        judge = "the feedback judge" if is_real(settings) else "verifier judging"
        with stage("feedback", f"round {round_}: pool completions ({start_name} = policy) + {judge}"):
            policy = policy_backend(settings, start, start_name)
            if is_real(settings):
                clock.update(real_feedback(settings, rdir, seed, prompts, policy, console))
            else:
                _feedback(settings, rdir, seed, start, clock, console, prompts=prompts, policy=policy)
        total = stage.seconds.pop("feedback")
        judging = min(clock.get("judging", 0.0), total)
        stage.seconds["sampling"], stage.seconds["judging"] = round(total - judging, 2), round(judging, 2)
        stage.save()

    pairs_path = rdir / "pairs.jsonl"
    brep_path = rdir / "binarize.json"
    if not stage.reuse("binarize", pairs_path, brep_path):
        with stage("binarize", "chosen = best mean rating, rejected = a random other"):
            b = settings.binarize
            pairs, brep = binarize(
                read_jsonl(rows), criterion=b.criterion, rejected=b.rejected, ties=b.ties, seed=seed + round_
            )
            if not pairs:
                raise RuntimeError(f"{rdir / 'feedback'}: binarizing gave no pairs ({brep})")
            write_jsonl(pairs_path, pairs)
            brep_path.write_text(json.dumps({"pairs": len(pairs), **brep}, indent=2, default=str) + "\n")
    brep = json.loads(brep_path.read_text())
    console.print(f"{brep['pairs']} pairs; chosen from {brep.get('chosen_models')}")

    export = rdir / "ddpo" / "model"
    if not stage.reuse("ddpo", export / "config.json", rdir / "ddpo" / "metrics.json"):
        ref = "the dSFT model" if reference is not None else "the start policy"
        with stage("ddpo", f"round {round_}: DPO (+ NLL on chosen) from {start_name}, reference {ref}"):
            with wandb_run(settings, group, f"{rdir.name}-ddpo"):
                _train(round_dpo_overrides(settings, rdir, common, start, reference, steps))
    metrics = json.loads((rdir / "ddpo" / "metrics.json").read_text())

    name = f"round{round_}" if rdir.name.startswith("round_") else rdir.name
    if is_real(settings):
        scores = real_eval(settings, rdir, stage, export, name, evaluation, console)
    else:
        result_path = rdir / "eval.json"
        if not stage.reuse("eval", result_path):
            tasks, tokenizer = evaluation
            with stage("eval", f"greedy answers to {len(tasks)} held-out questions"):
                result = evaluate_dir(settings, export, tasks, tokenizer)
                result_path.write_text(json.dumps(result, indent=2) + "\n")
        result = json.loads(result_path.read_text())
        console.print(f"round {round_} ({rdir.name}): held-out accuracy {result['accuracy']:.3f}")
        scores = {
            "accuracy": round(result["accuracy"], 4),
            "per_family": {k: round(v, 4) for k, v in result["by_family"].items()},
        }
    names = REAL_ROUND_STAGES if is_real(settings) else ROUND_STAGES
    return {
        "round": round_,
        **scores,
        "pairs": int(brep["pairs"]),
        "stages": {k: stage.seconds.get(k, 0.0) for k in names},
        "dpo_steps": int(metrics.get("global_step", 0)),
        "chosen_models": brep.get("chosen_models"),
        "export": str(export),
    }


def real_eval(settings: DictConfig, rdir: Path, stage: Stages, export: Path, name: str, evaluation, console):
    """Real data: the ``win_rate`` stage of a round (``evaluation`` = (questions, start answers, judge) or
    ``None`` without held-out prompts); the round's ``accuracy`` (``None``), ``win_rate``, ``lc_win_rate`` and
    ``per_family`` (win rate per prompt ``source``).
    """
    if evaluation is None:
        return {"accuracy": None, "win_rate": None, "lc_win_rate": None, "per_family": {}}
    questions, baseline, judge = evaluation
    path = rdir / "win_rate.json"
    if not stage.reuse("win_rate", path):
        with stage("win_rate", f"{name} vs the start model on {len(questions)} held-out prompts, both orders"):
            path.write_text(json.dumps(round_win_rate(settings, rdir, export, name, questions, baseline, judge),
                                       indent=2) + "\n")  # fmt: skip
    res = json.loads(path.read_text())
    console.print(f"{name}: win rate vs the start model {res['win_rate']}, length-controlled {res['lc_win_rate']}")
    return {
        "accuracy": None,
        "win_rate": res["win_rate"],
        "lc_win_rate": res["lc_win_rate"],
        "per_family": {k: round(v, 4) for k, v in res["by_source"].items()},
    }


# --------------------------------------------------------------------------------------------------
# The loop
# --------------------------------------------------------------------------------------------------
def run_iterate(
    out: str | os.PathLike = "runs/iter",
    *,
    rounds: int | None = None,
    size: str = "full",
    seed: int | None = None,
    prompts: str | None = None,
    reference: str | None = None,
    config: str | os.PathLike | None = None,
    overrides: Sequence[str] = (),
) -> dict[str, Any]:
    """Run (or resume) the iterative dDPO loop in ``out``; writes ``report.json``, ``report.md``, ``accuracy.png``.

    Args:
        out: output folder.
        rounds: ``iterate.rounds`` (``None``: the settings').
        prompts: ``iterate.prompts``, fresh | same (``None``: the settings').
        reference: ``iterate.reference``, previous | sft (``None``: the settings').
        size: ``full`` or ``ci`` (the demo's reduced world).
        seed: the seed (default: the settings' ``seed``).
        config: a YAML file merged over ``conf/iterate/toy.yaml`` and the demo settings.
        overrides: dotlist overrides (``iterate.*`` and the demo's keys).

    Returns:
        The report written to ``<out>/report.json``.
    """
    from rich.console import Console

    from zephyr.demo import dsft_stages, heldout_tasks
    from zephyr.tokenizer import load_tokenizer

    flags = [f"iterate.{k}={v}" for k, v in (("rounds", rounds), ("prompts", prompts), ("reference", reference))]
    settings = load_iterate_settings(size, [*overrides, *(f for f in flags if not f.endswith("=None"))], config)
    settings.size_name = size
    if settings.get("threads"):
        torch.set_num_threads(int(settings.threads))
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("WANDB_MODE", "offline")
    if settings.iterate.generation.backend == "vllm":
        check_vllm()  # before the dSFT stage, not after it
    console = Console()
    seed = int(settings.seed if seed is None else seed)
    root = Path(out).resolve()
    root.mkdir(parents=True, exist_ok=True)
    group = f"iterate-{root.name}-seed{seed}"
    n_rounds = int(settings.iterate.rounds)
    console.rule(f"[bold magenta]iterative dDPO: {n_rounds} rounds, seed {seed} ({size})")
    (root / "settings.yaml").write_text(OmegaConf.to_yaml(settings))

    stage = Stages(console, root / "stages.json")
    if is_real(settings):
        dsft_model, evaluation = real_start(settings, root, stage, console)
        dsft_acc, heldout_n = None, len(evaluation[0]) if evaluation else 0
    else:
        common0 = train_overrides(settings, root, seed, 0)
        with wandb_run(settings, group, "dsft"):
            _, dsft_model, _ = dsft_stages(settings, root, seed, stage, common0, console)
        tasks, tokenizer = heldout_tasks(settings), load_tokenizer()
        dsft_eval = root / "dsft" / "eval.json"
        if not stage.reuse("eval_dsft", dsft_eval):
            with stage("eval_dsft", f"the dSFT model on {len(tasks)} held-out questions"):
                result = evaluate_dir(settings, dsft_model, tasks, tokenizer)
                dsft_eval.write_text(json.dumps(result, indent=2) + "\n")
        dsft_acc, evaluation, heldout_n = json.loads(dsft_eval.read_text())["accuracy"], (tasks, tokenizer), len(tasks)

    results, all_prompts = [], []
    start, start_name = dsft_model, "dsft"
    for r in range(1, n_rounds + 1):
        console.rule(f"[bold]round {r}/{n_rounds}[/]: policy = {start_name}")
        ps = round_prompts(settings, seed, r)
        all_prompts.append(ps)
        ref = dsft_model if settings.iterate.reference == "sft" and r > 1 else None
        res = run_round(
            settings, root / f"round_{r}", seed=seed, round_=r, prompts=ps, start=start, start_name=start_name,
            reference=ref, common=train_overrides(settings, root, seed, r), steps=None,
            evaluation=evaluation, group=group, console=console,
        )  # fmt: skip
        results.append(res)
        start, start_name = Path(res["export"]), f"round{r}"

    matched = None
    if settings.iterate.compute_matched:
        console.rule("[bold]compute-matched single round[/]: every round's prompts, the rounds' total DPO steps")
        matched = run_round(
            settings, root / "compute_matched", seed=seed, round_=1, prompts=union_prompts(all_prompts),
            start=dsft_model, start_name="dsft", reference=None, common=train_overrides(settings, root, seed, -1),
            steps=sum(x["dpo_steps"] for x in results), evaluation=evaluation, group=group, console=console,
        )  # fmt: skip

    real = is_real(settings)
    keys = ["accuracy", "win_rate", "lc_win_rate"] if real else ["accuracy"]
    report: dict[str, Any] = {"rounds": [{k: x[k] for k in ("round", *keys, "per_family", "pairs", "stages")}
                                         for x in results]}  # fmt: skip
    for key, start_score in (("accuracy", None if dsft_acc is None else round(dsft_acc, 4)), ("win_rate", 0.5)):
        if key in keys:
            report[key] = {
                "dsft": start_score,
                "single_round": results[0][key],
                "single_round_compute_matched": matched[key] if matched else None,
                "final": results[-1][key],
            }
    report.update(heldout_n=heldout_n, seed=seed, **({"metric": "win_rate"} if real else {}))
    (root / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    details = {"settings": OmegaConf.to_container(settings, resolve=True), "rounds": results, "matched": matched}
    (root / "details.json").write_text(json.dumps(details, indent=2, default=str) + "\n")
    written = write_report(root, report, details)
    print_report(report, console)
    console.print("wrote " + ", ".join(str(p) for p in [root / "report.json", *written]))
    return report


def real_start(settings: DictConfig, root: Path, stage: Stages, console):
    """Real data: the start model (``iterate.start``: a local folder, made absolute, or a hub name) and the
    win-rate evaluation ``(questions, the start model's answers, judge)`` (``None`` without held-out prompts).
    """
    from zephyr.feedback.backends import build_backend
    from zephyr.feedback.config import load_config

    start = str(settings.iterate.start)
    dsft_model = Path(start).resolve() if Path(start).exists() else Path(start)
    questions = win_rate_questions(settings)
    if not questions:
        return dsft_model, None
    spec = settings.iterate.win_rate.judge or load_config(str(settings.iterate.feedback)).judge
    judge = build_backend(OmegaConf.to_container(spec, resolve=True))
    path = root / "start" / "answers.jsonl"
    if stage.reuse("answers_start", path):
        answers = answer_set(settings, dsft_model, "dsft", questions, path)  # complete: read, model not loaded
    else:
        with stage("answers_start", f"the start model answers {len(questions)} held-out prompts"):
            answers = answer_set(settings, dsft_model, "dsft", questions, path)
    return dsft_model, (questions, answers, judge)


# --------------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------------
def _fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:.3f}"


def write_report(root: Path, report: dict[str, Any], details: dict[str, Any]) -> list[Path]:
    """``report.md`` (per-round table, families or prompt sources, chosen models, stage seconds) and
    ``accuracy.png`` (held-out accuracy, or with real data the win rate against the start model).
    """
    from matplotlib.figure import Figure

    metric = report.get("metric", "accuracy")
    score = report[metric]
    label = (
        f"held-out accuracy (n={report['heldout_n']})"
        if metric == "accuracy"
        else f"win rate vs the start model (n={report['heldout_n']})"
    )
    xs = [x["round"] for x in report["rounds"]]
    fig = Figure(figsize=(6, 4))
    ax = fig.add_subplot()
    ys = [score["dsft"], *(x[metric] for x in report["rounds"])]
    ax.plot([0, *xs], [float("nan") if y is None else y for y in ys], marker="o", label="iterative dDPO")
    if score["single_round_compute_matched"] is not None:
        ax.axhline(score["single_round_compute_matched"], color="tab:red", ls="--", label="compute-matched 1 round")
    ax.set_xticks([0, *xs], ["dSFT", *(f"round {x}" for x in xs)])
    ax.set_ylabel(label)
    ax.set_ylim(0, 1)
    ax.legend()
    fig.tight_layout()
    png = root / "accuracy.png"
    fig.savefig(png, dpi=100)

    fams = sorted(set().union(*(x["per_family"] for x in report["rounds"])))
    kind = "accuracy" if metric == "accuracy" else "win rate"
    lines = [
        f"# Iterative dDPO (seed {report['seed']}, {report['heldout_n']} held-out prompts, {kind})",
        "",
        f"| model | {kind} | pairs | " + " | ".join(fams) + " | chosen from |",
        "|---|---|---|" + "---|" * len(fams) + "---|",
        f"| dSFT | {_fmt(score['dsft'])} | | " + " | " * len(fams) + " |",
    ]
    rows = list(zip(report["rounds"], details["rounds"]))
    if details.get("matched"):
        rows.append(({**details["matched"], "round": "compute-matched"}, details["matched"]))
    for x, d in rows:
        cells = " | ".join(_fmt(x["per_family"].get(f)) for f in fams)
        label = f"round {x['round']}" if isinstance(x["round"], int) else x["round"]
        lines.append(f"| {label} | {_fmt(x[metric])} | {x['pairs']} | {cells} | {d['chosen_models']} |")
    names = list(report["rounds"][0]["stages"])
    lines += ["", "Stage seconds per round:", "", "| round | " + " | ".join(names) + " |"]
    lines.append("|---|" + "---|" * len(names))
    for x in report["rounds"]:
        lines.append(f"| {x['round']} | " + " | ".join(f"{x['stages'][k]:.1f}" for k in names) + " |")
    lines += ["", "![accuracy](accuracy.png)", ""]
    md = root / "report.md"
    md.write_text("\n".join(lines))
    return [md, png]


def print_report(report: dict[str, Any], console) -> None:
    """Per-round accuracy (or win rate) table against dSFT and the compute-matched single round."""
    from rich.table import Table

    metric = report.get("metric", "accuracy")
    kind = "held-out accuracy" if metric == "accuracy" else "win rate vs the start model"
    t = Table(title=f"iterative dDPO, {kind} (n={report['heldout_n']}, seed {report['seed']})")
    for c in ("model", metric.replace("_", " "), "pairs", "seconds"):
        t.add_column(c, justify="left" if c == "model" else "right")
    score = report[metric]
    t.add_row("dSFT", _fmt(score["dsft"]), "", "")
    for x in report["rounds"]:
        t.add_row(f"round {x['round']}", _fmt(x[metric]), str(x["pairs"]), f"{sum(x['stages'].values()):.1f}")
    if score["single_round_compute_matched"] is not None:
        t.add_row("compute-matched 1 round", _fmt(score["single_round_compute_matched"]), "", "")
    console.print(t)
