"""Binarize raw UltraFeedback rows into (prompt, chosen, rejected) pairs: the ``ultrafeedback_binarized`` schema.

Zephyr (arXiv 2310.16944 §3): chosen = the completion with the highest mean score, rejected = one of the others
drawn uniformly at random (on purpose not the lowest: a harder, more varied DPO target). Options:

- ``criterion``: ``mean`` (mean of the aspect Ratings, N/A skipped = ``fine-grained_score``; the paper and
  Argilla) or ``overall`` (the critique's 1-10 ``overall_score``; the H4 creation script).
- ``rejected``: ``random`` (Zephyr), ``random_lower`` (a random completion scoring strictly lower, Argilla),
  ``lowest``, or ``all_pairs`` (every pair with a higher chosen score).
- ``ties``: what happens when chosen and rejected would score the same. ``drop`` removes such pairs (Argilla);
  ``random`` keeps them (H4 allows them) and breaks a tie for the top score by a seeded draw instead of
  taking the first maximum.

Every random choice uses ``random.Random(seed:prompt_id)``, so a pair does not depend on row order.
Completions without a usable score (a failed annotation) are left out and their prompts counted.
"""

from __future__ import annotations

import hashlib
import random
from collections import Counter
from collections.abc import Iterable, Mapping
from typing import Any

CRITERIA = ("mean", "overall")
REJECTED = ("random", "random_lower", "lowest", "all_pairs")
TIES = ("drop", "random")


def completion_score(completion: Mapping[str, Any], criterion: str = "mean") -> float | None:
    """The score of one raw completion under ``criterion`` (``None`` when it has none)."""
    if criterion == "overall":
        s = completion.get("overall_score")
        return float(s) if s is not None else None
    if criterion != "mean":
        raise ValueError(f"criterion must be one of {CRITERIA}, got {criterion!r}")
    ann = completion.get("annotations") or {}
    vals = []
    for aspect in ann.values():
        r = str((aspect or {}).get("Rating", "N/A")).strip()
        if r.isdigit():
            vals.append(int(r))
    return sum(vals) / len(vals) if vals else None


def _pair_row(prompt: str, pid: str, chosen: str, rejected: str, sc: float, sr: float) -> dict[str, Any]:
    user = {"role": "user", "content": prompt}
    chosen_msgs = [user, {"role": "assistant", "content": chosen}]
    return {
        "prompt": prompt,
        "prompt_id": pid,
        "chosen": chosen_msgs,
        "rejected": [user, {"role": "assistant", "content": rejected}],
        "messages": [dict(m) for m in chosen_msgs],
        "score_chosen": float(sc),
        "score_rejected": float(sr),
    }


def binarize(
    rows: Iterable[Mapping[str, Any]],
    *,
    criterion: str = "mean",
    rejected: str = "random",
    ties: str = "drop",
    seed: int = 42,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Turn raw rows into preference pairs.

    Args:
        rows: ``openbmb/UltraFeedback`` rows (``instruction``, ``completions`` with annotations).
        criterion: ``mean`` | ``overall``.
        rejected: ``random`` | ``random_lower`` | ``lowest`` | ``all_pairs``.
        ties: ``drop`` | ``random``.
        seed: seed of every random choice.

    Returns:
        ``(pairs, report)``; ``report`` counts prompts, pairs, ties dropped, prompts with failed annotations,
        prompts without a pair, and chosen/rejected models.

    Raises:
        ValueError: an unknown option, or a row without ``instruction``/``completions`` (named by index).
    """
    if criterion not in CRITERIA:
        raise ValueError(f"criterion must be one of {CRITERIA}, got {criterion!r}")
    if rejected not in REJECTED:
        raise ValueError(f"rejected must be one of {REJECTED}, got {rejected!r}")
    if ties not in TIES:
        raise ValueError(f"ties must be one of {TIES}, got {ties!r}")
    pairs: list[dict[str, Any]] = []
    report: dict[str, Any] = {
        "prompts": 0,
        "pairs": 0,
        "ties_dropped": 0,
        "prompts_with_failures": 0,
        "prompts_without_pair": 0,
        "chosen_models": Counter(),
        "rejected_models": Counter(),
    }
    for idx, row in enumerate(rows):
        if "instruction" not in row or "completions" not in row:
            raise ValueError(f"row {idx}: an UltraFeedback row needs 'instruction' and 'completions'")
        report["prompts"] += 1
        prompt = row["instruction"]
        pid = row.get("prompt_id") or hashlib.sha256(prompt.encode("utf-8")).hexdigest()
        rng = random.Random(f"{seed}:{pid}")
        scored = []
        for c in row["completions"]:
            s = completion_score(c, criterion)
            if s is None or not str(c.get("response", "")).strip():
                continue
            scored.append((s, c))
        if len(scored) < len(row["completions"]):
            report["prompts_with_failures"] += 1
        if len(scored) < 2:
            report["prompts_without_pair"] += 1
            continue
        made = _pairs_for(scored, rejected, ties, rng, report)
        if not made:
            report["prompts_without_pair"] += 1
        for (sc, c), (sr, r) in made:
            pairs.append(_pair_row(prompt, pid, c["response"], r["response"], sc, sr))
            report["chosen_models"][c.get("model", "?")] += 1
            report["rejected_models"][r.get("model", "?")] += 1
    report["pairs"] = len(pairs)
    report["chosen_models"] = dict(report["chosen_models"])
    report["rejected_models"] = dict(report["rejected_models"])
    if pairs:
        report["mean_score_chosen"] = sum(p["score_chosen"] for p in pairs) / len(pairs)
        report["mean_score_rejected"] = sum(p["score_rejected"] for p in pairs) / len(pairs)
    return pairs, report


def _pairs_for(scored, rejected, ties, rng, report):
    top = max(s for s, _ in scored)
    best = [i for i, (s, _) in enumerate(scored) if s == top]
    if rejected == "all_pairs":
        out = []
        for i in range(len(scored)):
            for j in range(i + 1, len(scored)):
                a, b = scored[i], scored[j]
                if a[0] == b[0]:
                    if ties == "drop":
                        report["ties_dropped"] += 1
                        continue
                    out.append((a, b) if rng.random() < 0.5 else (b, a))
                else:
                    out.append((a, b) if a[0] > b[0] else (b, a))
        return out
    ci = best[0] if ties == "drop" else rng.choice(best)  # "drop": the first maximum, as H4's max()
    chosen = scored[ci]
    others = [x for i, x in enumerate(scored) if i != ci]
    if rejected == "random":
        rej = rng.choice(others)
    elif rejected == "random_lower":
        lower = [x for x in others if x[0] < chosen[0]]
        if not lower:  # every completion ties with the best
            if ties == "drop":
                report["ties_dropped"] += 1
                return []
            lower = others
        rej = rng.choice(lower)
    else:  # lowest
        low = min(s for s, _ in others)
        rej = rng.choice([x for x in others if x[0] == low])
    if rej[0] == chosen[0] and ties == "drop":
        report["ties_dropped"] += 1
        return []
    return [(chosen, rej)]


def split_pairs(pairs: list[dict[str, Any]], test_size: float | int, seed: int = 42) -> tuple[list, list]:
    """Seeded train/test split by prompt (all pairs of a prompt stay on one side).

    Args:
        pairs: binarized rows.
        test_size: a fraction in [0, 1) or a number of prompts.
        seed: shuffle seed.
    """
    pids = sorted({p["prompt_id"] for p in pairs})
    random.Random(seed).shuffle(pids)
    n_test = int(round(test_size * len(pids))) if isinstance(test_size, float) and test_size < 1 else int(test_size)
    test_ids = set(pids[:n_test])
    return [p for p in pairs if p["prompt_id"] not in test_ids], [p for p in pairs if p["prompt_id"] in test_ids]
