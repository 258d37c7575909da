"""Rule-based students: the completion pool's members of different strengths.

UltraFeedback samples 4 of 17 models of very different quality per prompt; the toy pool does the same
with rule-based students whose error profiles differ. The important one is ``rule-careful``: it is right
exactly where the teacher is systematically wrong (carries) but sloppy with formats, so the judge
prefers it on carry questions and prefers format-abiding students elsewhere. The dSFT model being
trained joins the pool through the local-checkpoint backend (not here).
"""

from __future__ import annotations

from collections.abc import Mapping

from zephyr.chat import ChatBackend
from zephyr.toy.rules import ErrorProfile, RuleChatModel
from zephyr.toy.tasks import Task


class RuleStudent(RuleChatModel):
    """A rule-based pool member with controllable error rates.

    Args:
        name: model name (the pool member's id in feedback rows).
        seed: student seed.
        registry: optional question text -> Task map.
        **profile: :class:`~zephyr.toy.rules.ErrorProfile` fields: ``skill`` (0..1), ``family_skill``,
            ``carry_error``, ``borrow_error``, ``mul_carry_error``, ``sort_error``, ``format_error``,
            ``refusal_rate``, ``hedge_rate``, ``verbosity``, ``show_work``.
    """

    def __init__(self, name: str, *, seed: int = 0, registry: Mapping[str, Task] | None = None, **profile) -> None:
        super().__init__(name, ErrorProfile(**profile), seed=seed, registry=registry)


POOL_PROFILES: dict[str, dict] = {
    # right on carries and units (where the teacher is wrong) but ignores formats and hedges a little
    "rule-careful": {"skill": 0.92, "format_error": 0.6, "hedge_rate": 0.1, "show_work": 0.8},
    # follows formats perfectly but shares the teacher's carry and unit bugs
    "rule-formal": {"skill": 0.95, "carry_error": 0.9, "mul_carry_error": 0.8, "unit_error": 0.9},
    # weak at everything
    "rule-weak": {
        "skill": 0.5,
        "carry_error": 0.5,
        "borrow_error": 0.3,
        "unit_error": 0.5,
        "format_error": 0.5,
        "refusal_rate": 0.1,
        "verbosity": 0.3,
    },
    # often unsure or refusing; half right on carries
    "rule-hedger": {"skill": 0.8, "carry_error": 0.5, "unit_error": 0.5, "hedge_rate": 0.5, "refusal_rate": 0.15},
    # chatty, sorts numbers as text
    "rule-verbose": {"skill": 0.85, "sort_error": 0.8, "borrow_error": 0.5, "verbosity": 0.6, "format_error": 0.2},
}
"""Error profiles of :func:`default_pool`, by model name."""


def default_pool(seed: int = 0, *, registry: Mapping[str, Task] | None = None) -> list[ChatBackend]:
    """The default rule-based pool: 5 students from strong-but-sloppy to weak (see :data:`POOL_PROFILES`)."""
    return [RuleStudent(name, seed=seed, registry=registry, **profile) for name, profile in POOL_PROFILES.items()]
