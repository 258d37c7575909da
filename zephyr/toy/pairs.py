"""The built-in toy-world preference pairs (``conf/data/toy_prefs.yaml`` reaches them by ``_target_``).

The real feedback pipeline on toy-world questions: the student pool (:func:`zephyr.toy.default_pool`) answers,
the verifier judge writes UltraFeedback ratings (:func:`zephyr.feedback.complete.collect_feedback`) and
:func:`zephyr.feedback.binarize.binarize` picks chosen = best mean rating and rejected = a random other
completion, as the paper did. The pairs are cached as jsonl.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any

from zephyr.fileio import atomic_open

log = logging.getLogger(__name__)

TOY_FEEDBACK_VERSION = 1  # bump when the toy pair recipe below changes, so old cached pairs are not reused


def preference_rows(n: int, seed: int = 0, cache_dir: str | os.PathLike | None = None) -> list[dict[str, Any]]:
    """The built-in toy-world preference pairs, made by the feedback pipeline and cached as jsonl.

    ``n`` toy questions (train split) are answered by 4 of the 5 rule-based students, rated by the verifier judge
    on UltraFeedback's four aspects and binarized (chosen = highest mean rating, rejected = random other, ties
    dropped), so there are fewer pairs than questions (about 3 in 4).

    Args:
        n: toy questions to collect feedback on.
        seed: seed of the questions, the student pool, the judge and the binarization.
        cache_dir: folder for ``toy_prefs/`` (``None``: a temporary folder, nothing kept).

    Returns:
        Rows in the ``ultrafeedback_binarized`` schema.
    """
    from zephyr.feedback.binarize import binarize
    from zephyr.feedback.complete import FeedbackConfig, collect_feedback, load_prompts
    from zephyr.feedback.store import read_jsonl
    from zephyr.toy.judge import VerifierJudge
    from zephyr.toy.students import default_pool

    name = f"toy_prefs_v{TOY_FEEDBACK_VERSION}_n{n}_seed{seed}.jsonl"
    target = Path(cache_dir) / "toy_prefs" / name if cache_dir else None
    if target is not None and target.is_file():
        return read_jsonl(target)
    prompts = load_prompts({"source": "toy_tasks", "n": n, "seed": seed + 1, "split": "train"})
    fcfg = FeedbackConfig.from_config(
        models_per_prompt=4, seed=seed, workers=1, critique=False, world_knowledge=False, progress=False
    )
    with tempfile.TemporaryDirectory(prefix="toy_feedback_") as work:
        collect_feedback(prompts, default_pool(seed), VerifierJudge(seed=seed), work, fcfg)
        pairs, report = binarize(read_jsonl(Path(work) / "ultrafeedback.jsonl"), seed=seed)
    log.info("toy preference pairs: %d from %d questions (%d ties dropped)", len(pairs), n, report["ties_dropped"])
    if target is not None:
        # tmp + rename: two sweep jobs building the same file at once both write complete, identical files
        with atomic_open(target) as f:
            f.write("".join(json.dumps(p) + "\n" for p in pairs))
    return pairs


def unpaired_rows(n: int, seed: int = 0, cache_dir: str | os.PathLike | None = None) -> list[dict[str, Any]]:
    """The toy pairs of :func:`preference_rows` split into KTO's unpaired rows (``conf/data/toy_kto.yaml``).

    Each pair gives a desirable row (its chosen completion) and an undesirable one (its rejected completion):
    :func:`zephyr.feedback.kto.unpair`.
    """
    from zephyr.feedback.kto import unpair

    return unpair(preference_rows(n, seed=seed, cache_dir=cache_dir))


__all__ = ["TOY_FEEDBACK_VERSION", "preference_rows", "unpaired_rows"]
