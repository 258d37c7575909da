"""AI-feedback collection: completions from a model pool, then judging, resumable at every row.

Stage 1 (completions): for each prompt, ``models_per_prompt`` pool members are sampled (seeded per prompt, as
UltraFeedback sampled 4 of 17 models; ``None`` = every member) and each writes one completion under a sampled
principle system prompt. Rows go to ``completions.jsonl`` keyed by ``(prompt_id, model)``.
Stage 2 (judging): every prompt whose completions are all present is judged (``judge.judge_prompt``) and its
raw ``openbmb/UltraFeedback`` row goes to ``judgements.jsonl`` keyed by ``(prompt_id, "judge")``.
Finally ``ultrafeedback.jsonl`` is exported from the judged rows, one row per prompt, in prompt order.

A backend with ``chat_batch`` (a local checkpoint) gets its prompts in chunks of ``batch_size`` per call.
Re-running the same command skips finished rows and retries recorded failures.
"""

from __future__ import annotations

import hashlib
import json
import random
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from zephyr.chat import ChatBackend
from zephyr.feedback.backends import redact
from zephyr.feedback.judge import judge_prompt
from zephyr.feedback.rubric import PRINCIPLE_PROMPTS
from zephyr.feedback.runner import Job, run_jobs
from zephyr.feedback.store import ResultStore, read_jsonl, write_jsonl


def prompt_id_of(text: str) -> str:
    """SHA-256 hex of the prompt text (the H4 datasets' ``prompt_id``)."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _seed_of(*parts: Any) -> int:
    return int.from_bytes(hashlib.sha256(":".join(map(str, parts)).encode()).digest()[:4], "big")


@dataclass
class FeedbackConfig:
    """Knobs of ``collect_feedback``: the ``feedback:`` section of a feedback config plus its top-level ``seed``,
    ``workers``, ``progress`` and ``fsync_interval``. Build it with :meth:`from_config`; the defaults live only
    in ``conf/feedback/toy.yaml``.
    """

    models_per_prompt: int | None
    seed: int
    workers: int
    batch_size: int
    judge_retries: int
    critique: bool
    world_knowledge: bool
    principles: dict[str, float] | None
    completion_gen: dict[str, Any]
    judge_gen: dict[str, Any] | None
    critique_gen: dict[str, Any] | None
    progress: bool
    fsync_interval: float

    @classmethod
    def from_config(cls, cfg: Any = None, **overrides: Any) -> FeedbackConfig:
        """From a loaded feedback config (default: ``conf/feedback/toy.yaml``), then ``overrides`` by field."""
        from omegaconf import OmegaConf

        from zephyr.feedback.config import load_config

        cfg = load_config() if cfg is None else cfg
        f = OmegaConf.to_container(cfg.feedback, resolve=True)
        values = {k: f[k] for k in (x.name for x in fields(cls)) if k in f}
        values.update({k: cfg[k] for k in ("seed", "workers", "progress", "fsync_interval")})
        values.update(overrides)
        return cls(**values)


def load_prompts(spec: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Prompts to collect feedback on, as ``{prompt_id, instruction, source, correct_answers, incorrect_answers}``.

    ``spec.source``: ``toy_tasks`` (``n``, ``seed``, ``split``, ``families``) draws toy-world questions;
    ``jsonl`` (``path``, ``field`` default ``prompt``, ``n`` optional) reads a file, e.g. ultrachat_200k rows;
    ``hub`` (``name``, ``split`` default ``train``, ``revision``, ``field``, ``n``) loads a Hugging Face dataset
    by name (``datasets.load_dataset``), e.g. ``HuggingFaceH4/ultrafeedback_binarized`` split ``train_prefs``.

    Raises:
        ValueError: unknown source, or a row without the field (or with an empty one), naming file/dataset and row.
    """
    source = spec.get("source", "toy_tasks")
    if source == "toy_tasks":
        from zephyr.toy.tasks import sample_tasks

        fams = spec.get("families")
        tasks = sample_tasks(
            int(spec.get("n", 100)),
            int(spec.get("seed", 1)),
            split=spec.get("split", "train"),
            families=list(fams) if fams else None,
        )
        rows, seen = [], set()
        for t in tasks:
            pid = prompt_id_of(t.question)
            if pid in seen:  # the same question twice would collide on its key
                continue
            seen.add(pid)
            rows.append(
                {
                    "prompt_id": pid,
                    "instruction": t.question,
                    "source": f"toy_{t.family}",
                    "correct_answers": [t.answer],
                    "incorrect_answers": ["None"],
                }
            )
        return rows
    if source == "jsonl":
        path = spec.get("path")
        if not path:
            raise ValueError("prompts: source 'jsonl' needs a path")
        return _prompt_rows(enumerate(read_jsonl(path), start=1), spec, str(path), Path(path).stem)
    if source == "hub":
        from zephyr.data.io import load_hub

        name = spec.get("name")
        if not name:
            raise ValueError("prompts: source 'hub' needs a dataset name (e.g. HuggingFaceH4/ultrafeedback_binarized)")
        split = str(spec.get("split", "train"))
        rows = load_hub(str(name), split, spec.get("revision"), None)
        return _prompt_rows(enumerate(rows, start=1), spec, f"dataset {name!r} (split {split!r})", str(name))
    raise ValueError(f"prompts: unknown source {source!r} (toy_tasks | jsonl | hub)")


def _prompt_rows(numbered, spec: Mapping[str, Any], where: str, default_source: str) -> list[dict[str, Any]]:
    """Prompt rows from ``(row number, row)`` pairs: the text in ``spec.field`` (default ``prompt``), each
    ``prompt_id`` once (the row's own, else a hash of the text), at most ``spec.n`` rows.
    """
    key = spec.get("field", "prompt")
    rows, seen = [], set()
    for i, r in numbered:
        if key not in r:
            raise ValueError(f"{where}:{i}: no field {key!r}")
        text = r[key]
        if not isinstance(text, str) or not text.strip():
            raise ValueError(f"{where}:{i}: field {key!r} is not a non-empty string")
        pid = r.get("prompt_id") or prompt_id_of(text)
        if pid in seen:
            continue
        seen.add(pid)
        rows.append(
            {
                "prompt_id": pid,
                "instruction": text,
                "source": r.get("source") or default_source,
                "correct_answers": list(r.get("correct_answers") or ["None"]),
                "incorrect_answers": list(r.get("incorrect_answers") or ["None"]),
            }
        )
        if spec.get("n") and len(rows) >= int(spec["n"]):
            break
    return rows


def sample_models(prompt_id: str, names: Sequence[str], k: int | None, seed: int) -> list[str]:
    """The pool members answering ``prompt_id``: ``k`` sampled without replacement (seeded), or all."""
    if k is None or k >= len(names):
        return list(names)
    if k < 2:
        raise ValueError(f"models_per_prompt must be >= 2 to form pairs, got {k}")
    return sorted(random.Random(_seed_of("models", seed, prompt_id)).sample(list(names), k), key=list(names).index)


def sample_principle(prompt_id: str, model: str, mix: Mapping[str, float] | None, seed: int) -> tuple[str, str]:
    """``(principle, custom_system_prompt)`` for one completion; no mix means plain helpfulness, no system prompt."""
    if not mix:
        return "helpfulness", ""
    unknown = [p for p in mix if p not in PRINCIPLE_PROMPTS]
    if unknown:
        raise ValueError(f"principles: unknown {unknown}; known {sorted(PRINCIPLE_PROMPTS)}")
    rng = random.Random(_seed_of("principle", seed, prompt_id, model))
    names = list(mix)
    principle = rng.choices(names, weights=[float(mix[p]) for p in names])[0]
    return principle, PRINCIPLE_PROMPTS[principle]


def _messages(instruction: str, system: str) -> list[dict[str, str]]:
    msgs = [{"role": "system", "content": system}] if system else []
    return msgs + [{"role": "user", "content": instruction}]


def _completion_jobs(prompts, pool: Sequence[ChatBackend], cfg: FeedbackConfig) -> list[Job]:
    names = [m.name for m in pool]
    by_name = {m.name: m for m in pool}
    wanted: dict[str, list[dict]] = {n: [] for n in names}
    for p in prompts:
        for model in sample_models(p["prompt_id"], names, cfg.models_per_prompt, cfg.seed):
            principle, system = sample_principle(p["prompt_id"], model, cfg.principles, cfg.seed)
            wanted[model].append({**p, "principle": principle, "custom_system_prompt": system})
    gen = dict(cfg.completion_gen)
    jobs: list[Job] = []
    for model, items in wanted.items():
        backend = by_name[model]

        def record(item, text, usage, model=model):
            return {
                "model": model,
                "principle": item["principle"],
                "custom_system_prompt": item["custom_system_prompt"],
                "response": text,
                "usage": usage,
            }

        if hasattr(backend, "chat_batch"):
            for start in range(0, len(items), cfg.batch_size):
                chunk = items[start : start + cfg.batch_size]

                def run_batch(chunk=chunk, backend=backend, record=record, model=model):
                    seed = _seed_of("complete", cfg.seed, model, chunk[0]["prompt_id"])
                    msgs = [_messages(it["instruction"], it["custom_system_prompt"]) for it in chunk]
                    resps = backend.chat_batch(msgs, seed=seed, n=1, **gen)
                    return [
                        record(
                            it, r.texts[0], {"prompt_tokens": r.prompt_tokens, "completion_tokens": r.completion_tokens}
                        )
                        for it, r in zip(chunk, resps)
                    ]

                jobs.append(Job([(it["prompt_id"], model) for it in chunk], run_batch))
        else:
            for it in items:

                def run_one(it=it, backend=backend, record=record, model=model):
                    seed = _seed_of("complete", cfg.seed, model, it["prompt_id"])
                    r = backend.chat(_messages(it["instruction"], it["custom_system_prompt"]), seed=seed, n=1, **gen)
                    usage = {"prompt_tokens": r.prompt_tokens, "completion_tokens": r.completion_tokens}
                    return [record(it, r.texts[0] if r.texts else "", usage)]

                jobs.append(Job([(it["prompt_id"], model)], run_one))
    return jobs


def world_knowledge_of(prompt: Mapping[str, Any]) -> str | None:
    """UltraFeedback's ``World Knowledge`` text from reference answers (``None`` when there are none)."""
    correct = [a for a in prompt.get("correct_answers") or [] if a != "None"]
    incorrect = [a for a in prompt.get("incorrect_answers") or [] if a != "None"]
    if not correct and not incorrect:
        return None
    text = f"a subset of correct answers: {correct}"
    if incorrect:
        text += f"\na subset of incorrect answers: {incorrect}"
    return text


def backend_stats(backends: Sequence[ChatBackend]) -> dict[str, dict[str, int]]:
    """``{name: stats}`` of the backends that count their calls (``OpenAIBackend.stats``: calls, retries,
    errors, bad_bodies = 200 responses whose body did not parse and were retried or failed); counts of this run.
    """
    out: dict[str, dict[str, int]] = {}
    for b in backends:
        stats = getattr(b, "stats", None)
        if isinstance(stats, dict):
            out[b.name] = dict(stats)
    return out


def collect_feedback(
    prompts: Sequence[Mapping[str, Any]],
    pool: Sequence[ChatBackend],
    judge: ChatBackend,
    out_dir: str | Path,
    cfg: FeedbackConfig | None = None,
) -> dict[str, Any]:
    """Run (or resume) both stages and export ``ultrafeedback.jsonl``.

    Args:
        prompts: rows from ``load_prompts``.
        pool: at least 2 backends with distinct names (UltraFeedback: 4 per prompt out of 17).
        judge: the judge backend.
        out_dir: folder for the stores, the export and ``feedback_summary.json``.
        cfg: knobs; defaults to ``FeedbackConfig.from_config()`` (``conf/feedback/toy.yaml``).

    Returns:
        The summary (also written to ``feedback_summary.json``): counts, failures, seconds, prompts/s, tokens.
    """
    cfg = cfg or FeedbackConfig.from_config()
    if len(pool) < 2:
        raise ValueError(f"the completion pool needs at least 2 models, got {len(pool)}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    names = [m.name for m in pool]
    with ResultStore(out / "completions.jsonl", redact=redact, fsync_interval=cfg.fsync_interval) as cstore:
        if cstore.torn_lines:
            print(f"{cstore.path}: ignored {cstore.torn_lines} torn line(s) from an interrupted run")
        s1 = run_jobs(
            _completion_jobs(prompts, pool, cfg),
            cstore,
            max_workers=cfg.workers,
            desc="completions",
            progress=cfg.progress,
        )
        completions = {k: v for k, v in cstore.items()}
        t1 = time.perf_counter()
        completion_failures = sorted(f"{k[0]}/{k[1]}" for k in cstore.failures)
    with ResultStore(out / "judgements.jsonl", redact=redact, fsync_interval=cfg.fsync_interval) as jstore:
        if jstore.torn_lines:
            print(f"{jstore.path}: ignored {jstore.torn_lines} torn line(s) from an interrupted run")
        jobs, blocked = [], 0
        for p in prompts:
            pid = p["prompt_id"]
            models = sample_models(pid, names, cfg.models_per_prompt, cfg.seed)
            comps = [completions.get((pid, m)) for m in models]
            if any(c is None for c in comps):
                blocked += 1
                continue

            def run_judge(p=p, comps=comps, models=models):
                wk = world_knowledge_of(p) if cfg.world_knowledge else None
                rows, tokens = judge_prompt(
                    judge,
                    prompt_id=p["prompt_id"],
                    instruction=p["instruction"],
                    completions=comps,
                    world_knowledge=wk,
                    retries=cfg.judge_retries,
                    seed=cfg.seed,
                    critique=cfg.critique,
                    aspect_gen=cfg.judge_gen,
                    critique_gen=cfg.critique_gen,
                )
                row = {
                    "source": p.get("source", ""),
                    "instruction": p["instruction"],
                    "models": models,
                    "completions": rows,
                    "correct_answers": list(p.get("correct_answers") or ["None"]),
                    "incorrect_answers": list(p.get("incorrect_answers") or ["None"]),
                    "prompt_id": p["prompt_id"],
                    "usage": {"prompt_tokens": tokens, "completion_tokens": 0},
                }
                return [row]

            jobs.append(Job([(pid, "judge")], run_judge))
        s2 = run_jobs(jobs, jstore, max_workers=cfg.workers, desc="judging", progress=cfg.progress)
        judged = [jstore.get((p["prompt_id"], "judge")) for p in prompts]
        failures = dict(jstore.failures)
    rows = [{k: v for k, v in r.items() if k not in ("usage", "prompt_id")} for r in judged if r is not None]
    write_jsonl(out / "ultrafeedback.jsonl", rows)
    seconds = time.perf_counter() - t0
    calls = backend_stats([*pool, judge])
    summary = {
        "prompts": len(prompts),
        "pool": names,
        "completions": {
            "done_now": s1.done,
            "skipped": s1.skipped,
            "failed_now": s1.failed,
            "tokens": s1.tokens,
            "seconds": round(t1 - t0, 3),
        },
        "judging": {
            "done_now": s2.done,
            "skipped": s2.skipped,
            "failed_now": s2.failed,
            "tokens": s2.tokens,
            "seconds": round(seconds - (t1 - t0), 3),
        },
        "judged_prompts": len(rows),
        "blocked_by_missing_completions": blocked,
        "failed_prompts": sorted(k[0] for k in failures),
        "failed_completions": completion_failures,
        "example_errors": (s1.errors + s2.errors)[:5],
        "backend_calls": calls,
        "bad_bodies": sum(c.get("bad_bodies", 0) for c in calls.values()),
        "seconds": round(seconds, 3),
        "prompts_per_s": round((s2.done / seconds) if seconds > 0 else 0.0, 3),
        "complete": len(rows) == len(prompts),
    }
    (out / "feedback_summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary
