"""MT-Bench-format evaluation: FastChat question/answer/judgment files, judge prompts, scoring and tables.

Follows FastChat's ``llm_judge`` (lm-sys/FastChat, Apache-2.0; Zheng et al. 2023, arXiv 2306.05685):

* Questions: ``{"question_id", "category", "turns": [q1, q2], "reference"?: [r1, r2]}`` per line.
* Answers: two turns, turn 2 conditioned on the model's own turn-1 answer, with FastChat's per-category
  temperatures (``TEMPERATURE_CONFIG``; below 1e-4 is greedy) and seed = choice index. Rows are
  ``{"question_id", "answer_id", "model_id", "choices": [{"index": 0, "turns": [a1, a2]}], "tstamp"}``.
* Single-answer grading: eight judge templates with FastChat's structure (names, block markers, output
  format) and instructions in our own words. Math, reasoning and coding use the reference-guided variants
  (turn 2 sees both reference turns). A rating is parsed from ``[[x]]`` with a ``[x]`` fallback; no match
  gives -1, which is excluded from the means and counted (``n_failed``), so a judge that stops following
  the format shows up in the table instead of silently shrinking it.
* Pairwise grading: every pair is judged twice with the positions swapped; a tie in game 1 or games that
  disagree count as a tie (FastChat ``show_result``). ``win_rate = win / n`` and
  ``win_rate_adjusted = (win + 0.5 * tie) / n``; judge errors are counted and left out of ``n``.

Judges are any ``zephyr.chat.ChatBackend``: an OpenAI-compatible endpoint, a local checkpoint, or the
offline ``zephyr.toy.mt_bench_judge.MTBenchVerifierJudge``.
"""

from __future__ import annotations

import os
import re
import time
import uuid
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from zephyr.chat import ChatBackend
from zephyr.data.io import read_jsonl_numbered
from zephyr.fileio import append_jsonl, cut_torn_tail

TEMPERATURE_CONFIG = {
    "writing": 0.7,
    "roleplay": 0.7,
    "extraction": 0.0,
    "math": 0.0,
    "coding": 0.0,
    "reasoning": 0.0,
    "stem": 0.1,
    "humanities": 0.1,
}
DEFAULT_TEMPERATURE = 0.7  # any other category
NEED_REF_CATS = ("math", "reasoning", "coding", "arena-hard-200")
JUDGE_MAX_TOKENS = 2048
RATING_RE = re.compile(r"\[\[(\d+\.?\d*)\]\]")
RATING_RE_BACKUP = re.compile(r"\[(\d+\.?\d*)\]")
ERROR_JUDGMENT = "$ERROR$"


def default_question_file() -> Path:
    """The built-in question set (24 two-turn questions, 3 per MT-Bench category, written for this project)."""
    return Path(str(resources.files("zephyr") / "assets" / "mt_bench_toy" / "question.jsonl"))


# --------------------------------------------------------------------------------------------------
# Files
# --------------------------------------------------------------------------------------------------
def load_questions(path: str | os.PathLike | None = None) -> list[dict[str, Any]]:
    """Read a FastChat ``question.jsonl`` (default: the built-in set).

    Raises:
        ValueError: naming file and line for a missing/ill-typed ``question_id``, ``category`` or ``turns``,
            a ``reference`` whose length differs from ``turns``, or a duplicate id.
    """
    path = default_question_file() if path is None else Path(path)
    if not Path(path).is_file():
        raise FileNotFoundError(f"{path}: question file not found")
    questions, seen = [], set()
    for lineno, row in read_jsonl_numbered(path):
        where = f"{path}:{lineno}"
        qid = row.get("question_id")
        if not isinstance(qid, (int, str)) or isinstance(qid, bool):
            raise ValueError(f"{where}: 'question_id' must be an int or string")
        if qid in seen:
            raise ValueError(f"{where}: duplicate question_id {qid!r}")
        seen.add(qid)
        if not isinstance(row.get("category"), str):
            raise ValueError(f"{where}: 'category' must be a string")
        turns = row.get("turns")
        if not isinstance(turns, list) or not turns or not all(isinstance(t, str) and t.strip() for t in turns):
            raise ValueError(f"{where}: 'turns' must be a non-empty list of non-empty strings")
        ref = row.get("reference")
        if ref is not None and (not isinstance(ref, list) or len(ref) != len(turns)):
            raise ValueError(f"{where}: 'reference' must be a list with one answer per turn ({len(turns)})")
        questions.append(row)
    if not questions:
        raise ValueError(f"{path}: no questions")
    return questions


def load_answers(path: str | os.PathLike) -> dict[Any, dict[str, Any]]:
    """Read a FastChat model-answer file into ``{question_id: row}`` (the last row per id wins).

    Raises:
        ValueError: naming file and line for a row without ``question_id``, ``model_id`` or
            ``choices[0].turns`` (a list of strings).
    """
    out: dict[Any, dict[str, Any]] = {}
    for lineno, row in read_jsonl_numbered(path):
        where = f"{path}:{lineno}"
        if "question_id" not in row or "model_id" not in row:
            raise ValueError(f"{where}: answer rows need 'question_id' and 'model_id'")
        choices = row.get("choices")
        if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
            raise ValueError(f"{where}: 'choices' must be a non-empty list of {{index, turns}}")
        turns = choices[0].get("turns")
        if not isinstance(turns, list) or not all(isinstance(t, str) for t in turns):
            raise ValueError(f"{where}: 'choices[0].turns' must be a list of strings")
        out[row["question_id"]] = row
    return out


def answer_turns(row: dict[str, Any]) -> list[str]:
    """The answer texts of choice 0 of a FastChat answer row."""
    return row["choices"][0]["turns"]


def _append(path: Path, rows: Iterable[dict[str, Any]]) -> None:
    """Append rows durably (flush + fsync) the moment they exist: a crash or Ctrl-C loses no paid call."""
    append_jsonl(path, rows)


def _existing(path: Path | None) -> list[dict[str, Any]]:
    """Rows already in an append-only output file (a torn last line from a crash is cut off first)."""
    if path is None or not path.exists():
        return []
    cut_torn_tail(path)
    return [r for _, r in read_jsonl_numbered(path)]


# --------------------------------------------------------------------------------------------------
# Answer generation
# --------------------------------------------------------------------------------------------------
def generate_answers(
    questions: Sequence[dict[str, Any]],
    backend: ChatBackend,
    out_path: str | os.PathLike,
    *,
    model_id: str | None = None,
    max_tokens: int = 1024,
    system_prompt: str | None = None,
    progress: bool = True,
) -> dict[Any, dict[str, Any]]:
    """Answer every question (all turns) with ``backend`` and append FastChat answer rows to ``out_path``.

    Questions already answered in ``out_path`` are skipped (resume). Turn ``k`` sees the questions and the
    model's own answers of turns ``< k``.

    Args:
        questions: rows from ``load_questions``.
        backend: the model under evaluation.
        out_path: answer jsonl (created or appended).
        model_id: ``model_id`` written in the rows (default ``backend.name``).
        max_tokens: new-token budget per turn (FastChat: 1024).
        system_prompt: optional system turn put first.
        progress: show a rich progress bar.

    Returns:
        All answers in the file, ``{question_id: row}``.
    """
    from rich.progress import Progress

    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    cut_torn_tail(out)
    done = load_answers(out) if out.exists() else {}
    model_id = model_id or backend.name
    todo = [q for q in questions if q["question_id"] not in done]
    with Progress(disable=not progress, transient=True) as bar:
        task = bar.add_task(f"MT-Bench answers ({model_id})", total=len(todo))
        for q in todo:
            temperature = TEMPERATURE_CONFIG.get(q["category"], DEFAULT_TEMPERATURE)
            messages: list[dict[str, str]] = [{"role": "system", "content": system_prompt}] if system_prompt else []
            turns = []
            for turn in q["turns"]:
                messages.append({"role": "user", "content": turn})
                resp = backend.chat(messages, temperature=temperature, max_tokens=max_tokens, n=1, seed=0)
                text = resp.texts[0].strip() if resp.texts else ""
                turns.append(text)
                messages.append({"role": "assistant", "content": text})
            row = {
                "question_id": q["question_id"],
                "answer_id": uuid.uuid4().hex[:22],
                "model_id": model_id,
                "choices": [{"index": 0, "turns": turns}],
                "tstamp": time.time(),
            }
            _append(out, [row])
            done[q["question_id"]] = row
            bar.advance(task)
    return done


# --------------------------------------------------------------------------------------------------
# Judge prompts (FastChat's eight templates: same names, blocks and output formats; our wording)
# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class JudgePrompt:
    """One judge template: ``system_prompt`` plus ``prompt_template`` filled with ``str.format``."""

    name: str
    type: str  # "single" or "pairwise"
    system_prompt: str
    prompt_template: str
    output_format: str
    ref_based: bool
    multi_turn: bool


_SINGLE_INSTR = (
    "Act as an impartial judge and rate the quality of the answer an AI assistant gave to the user question "
    "shown below. Weigh how helpful, relevant, accurate and detailed the answer is, and its depth and "
    "creativity. Start with a brief explanation and be as objective as you can. After the explanation, "
    'give a rating from 1 to 10 written strictly in this format: "[[rating]]", for example: "Rating: [[5]]".'
)
_SINGLE_MATH_INSTR = (
    "Act as an impartial judge and rate the quality of the answer an AI assistant gave to the user question "
    "shown below. Judge correctness and helpfulness. You are given a reference answer and the assistant's "
    "answer: start by comparing the two, point out and correct any mistakes, and be as objective as you can. "
    'After the explanation, give a rating from 1 to 10 written strictly in this format: "[[rating]]", '
    'for example: "Rating: [[5]]".'
)
_SINGLE_MT_INSTR = (
    "Please act as an impartial judge of the answers an AI assistant gave in the conversation below. Weigh "
    "how helpful, relevant, accurate and detailed the answers are, and their depth and creativity. Rate "
    "only the assistant's answer to the second user question. Start with a brief explanation and be as "
    "objective as you can. After the explanation, give a rating from 1 to 10 written strictly in this format: "
    '"[[rating]]", for example: "Rating: [[5]]".\n\n'
)
_SINGLE_MATH_MT_INSTR = (
    "Please act as an impartial judge of the answers an AI assistant gave in the conversation below. Judge "
    "correctness and helpfulness. You are given a reference answer and the assistant's answers: compare "
    "them, point out and correct any mistakes, and rate only the assistant's answer to the second user "
    "question. Be as objective as you can. After the explanation, give a rating from 1 to 10 written strictly "
    'in this format: "[[rating]]", for example: "Rating: [[5]]".\n\n'
)
_PAIR_TAIL = (
    "Do not let the order in which the answers appear, their length or the assistants' names sway you. "
    "Start with a short comparison and explanation, then give your verdict strictly in this format: "
    '"[[A]]" if assistant A is better, "[[B]]" if assistant B is better, and "[[C]]" for a tie.'
)
_PAIR_INSTR = (
    "Please act as an impartial judge and compare the answers of two AI assistants to the user question "
    "shown below. Prefer the assistant that follows the user's instructions and answers the question better: "
    "weigh helpfulness, relevance, accuracy, depth, creativity and level of detail. " + _PAIR_TAIL
)
_PAIR_MATH_INSTR = (
    "Please act as an impartial judge and compare the answers of two AI assistants to the user question "
    "shown below. You are given a reference answer together with assistant A's and assistant B's answers. "
    "Decide which answer is more correct and helpful: compare both with the reference and point out any "
    "mistakes. " + _PAIR_TAIL
)
_PAIR_MT_INSTR = (
    "Please act as an impartial judge and compare the answers of two AI assistants in the conversations "
    "below. Judge only their answers to the second user question: weigh helpfulness, relevance, accuracy, "
    "depth, creativity and level of detail. " + _PAIR_TAIL
)
_PAIR_MATH_MT_INSTR = (
    "Please act as an impartial judge and compare the answers of two AI assistants in the conversations "
    "below. You are given a reference answer. Judge only their answers to the second user question, for "
    "correctness and helpfulness: compare both with the reference and point out any mistakes. " + _PAIR_TAIL
)


def _conversation(tag: str, prefix: str) -> str:
    return (
        f"<|The Start of Assistant {tag}'s Conversation with User|>\n\n"
        f"### User:\n{{question_1}}\n\n### Assistant {tag}:\n{{{prefix}_1}}\n\n"
        f"### User:\n{{question_2}}\n\n### Assistant {tag}:\n{{{prefix}_2}}\n\n"
        f"<|The End of Assistant {tag}'s Conversation with User|>"
    )


_REF_CONVERSATION = (
    "<|The Start of Reference Answer|>\n\n### User:\n{question_1}\n\n### Reference answer:\n{ref_answer_1}\n\n"
    "### User:\n{question_2}\n\n### Reference answer:\n{ref_answer_2}\n\n<|The End of Reference Answer|>\n\n\n"
)
_REF_BLOCK = "[The Start of Reference Answer]\n{ref_answer_1}\n[The End of Reference Answer]\n\n"
_PAIR_ANSWERS = (
    "[The Start of Assistant A's Answer]\n{answer_a}\n[The End of Assistant A's Answer]\n\n"
    "[The Start of Assistant B's Answer]\n{answer_b}\n[The End of Assistant B's Answer]"
)

JUDGE_PROMPTS: dict[str, JudgePrompt] = {
    p.name: p
    for p in [
        JudgePrompt(
            "single-v1",
            "single",
            "You are a helpful assistant.",
            "[Instruction]\n" + _SINGLE_INSTR + "\n\n[Question]\n{question}\n\n"
            "[The Start of Assistant's Answer]\n{answer}\n[The End of Assistant's Answer]",
            "[[rating]]",
            ref_based=False,
            multi_turn=False,
        ),
        JudgePrompt(
            "single-math-v1",
            "single",
            "You are a helpful assistant.",
            "[Instruction]\n" + _SINGLE_MATH_INSTR + "\n\n[Question]\n{question}\n\n" + _REF_BLOCK + ""
            "[The Start of Assistant's Answer]\n{answer}\n[The End of Assistant's Answer]",
            "[[rating]]",
            ref_based=True,
            multi_turn=False,
        ),
        JudgePrompt(
            "single-v1-multi-turn",
            "single",
            _SINGLE_MT_INSTR,
            _conversation("A", "answer"),
            "[[rating]]",
            ref_based=False,
            multi_turn=True,
        ),
        JudgePrompt(
            "single-math-v1-multi-turn",
            "single",
            _SINGLE_MATH_MT_INSTR,
            _REF_CONVERSATION + _conversation("A", "answer"),
            "[[rating]]",
            ref_based=True,
            multi_turn=True,
        ),
        JudgePrompt(
            "pair-v2",
            "pairwise",
            _PAIR_INSTR,
            "[User Question]\n{question}\n\n" + _PAIR_ANSWERS,
            "[[A]]",
            ref_based=False,
            multi_turn=False,
        ),
        JudgePrompt(
            "pair-v2-multi-turn",
            "pairwise",
            _PAIR_MT_INSTR,
            _conversation("A", "answer_a") + "\n\n\n" + _conversation("B", "answer_b"),
            "[[A]]",
            ref_based=False,
            multi_turn=True,
        ),
        JudgePrompt(
            "pair-math-v1",
            "pairwise",
            _PAIR_MATH_INSTR,
            "[User Question]\n{question}\n\n" + _REF_BLOCK + _PAIR_ANSWERS,
            "[[A]]",
            ref_based=True,
            multi_turn=False,
        ),
        JudgePrompt(
            "pair-math-v1-multi-turn",
            "pairwise",
            _PAIR_MATH_MT_INSTR,
            _REF_CONVERSATION + _conversation("A", "answer_a") + "\n\n\n" + _conversation("B", "answer_b"),
            "[[A]]",
            ref_based=True,
            multi_turn=True,
        ),
    ]
}


def needs_reference(question: dict[str, Any]) -> bool:
    """Reference-guided grading: math, reasoning and coding questions that carry a ``reference``."""
    return question["category"] in NEED_REF_CATS and bool(question.get("reference"))


def pick_prompt(kind: str, question: dict[str, Any], turn: int) -> JudgePrompt:
    """The template FastChat uses for ``kind`` ("single"/"pairwise"), this question's category and ``turn`` (1|2)."""
    ref = needs_reference(question)
    if kind == "single":
        name = {(False, 1): "single-v1", (True, 1): "single-math-v1"}.get((ref, turn))
        name = name or ("single-math-v1-multi-turn" if ref else "single-v1-multi-turn")
    else:
        name = {(False, 1): "pair-v2", (True, 1): "pair-math-v1"}.get((ref, turn))
        name = name or ("pair-math-v1-multi-turn" if ref else "pair-v2-multi-turn")
    return JUDGE_PROMPTS[name]


def single_prompt(question: dict[str, Any], answers: Sequence[str], turn: int) -> tuple[JudgePrompt, str]:
    """Fill the single-answer template for ``turn`` (1 or 2); returns ``(template, user_prompt)``."""
    tpl = pick_prompt("single", question, turn)
    q, ref = question["turns"], question.get("reference") or ["", ""]
    if turn == 1:
        fields = {"question": q[0], "answer": answers[0], "ref_answer_1": ref[0]}
    else:
        fields = {"question_1": q[0], "question_2": q[1], "answer_1": answers[0], "answer_2": answers[1]}
        fields.update(ref_answer_1=ref[0], ref_answer_2=ref[1])
    return tpl, tpl.prompt_template.format(**fields)


def pair_prompt(
    question: dict[str, Any], answers_a: Sequence[str], answers_b: Sequence[str], turn: int
) -> tuple[JudgePrompt, str]:
    """Fill the pairwise template for ``turn`` with assistant A's and B's answers; returns ``(template, prompt)``."""
    tpl = pick_prompt("pairwise", question, turn)
    q, ref = question["turns"], question.get("reference") or ["", ""]
    if turn == 1:
        fields = {"question": q[0], "answer_a": answers_a[0], "answer_b": answers_b[0], "ref_answer_1": ref[0]}
    else:
        fields = {"question_1": q[0], "question_2": q[1], "ref_answer_1": ref[0], "ref_answer_2": ref[1]}
        fields.update(answer_a_1=answers_a[0], answer_a_2=answers_a[1], answer_b_1=answers_b[0])
        fields.update(answer_b_2=answers_b[1])
    return tpl, tpl.prompt_template.format(**fields)


# --------------------------------------------------------------------------------------------------
# Parsing judge outputs
# --------------------------------------------------------------------------------------------------
def parse_rating(judgment: str) -> float:
    """The score in a single-answer judgment: ``[[x]]``, else ``[x]``, else -1 (FastChat's rule)."""
    m = RATING_RE.search(judgment) or RATING_RE_BACKUP.search(judgment)
    if not m:
        return -1.0
    try:
        return float(m.group(1))
    except ValueError:
        return -1.0


def parse_pair_verdict(judgment: str) -> str:
    """``"A"``, ``"B"``, ``"tie"`` or ``"error"``: the first of [[A]], [[B]], [[C]] checked in that order."""
    if "[[A]]" in judgment:
        return "A"
    if "[[B]]" in judgment:
        return "B"
    if "[[C]]" in judgment:
        return "tie"
    return "error"


def ask_judge(judge: ChatBackend, tpl: JudgePrompt, user_prompt: str) -> str:
    messages = [{"role": "system", "content": tpl.system_prompt}, {"role": "user", "content": user_prompt}]
    try:
        resp = judge.chat(messages, temperature=0.0, max_tokens=JUDGE_MAX_TOKENS, n=1)
    except (RuntimeError, ValueError, OSError) as e:  # a failed call is a judgment error, counted below
        return f"{ERROR_JUDGMENT} {type(e).__name__}: {e}"
    return resp.texts[0] if resp.texts else ERROR_JUDGMENT


# --------------------------------------------------------------------------------------------------
# Single-answer grading
# --------------------------------------------------------------------------------------------------
def judge_single(
    questions: Sequence[dict[str, Any]],
    answers: dict[Any, dict[str, Any]],
    judge: ChatBackend,
    out_path: str | os.PathLike | None = None,
    *,
    judge_name: str | None = None,
    progress: bool = False,
) -> list[dict[str, Any]]:
    """Grade every (question, turn) of one model's answers; append judgment rows to ``out_path``.

    Rows: ``{question_id, model, judge: [judge_name, prompt_name], user_prompt, judgment, score, turn, tstamp}``
    (FastChat's ``model_judgment/*_single.jsonl``). Each row is appended (flushed and fsynced) as soon as
    its judgment arrives, so an interrupted run keeps every finished judgment; rows already in ``out_path``
    for the same question, model, judge and turn are reused (resume: a rerun asks only the missing ones).

    Raises:
        ValueError: when a question has no answer, or an answer has fewer turns than its question.
    """
    from rich.progress import Progress

    judge_name = judge_name or judge.name
    out = Path(out_path) if out_path is not None else None
    existing = {(r["question_id"], r["model"], r["judge"][0], r["turn"]): r for r in _existing(out)}
    rows = []
    with Progress(disable=not progress, transient=True) as bar:
        task = bar.add_task(f"judging ({judge_name})", total=len(questions))
        for q in questions:
            a = answers.get(q["question_id"])
            if a is None:
                raise ValueError(f"no answer for question_id {q['question_id']!r}")
            turns = answer_turns(a)
            if len(turns) < len(q["turns"]):
                raise ValueError(f"answer to question_id {q['question_id']!r} has {len(turns)} turns, need 2")
            for turn in range(1, min(2, len(q["turns"])) + 1):
                key = (q["question_id"], a["model_id"], judge_name, turn)
                if key in existing:
                    rows.append(existing[key])
                    continue
                tpl, prompt = single_prompt(q, turns, turn)
                judgment = ask_judge(judge, tpl, prompt)
                row = {
                    "question_id": q["question_id"],
                    "model": a["model_id"],
                    "judge": [judge_name, tpl.name],
                    "user_prompt": prompt,
                    "judgment": judgment,
                    "score": parse_rating(judgment),
                    "turn": turn,
                    "tstamp": time.time(),
                }
                rows.append(row)
                if out is not None:
                    _append(out, [row])
            bar.advance(task)
    return rows


def _mean(xs: Sequence[float]) -> float | None:
    return sum(xs) / len(xs) if xs else None


def summarize_single(judgments: Sequence[dict[str, Any]], questions: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Per-model MT-Bench scores: overall (mean over valid turn scores), turn 1, turn 2, per category.

    Returns:
        ``{model: {"score", "turn_1", "turn_2", "categories": {cat: mean}, "n_valid", "n_failed"}}``;
        means are ``None`` when no valid score exists.
    """
    cats = {q["question_id"]: q["category"] for q in questions}
    by_model: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for j in judgments:
        by_model[j["model"]].append(j)
    out = {}
    for model, rows in sorted(by_model.items()):
        valid = [r for r in rows if r["score"] != -1]
        per_cat: dict[str, list[float]] = defaultdict(list)
        for r in valid:
            per_cat[cats.get(r["question_id"], "unknown")].append(r["score"])
        out[model] = {
            "score": _mean([r["score"] for r in valid]),
            "turn_1": _mean([r["score"] for r in valid if r["turn"] == 1]),
            "turn_2": _mean([r["score"] for r in valid if r["turn"] == 2]),
            "categories": {c: _mean(v) for c, v in sorted(per_cat.items())},
            "n_valid": len(valid),
            "n_failed": len(rows) - len(valid),
        }
    return out


# --------------------------------------------------------------------------------------------------
# Pairwise grading
# --------------------------------------------------------------------------------------------------
def swap_outcome(g1_winner: str, g2_winner: str) -> str:
    """Combine the two position-swapped games into one outcome (winners already mapped to model names).

    FastChat ``show_result``: a tie in game 1, or games that disagree, is a tie; two errors are an error.
    """
    if g1_winner == "error" and g2_winner == "error":
        return "error"
    if g1_winner == "tie" or g1_winner != g2_winner:
        return "tie"
    return g1_winner


def judge_pair(
    judge: ChatBackend, question: dict[str, Any], answers_1: Sequence[str], answers_2: Sequence[str], turn: int
) -> dict[str, Any]:
    """Judge one (question, turn) twice: game 1 with model 1 as A, game 2 with model 2 as A.

    Returns:
        ``{"g1_winner", "g2_winner", "g1_judgment", "g2_judgment", "g1_user_prompt", "g2_user_prompt",
        "prompt_name"}``; winners are ``"model_1"``, ``"model_2"``, ``"tie"`` or ``"error"``.
    """
    tpl, p1 = pair_prompt(question, answers_1, answers_2, turn)
    _, p2 = pair_prompt(question, answers_2, answers_1, turn)
    j1, j2 = ask_judge(judge, tpl, p1), ask_judge(judge, tpl, p2)
    m1 = {"A": "model_1", "B": "model_2"}
    m2 = {"A": "model_2", "B": "model_1"}
    v1, v2 = parse_pair_verdict(j1), parse_pair_verdict(j2)
    return {
        "g1_winner": m1.get(v1, v1),
        "g2_winner": m2.get(v2, v2),
        "g1_judgment": j1,
        "g2_judgment": j2,
        "g1_user_prompt": p1,
        "g2_user_prompt": p2,
        "prompt_name": tpl.name,
    }


def judge_pairwise(
    questions: Sequence[dict[str, Any]],
    answers_1: dict[Any, dict[str, Any]],
    answers_2: dict[Any, dict[str, Any]],
    judge: ChatBackend,
    out_path: str | os.PathLike | None = None,
    *,
    judge_name: str | None = None,
) -> list[dict[str, Any]]:
    """Pairwise judgments of model 1 vs model 2 on every (question, turn), both position orders.

    Rows (FastChat's ``*_pair.jsonl`` shape): ``{question_id, model_1, model_2, g1_winner, g2_winner, judge,
    g1_user_prompt, g1_judgment, g2_user_prompt, g2_judgment, turn, tstamp}`` with winners as model names.
    Each row is appended (flushed and fsynced) to ``out_path`` as soon as both its games are judged; rows
    already there for the same question, models, judge and turn are reused (resume).
    """
    judge_name = judge_name or judge.name
    out = Path(out_path) if out_path is not None else None
    existing = {(r["question_id"], r["model_1"], r["model_2"], r["judge"][0], r["turn"]): r for r in _existing(out)}
    rows = []
    for q in questions:
        a1, a2 = answers_1.get(q["question_id"]), answers_2.get(q["question_id"])
        if a1 is None or a2 is None:
            raise ValueError(f"question_id {q['question_id']!r} lacks an answer from one of the two models")
        names = {"model_1": a1["model_id"], "model_2": a2["model_id"]}
        if names["model_1"] == names["model_2"]:
            names = {"model_1": names["model_1"] + " (1)", "model_2": names["model_2"] + " (2)"}
        for turn in range(1, min(2, len(q["turns"])) + 1):
            key = (q["question_id"], names["model_1"], names["model_2"], judge_name, turn)
            if key in existing:
                rows.append(existing[key])
                continue
            g = judge_pair(judge, q, answer_turns(a1), answer_turns(a2), turn)
            row = {
                "question_id": q["question_id"],
                "model_1": names["model_1"],
                "model_2": names["model_2"],
                "g1_winner": names.get(g["g1_winner"], g["g1_winner"]),
                "g2_winner": names.get(g["g2_winner"], g["g2_winner"]),
                "judge": [judge_name, g["prompt_name"]],
                "g1_user_prompt": g["g1_user_prompt"],
                "g1_judgment": g["g1_judgment"],
                "g2_user_prompt": g["g2_user_prompt"],
                "g2_judgment": g["g2_judgment"],
                "turn": turn,
                "tstamp": time.time(),
            }
            rows.append(row)
            if out is not None:
                _append(out, [row])
    return rows


def summarize_pairwise(rows: Sequence[dict[str, Any]], questions: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Win/loss/tie of ``model_1`` against ``model_2``, overall and per category.

    Returns:
        ``{"model_1", "model_2", "overall": stats, "categories": {cat: stats}}`` with stats
        ``{"win", "loss", "tie", "error", "n", "win_rate", "loss_rate", "win_rate_adjusted"}``;
        ``n = win + loss + tie`` (errors excluded).
    """
    if not rows:
        raise ValueError("no pairwise judgments to summarize")
    cats = {q["question_id"]: q["category"] for q in questions}
    model_1, model_2 = rows[0]["model_1"], rows[0]["model_2"]

    def stats(rs: Sequence[dict[str, Any]]) -> dict[str, Any]:
        c = {"win": 0, "loss": 0, "tie": 0, "error": 0}
        for r in rs:
            o = swap_outcome(r["g1_winner"], r["g2_winner"])
            c["error" if o == "error" else "tie" if o == "tie" else "win" if o == model_1 else "loss"] += 1
        n = c["win"] + c["loss"] + c["tie"]
        return {
            **c,
            "n": n,
            "win_rate": c["win"] / n if n else None,
            "loss_rate": c["loss"] / n if n else None,
            "win_rate_adjusted": (c["win"] + 0.5 * c["tie"]) / n if n else None,
        }

    by_cat: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        by_cat[cats.get(r["question_id"], "unknown")].append(r)
    return {
        "model_1": model_1,
        "model_2": model_2,
        "overall": stats(rows),
        "categories": {c: stats(v) for c, v in sorted(by_cat.items())},
    }


# --------------------------------------------------------------------------------------------------
# Tables
# --------------------------------------------------------------------------------------------------
def _fmt(x: float | None, digits: int = 2) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def single_table_rows(summary: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """Header (``category`` then one column per model) and rows: overall, turn 1, turn 2, each category, counts."""
    models = list(summary)
    cats = sorted({c for s in summary.values() for c in s["categories"]})
    rows = [
        ["overall", *(_fmt(summary[m]["score"]) for m in models)],
        ["turn 1", *(_fmt(summary[m]["turn_1"]) for m in models)],
        ["turn 2", *(_fmt(summary[m]["turn_2"]) for m in models)],
    ]
    rows += [[c, *(_fmt(summary[m]["categories"].get(c)) for m in models)] for c in cats]
    rows.append(["valid judgments", *(str(summary[m]["n_valid"]) for m in models)])
    rows.append(["failed (-1)", *(str(summary[m]["n_failed"]) for m in models)])
    return ["category", *models], rows


def pairwise_table_rows(summary: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """Header and rows (overall, then one per category) of the pairwise table, from model 1's side."""
    header = ["category", "win", "loss", "tie", "error", "win_rate", "win_rate_adjusted"]
    rows = []
    for name, s in [("overall", summary["overall"]), *summary["categories"].items()]:
        rows.append(
            [name, str(s["win"]), str(s["loss"]), str(s["tie"]), str(s["error"])]
            + [_fmt(s["win_rate"], 3), _fmt(s["win_rate_adjusted"], 3)]
        )
    return header, rows


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A GitHub-markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def print_table(title: str, header: Sequence[str], rows: Sequence[Sequence[str]], console=None) -> None:
    """Print a table with rich."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    for h in header:
        table.add_column(h, justify="left" if h in ("model", "category") else "right")
    for r in rows:
        table.add_row(*r)
    (console or Console()).print(table)
