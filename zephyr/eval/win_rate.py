"""AlpacaEval-style win rate of model A against model B through a pairwise judge, with length control.

Each instruction is judged twice with the answers' positions swapped (MT-Bench's ``pair-v2`` prompt, or
``pair-math-v1`` when the instruction carries a reference). Per instruction, A's preference is
1 (A won both games), 0 (B won both) or 0.5 (a tie, or the two games disagreed: position bias cancels).

Reported side by side: the raw win rate ``mean(preference)`` (ties count half, as in AlpacaEval), the
counts, and the average answer lengths of A and B in characters, because LLM judges favour longer answers
(Zheng et al. 2023; Dubois et al. 2024, "Length-Controlled AlpacaEval", arXiv 2404.04475).

Length-controlled win rate (our simplified version of Dubois et al.'s GLM): fit a logistic regression of
the preference on the normalised length difference,

    P(A preferred) = sigmoid(w0 + w1 * tanh((len_A - len_B) / s)),  s = std(len_A - len_B)

by Newton's method on the soft labels (0, 0.5, 1) with a small L2 penalty (``l2``) that keeps the weights
finite when the data are separable, and report ``sigmoid(w0)``: the predicted win rate had both answers
been the same length. ``w1 > 0`` means the judge rewards A's extra length. numpy only.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from zephyr.chat import ChatBackend
from zephyr.eval.mt_bench import ask_judge, pair_prompt, parse_pair_verdict, swap_outcome


def load_answer_set(path: str | os.PathLike, questions: Sequence[dict[str, Any]] | None = None) -> dict[str, dict]:
    """Read answers to single-turn instructions into ``{id: {"instruction", "output", "reference"}}``.

    Accepted rows: ``zephyr generate`` output (``id``, ``messages``, ``output``); AlpacaEval
    (``instruction``, ``output``, optional ``id``); FastChat answers (``question_id``, ``choices``; turn 1,
    with instructions and references from ``questions``).

    Raises:
        ValueError: naming file and line for a row of none of these shapes, or a FastChat row whose
            question is not in ``questions``.
    """
    from zephyr.data.io import read_jsonl_numbered

    by_qid = {str(q["question_id"]): q for q in (questions or [])}
    out: dict[str, dict] = {}
    for line_no, row in read_jsonl_numbered(path):
        where = f"{path}:{line_no}"
        if "choices" in row and "question_id" in row:
            q = by_qid.get(str(row["question_id"]))
            if q is None:
                raise ValueError(f"{where}: question_id {row['question_id']!r} is not in the question file")
            ref = (q.get("reference") or [None])[0] if q["category"] in ("math", "reasoning", "coding") else None
            out[str(row["question_id"])] = {
                "instruction": q["turns"][0],
                "output": row["choices"][0]["turns"][0],
                "reference": ref,
            }
        elif "output" in row and ("messages" in row or "instruction" in row):
            if "instruction" in row:
                instruction = row["instruction"]
            else:
                users = [m["content"] for m in row["messages"] if m.get("role") == "user"]
                if not users:
                    raise ValueError(f"{where}: 'messages' has no user turn")
                instruction = users[-1]
            rid = str(row.get("id", instruction))
            out[rid] = {"instruction": instruction, "output": row["output"], "reference": row.get("reference")}
        else:
            raise ValueError(f"{where}: expected zephyr-generate, AlpacaEval or FastChat answer rows")
    return out


def fit_length_logistic(
    preference: Sequence[float], len_a: Sequence[float], len_b: Sequence[float], *, l2: float = 0.01, iters: int = 50
) -> dict[str, float]:
    """Logistic regression of A's preference on ``tanh((len_a - len_b) / std)`` (method in the module docstring).

    Args:
        preference: (N,) values in [0, 1] (soft labels).
        len_a: (N,) lengths of A's answers.
        len_b: (N,) lengths of B's answers.
        l2: ridge penalty on both weights.
        iters: Newton steps (converges in a handful).

    Returns:
        ``{"w0", "w1", "scale", "lc_win_rate"}`` with ``lc_win_rate = sigmoid(w0)``.
    """
    y = np.asarray(preference, dtype=float)  # (N,)
    diff = np.asarray(len_a, dtype=float) - np.asarray(len_b, dtype=float)  # (N,)
    if y.size == 0:
        raise ValueError("no judged pairs to fit")
    scale = float(diff.std()) or 1.0
    x = np.stack([np.ones_like(diff), np.tanh(diff / scale)], axis=1)  # (N, 2)
    w = np.zeros(2)
    for _ in range(iters):
        p = 1.0 / (1.0 + np.exp(-(x @ w)))  # (N,)
        grad = x.T @ (p - y) + l2 * w  # (2,)
        hess = (x * (p * (1 - p))[:, None]).T @ x + l2 * np.eye(2)  # (2, 2)
        step = np.linalg.solve(hess, grad)
        w -= step
        if np.abs(step).max() < 1e-10:
            break
    return {"w0": float(w[0]), "w1": float(w[1]), "scale": scale, "lc_win_rate": float(1 / (1 + np.exp(-w[0])))}


def win_rate(
    answers_a: dict[str, dict],
    answers_b: dict[str, dict],
    judge: ChatBackend,
    *,
    name_a: str = "A",
    name_b: str = "B",
    out_path: str | os.PathLike | None = None,
) -> dict[str, Any]:
    """Judge A against B on the instructions both answered (both orders) and summarise.

    Returns:
        ``{"model_a", "model_b", "n", "wins", "losses", "ties", "errors", "win_rate", "lc_win_rate",
        "length_slope", "avg_len_a", "avg_len_b"}``; rates in [0, 1], lengths in characters.

    Raises:
        ValueError: when the two sets share no instruction.
    """
    ids = [i for i in answers_a if i in answers_b]
    if not ids:
        raise ValueError("the two answer sets have no instruction id in common")
    records = []
    for i in ids:
        a, b = answers_a[i], answers_b[i]
        ref = a.get("reference") or b.get("reference")
        question = {"category": "math" if ref else "general", "turns": [a["instruction"]], "reference": [ref or ""]}
        tpl, p1 = pair_prompt(question, [a["output"]], [b["output"]], 1)
        _, p2 = pair_prompt(question, [b["output"]], [a["output"]], 1)
        j1, j2 = ask_judge(judge, tpl, p1), ask_judge(judge, tpl, p2)
        v1 = {"A": "a", "B": "b"}.get(parse_pair_verdict(j1), parse_pair_verdict(j1))
        v2 = {"A": "b", "B": "a"}.get(parse_pair_verdict(j2), parse_pair_verdict(j2))
        outcome = swap_outcome(v1, v2)
        records.append(
            {
                "id": i,
                "instruction": a["instruction"],
                "output_a": a["output"],
                "output_b": b["output"],
                "g1_judgment": j1,
                "g2_judgment": j2,
                "g1_winner": v1,
                "g2_winner": v2,
                "outcome": outcome,
                "preference": {"a": 1.0, "b": 0.0, "tie": 0.5}.get(outcome),
                "prompt_name": tpl.name,
            }
        )
    if out_path is not None:
        Path(out_path).parent.mkdir(parents=True, exist_ok=True)
        with open(out_path, "w", encoding="utf-8") as f:
            for r in records:
                f.write(json.dumps(r, ensure_ascii=False) + "\n")
    valid = [r for r in records if r["preference"] is not None]
    len_a = [len(answers_a[r["id"]]["output"]) for r in valid]
    len_b = [len(answers_b[r["id"]]["output"]) for r in valid]
    result: dict[str, Any] = {
        "model_a": name_a,
        "model_b": name_b,
        "n": len(valid),
        "wins": sum(r["outcome"] == "a" for r in valid),
        "losses": sum(r["outcome"] == "b" for r in valid),
        "ties": sum(r["outcome"] == "tie" for r in valid),
        "errors": len(records) - len(valid),
        "win_rate": float(np.mean([r["preference"] for r in valid])) if valid else None,
        "lc_win_rate": None,
        "length_slope": None,
        "avg_len_a": float(np.mean([len(answers_a[i]["output"]) for i in ids])),
        "avg_len_b": float(np.mean([len(answers_b[i]["output"]) for i in ids])),
    }
    if valid:
        fit = fit_length_logistic([r["preference"] for r in valid], len_a, len_b)
        result["lc_win_rate"], result["length_slope"] = fit["lc_win_rate"], fit["w1"]
    return result


def win_rate_markdown(result: dict[str, Any]) -> str:
    """One markdown table: raw and length-controlled win rate with the average lengths side by side."""

    def pct(x: float | None) -> str:
        return "-" if x is None else f"{100 * x:.1f}%"

    header = (
        "| model A | model B | n | wins | losses | ties | errors | win rate | LC win rate | avg len A | avg len B |"
    )
    sep = "|---|---|---|---|---|---|---|---|---|---|---|"
    row = (
        f"| {result['model_a']} | {result['model_b']} | {result['n']} | {result['wins']} | {result['losses']} | "
        f"{result['ties']} | {result['errors']} | {pct(result['win_rate'])} | {pct(result['lc_win_rate'])} | "
        f"{result['avg_len_a']:.0f} | {result['avg_len_b']:.0f} |"
    )
    return "\n".join([header, sep, row]) + "\n"
