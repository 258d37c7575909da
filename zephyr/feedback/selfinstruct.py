"""Self-Instruct bootstrapping (Wang et al. 2022, arXiv 2212.10560; yizhongw/self-instruct, Apache-2.0).

A teacher is shown "Come up with a series of tasks:" and a numbered list of 8 instructions (up to 2 from the
machine-generated pool, the rest seeds, shuffled) ending with ``"9."``; it continues the list. The reply is cut
on ``\\n<number>. ``, whitespace is collapsed and the first letter capitalised. An instruction is dropped when
its word count is <= 3 or > 150, when it contains a blacklisted whole word (image, graph, file, map, draw, plot,
"go to", ...: things a text model cannot do), when it starts with "Write a program", when its first character
is punctuation or non-ASCII, or when its ROUGE-L F-measure (``rouge_score``, ``rougeL``, no stemmer) with any
existing instruction (seeds + accepted so far) is above 0.7. Survivors join the pool and can appear in later
prompts. Everything is a knob of ``InstructionFilter``, so the toy world runs the same filter with its own
settings.
"""

from __future__ import annotations

import hashlib
import random
import re
import string
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rouge_score import rouge_scorer

from zephyr.chat import ChatBackend

BLACKLIST = (
    "image",
    "images",
    "graph",
    "graphs",
    "picture",
    "pictures",
    "file",
    "files",
    "map",
    "maps",
    "draw",
    "plot",
    "go to",
)
HEADER = "Come up with a series of tasks:\n"
# Self-Instruct's davinci settings; stop strings end the list before item 16.
GEN = {"temperature": 0.7, "top_p": 0.5, "max_tokens": 1024, "stop": ["\n\n", "\n16", "16.", "16 ."]}


def encode_prompt(instructions: Sequence[str]) -> str:
    """``"Come up with a series of tasks:\\n1. ...\\n...\\n8. ...\\n9."`` for the teacher to continue."""
    cleaned = [re.sub(r"\s+", " ", ins).strip().rstrip(":") for ins in instructions]
    body = "".join(f"{i}. {ins}\n" for i, ins in enumerate(cleaned, 1))
    return f"{HEADER}{body}{len(cleaned) + 1}."


def parse_instructions(reply: str, *, truncated: bool = False) -> list[str]:
    """The new instructions in a continuation of the numbered list.

    Args:
        reply: the teacher's text (the continuation after ``"9."``; a chat model may repeat ``"9."``).
        truncated: the reply hit ``max_tokens``: its last item is cut off and is dropped.

    Returns:
        Instructions with whitespace collapsed and the first letter capitalised, empty ones removed.
    """
    text = reply.strip()
    text = re.sub(r"^\d+\s?\.\s*", "", text)  # a chat model may echo the "9." it was asked to continue
    parts = re.split(r"\n\s*\d+\s?\.\s", text)
    out = []
    for p in parts:
        p = re.sub(r"\s+", " ", p).strip()
        if p:
            out.append(p[0].upper() + p[1:])
    if truncated and out:
        out = out[:-1]
    return out


@dataclass
class InstructionFilter:
    """The Self-Instruct filters; ``reason(text)`` names the first that fires (``None`` = keep).

    Attributes:
        min_words: keep only more than this many words (Self-Instruct: more than 3).
        max_words: keep only at most this many words (150).
        blacklist: whole words or phrases, matched case-insensitively.
        banned_prefixes: case-insensitive prefixes ("Write a program").
        rouge_threshold: drop when ROUGE-L F1 with any existing instruction is above it; ``None`` disables.
    """

    min_words: int = 3
    max_words: int = 150
    blacklist: Sequence[str] = BLACKLIST
    banned_prefixes: Sequence[str] = ("Write a program",)
    rouge_threshold: float | None = 0.7
    existing: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
        self._patterns = [re.compile(rf"\b{re.escape(w)}\b", re.I) for w in self.blacklist]

    def max_similarity(self, text: str) -> tuple[float, list[tuple[str, float]]]:
        """Highest ROUGE-L F1 against existing instructions, and the 10 most similar ``(instruction, f1)``."""
        scores = [(e, self._scorer.score(e, text)["rougeL"].fmeasure) for e in self.existing]
        scores.sort(key=lambda x: -x[1])
        return (scores[0][1] if scores else 0.0), scores[:10]

    def reason(self, text: str) -> str | None:
        words = text.split()
        if len(words) <= self.min_words:
            return "too_short"
        if len(words) > self.max_words:
            return "too_long"
        if any(p.search(text) for p in self._patterns):
            return "blacklist"
        if any(text.lower().startswith(b.lower()) for b in self.banned_prefixes):
            return "banned_prefix"
        if text[0] in string.punctuation:
            return "punctuation_start"
        if not text[0].isascii():
            return "non_ascii_start"
        if self.rouge_threshold is not None and self.existing:
            if self.max_similarity(text)[0] > self.rouge_threshold:
                return "rouge"
        return None

    def add(self, text: str) -> None:
        self.existing.append(text)


def filter_instructions(candidates: Iterable[str], flt: InstructionFilter) -> tuple[list[str], dict[str, int]]:
    """Apply ``flt`` in order, adding each survivor to its pool (so later candidates are compared with it).

    Returns:
        ``(kept, counts of drop reasons)``.
    """
    kept, reasons = [], {}
    for c in candidates:
        r = flt.reason(c)
        if r is None:
            kept.append(c)
            flt.add(c)
        else:
            reasons[r] = reasons.get(r, 0) + 1
    return kept, reasons


def bootstrap(
    seeds: Sequence[str],
    teacher: ChatBackend,
    n_target: int,
    *,
    flt: InstructionFilter | None = None,
    existing_machine: Sequence[str] = (),
    num_prompt_instructions: int = 8,
    num_machine: int = 2,
    requests_per_round: int = 5,
    max_rounds: int = 1000,
    workers: int = 4,
    seed: int = 0,
    gen: dict[str, Any] | None = None,
    on_accept=None,
) -> tuple[list[str], dict[str, int]]:
    """Grow a pool of machine-written instructions from ``seeds`` until ``n_target`` are accepted.

    Args:
        seeds: human-written seed instructions.
        teacher: backend that continues the numbered list.
        n_target: number of machine instructions wanted (including ``existing_machine``).
        flt: filters (its pool is filled with seeds and ``existing_machine``).
        existing_machine: instructions accepted by an earlier, interrupted run.
        num_prompt_instructions: list length shown to the teacher (8).
        num_machine: at most this many shown items come from the machine pool (2).
        requests_per_round: teacher calls per round (run in parallel).
        max_rounds: stop after this many rounds even if the target is not reached.
        workers: parallel teacher calls.
        seed: seed of the sampling of shown instructions.
        gen: generation settings (default Self-Instruct's ``GEN``).
        on_accept: ``f(instruction)`` called for each accepted instruction (e.g. a store write).

    Returns:
        ``(machine instructions, counts of drop reasons)``.
    """
    if len(seeds) < 1:
        raise ValueError("self-instruct needs at least one seed instruction")
    flt = flt or InstructionFilter()
    for s in list(seeds) + list(existing_machine):
        flt.add(s)
    machine = list(existing_machine)
    reasons: dict[str, int] = {}
    rng = random.Random(seed)
    gen = dict(gen or GEN)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for _ in range(max_rounds):
            if len(machine) >= n_target:
                break
            prompts = []
            for _ in range(requests_per_round):
                shown = rng.sample(machine, min(num_machine, len(machine)))
                shown += rng.sample(list(seeds), min(num_prompt_instructions - len(shown), len(seeds)))
                rng.shuffle(shown)
                prompts.append(encode_prompt(shown))
            call_seed = rng.randrange(2**31)
            resps = list(
                pool.map(
                    lambda ps, base=call_seed: teacher.chat(
                        [{"role": "user", "content": ps[1]}], seed=base + ps[0], **gen
                    ),
                    enumerate(prompts),
                )
            )
            for r in resps:
                for text, reason in zip(r.texts, r.finish_reasons or ["stop"] * len(r.texts)):
                    cands = parse_instructions(text, truncated=reason == "length")
                    kept, why = filter_instructions(cands, flt)
                    for k, v in why.items():
                        reasons[k] = reasons.get(k, 0) + v
                    for k in kept:
                        if len(machine) < n_target:
                            machine.append(k)
                            if on_accept:
                                on_accept(k)
    return machine, reasons


def make_filter(spec: dict[str, Any] | None) -> InstructionFilter | None:
    """An ``InstructionFilter`` from a config mapping (``None`` = no filtering)."""
    if spec is None:
        return None
    known = {"min_words", "max_words", "blacklist", "banned_prefixes", "rouge_threshold"}
    unknown = sorted(set(spec) - known)
    if unknown:
        raise ValueError(f"instruction filter: unknown keys {unknown}; known {sorted(known)}")
    return InstructionFilter(**{k: (tuple(v) if isinstance(v, list) else v) for k, v in spec.items()})


def read_seed_tasks(path: str | Path) -> list[str]:
    """Instructions of a Self-Instruct seed file (JSONL with an ``instruction`` field per line)."""
    from zephyr.feedback.store import read_jsonl

    out = []
    for i, row in enumerate(read_jsonl(path), start=1):
        if not isinstance(row.get("instruction"), str) or not row["instruction"].strip():
            raise ValueError(f"{path}:{i}: a seed task needs a non-empty 'instruction'")
        out.append(row["instruction"].strip())
    return out


def collect_instructions(
    spec: dict[str, Any],
    teacher: ChatBackend,
    out_dir: str | Path,
    *,
    workers: int = 4,
    seed: int = 0,
) -> tuple[list[str], dict[str, Any]]:
    """The opening instructions of the dSFT dialogues, from the source ``spec["source"]``.

    Sources: ``toy_tasks`` (``n``, ``seed``, ``split``, ``families``: toy-world questions), ``jsonl`` (``path``,
    ``field``, ``n``), ``self_instruct`` (``seed_tasks`` file, ``n`` machine instructions; resumable through
    ``instructions.jsonl``). Every source then passes through ``spec["filter"]`` (``null`` = none); the
    self-instruct source filters while bootstrapping (against seeds + accepted).

    Returns:
        ``(instructions, report)``.
    """
    source = spec.get("source", "toy_tasks")
    flt = make_filter(spec.get("filter"))
    n = int(spec.get("n", 100))
    report: dict[str, Any] = {"source": source}
    if source == "self_instruct":
        from zephyr.feedback.backends import redact
        from zephyr.feedback.store import ResultStore

        if not spec.get("seed_tasks"):
            raise ValueError("instructions: source 'self_instruct' needs seed_tasks (a JSONL file)")
        seeds = read_seed_tasks(spec["seed_tasks"])
        with ResultStore(Path(out_dir) / "instructions.jsonl", redact=redact) as store:
            previous = [v["instruction"] for _, v in sorted(store.items(), key=lambda kv: kv[1]["index"])]

            def accept(text: str) -> None:
                store.put(
                    (hashlib.sha256(text.encode()).hexdigest(), "instruction"),
                    {"instruction": text, "index": len(store)},
                )

            machine, reasons = bootstrap(
                seeds,
                teacher,
                n,
                flt=flt
                or InstructionFilter(
                    rouge_threshold=None, min_words=0, max_words=10**9, blacklist=(), banned_prefixes=()
                ),
                existing_machine=previous,
                workers=workers,
                seed=seed + len(previous),
                max_rounds=int(spec.get("max_rounds", 1000)),
                on_accept=accept,
            )
        report.update(seeds=len(seeds), resumed=len(previous), generated=len(machine), dropped=reasons)
        return machine, report
    if source == "toy_tasks":
        from zephyr.toy.tasks import sample_tasks

        fams = spec.get("families")
        tasks = sample_tasks(n, int(spec.get("seed", seed)), split=spec.get("split", "train"), families=fams)
        cands = [t.question for t in tasks]
    elif source == "jsonl":
        from zephyr.feedback.store import read_jsonl

        key = spec.get("field", "prompt")
        rows = read_jsonl(spec["path"])
        cands = []
        for i, r in enumerate(rows, start=1):
            if key not in r:
                raise ValueError(f"{spec['path']}:{i}: no field {key!r}")
            cands.append(r[key])
        cands = cands[:n]
    else:
        raise ValueError(f"instructions: unknown source {source!r} (toy_tasks | jsonl | self_instruct)")
    # exact duplicates are dropped first (they would share a prompt_id)
    seen: set[str] = set()
    uniq = [c for c in cands if not (c in seen or seen.add(c))]
    report["duplicates"] = len(cands) - len(uniq)
    if flt is None:
        return uniq, report
    kept, reasons = filter_instructions(uniq, flt)
    report["dropped"] = reasons
    return kept, report
