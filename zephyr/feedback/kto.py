"""KTO rows from the feedback pipeline's output: unpaired ``prompt``, ``completion``, ``label`` (TRL's schema).

Two derivations (the KTO paper, arXiv 2402.01306 §4, trains on both kinds of signal):

* :func:`from_ratings`: raw UltraFeedback rows (``zephyr data feedback``'s ``ultrafeedback.jsonl``) → one row
  per rated completion: desirable when its score (:func:`zephyr.feedback.binarize.completion_score`, the mean
  aspect rating or the overall critique score) is above ``threshold``, undesirable below it; a completion at
  the threshold, unrated or empty is left out (counted).
* :func:`unpair`: binarized pairs (``ultrafeedback_binarized`` schema, ``zephyr data binarize``'s
  ``train_prefs.jsonl``) split into their two halves: chosen → desirable, rejected → undesirable (TRL's
  ``unpair_preference_dataset``).

:func:`kto_rows` picks by the rows' columns. The rows keep ``prompt_id`` and ``score`` for inspection.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from typing import Any

from zephyr.data.preference import validate_pair
from zephyr.feedback.binarize import CRITERIA, completion_score

__all__ = ["from_ratings", "kto_rows", "unpair"]


def _row(prompt: Any, pid: str, text: str, label: bool, score: float | None) -> dict[str, Any]:
    row = {"prompt": prompt, "completion": text, "label": bool(label), "prompt_id": pid}
    if score is not None:
        row["score"] = float(score)
    return row


def from_ratings(
    rows: Iterable[Mapping[str, Any]], *, threshold: float, criterion: str = "mean"
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Unpaired rows from raw UltraFeedback ratings: score > ``threshold`` desirable, < ``threshold`` undesirable.

    Args:
        rows: ``openbmb/UltraFeedback``-schema rows (``instruction``, ``completions`` with annotations).
        threshold: the score that separates the two labels (UltraFeedback's mean rating is on 1-5, the overall
            score on 1-10).
        criterion: ``mean`` | ``overall`` (as ``zephyr data binarize``).

    Returns:
        ``(rows, report)``; ``report`` counts prompts, desirable, undesirable, and completions left out
        (``at_threshold``, ``unscored``).

    Raises:
        ValueError: an unknown criterion, or a row without ``instruction``/``completions`` (named by index).
    """
    if criterion not in CRITERIA:
        raise ValueError(f"criterion must be one of {CRITERIA}, got {criterion!r}")
    out: list[dict[str, Any]] = []
    report = {"prompts": 0, "desirable": 0, "undesirable": 0, "at_threshold": 0, "unscored": 0}
    for idx, row in enumerate(rows):
        if "instruction" not in row or "completions" not in row:
            raise ValueError(f"row {idx}: an UltraFeedback row needs 'instruction' and 'completions'")
        report["prompts"] += 1
        prompt = row["instruction"]
        pid = row.get("prompt_id") or hashlib.sha256(prompt.encode("utf-8")).hexdigest()
        for c in row["completions"]:
            score, text = completion_score(c, criterion), str(c.get("response", ""))
            if score is None or not text.strip():
                report["unscored"] += 1
            elif score == threshold:
                report["at_threshold"] += 1
            else:
                label = score > threshold
                report["desirable" if label else "undesirable"] += 1
                out.append(_row(prompt, pid, text, label, score))
    return out, report


def unpair(pairs: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Split preference pairs into their halves: ``(prompt, chosen, true)`` then ``(prompt, rejected, false)``.

    The prompt is the pair's shared conversation before the last turn (a one-turn list for single-turn pairs).

    Raises:
        ValueError: a row that is not a valid pair (:func:`zephyr.data.preference.validate_pair`), named by index.
    """
    out = []
    for idx, pair in enumerate(pairs):
        try:
            prompt, chosen, rejected = validate_pair(pair)
        except ValueError as e:
            raise ValueError(f"pair {idx}: {e}") from None
        pid = str(pair.get("prompt_id") or hashlib.sha256(repr(prompt).encode("utf-8")).hexdigest())
        out.append(_row(prompt, pid, chosen["content"], True, pair.get("score_chosen")))
        out.append(_row(prompt, pid, rejected["content"], False, pair.get("score_rejected")))
    return out


def kto_rows(
    rows: Iterable[Mapping[str, Any]], *, threshold: float | None = None, criterion: str = "mean"
) -> list[dict[str, Any]]:
    """Unpaired rows from either output: raw ratings (need ``threshold``) or binarized pairs (split in halves).

    Raises:
        ValueError: raw ratings without a threshold, or rows of neither schema.
    """
    rows = list(rows)
    if not rows:
        return []
    if "completions" in rows[0]:
        if threshold is None:
            raise ValueError("raw UltraFeedback ratings need a threshold (desirable above, undesirable below)")
        return from_ratings(rows, threshold=threshold, criterion=criterion)[0]
    if "chosen" in rows[0] and "rejected" in rows[0]:
        return unpair(rows)
    raise ValueError("expected raw UltraFeedback rows (instruction, completions) or binarized pairs (chosen, rejected)")
