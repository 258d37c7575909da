"""The toy world's imperfect teacher and the fixed dSFT dialogue set it writes.

In the real recipe the dSFT teacher (ChatGPT writing UltraChat) is weaker than the judge (GPT-4
scoring UltraFeedback), so preference data carries information the dialogues lack. The toy teacher
copies that: it is right most of the time but has *systematic* bugs (it forgets the carry in
additions, drops carries in products, misremembers every unit factor as 100), sometimes ignores a
format instruction and sometimes refuses.
A model distilled from its dialogues inherits those bugs; only pool members that are right where it is
wrong, picked out by a judge that knows the truth, can fix them.

``sft_dialogues`` writes rows in the ``HuggingFaceH4/ultrachat_200k`` schema
(``prompt``, ``prompt_id`` = SHA-256 hex of ``prompt``, ``messages``), one or more user/assistant turns:
a second turn is either a verifiable follow-up on the teacher's own answer ("Now double it.") or an
unrelated new question.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Mapping, Sequence

from zephyr.chat import ChatBackend
from zephyr.toy.rules import ErrorProfile, RuleChatModel
from zephyr.toy.tasks import Task, extract_answer, make_follow_up, sample_tasks

TEACHER_PROFILE = ErrorProfile(
    skill=0.98,
    carry_error=0.9,
    mul_carry_error=0.8,
    unit_error=0.9,
    format_error=0.3,
    refusal_rate=0.05,
)
"""Default teacher: wrong mostly on carries and on unit conversions (it believes 1 km = 100 m)."""


class ToyTeacher(RuleChatModel):
    """Imperfect teacher: correct except for configurable systematic errors.

    Args:
        seed: teacher seed (replies are a function of seed, call seed and conversation).
        carry_error: probability of forgetting the carry in an addition that has one.
        mul_carry_error: probability of dropping the carry in a product that has one.
        unit_error: probability of converting units with the misremembered factor 100.
        format_error: probability of ignoring a format instruction.
        refusal_rate: probability of refusing ("I'm not able to help with that.").
        skill: probability of no random slip.
        name: model name reported in responses.
        registry: optional question text -> Task map.
        **profile: further :class:`~zephyr.toy.rules.ErrorProfile` fields (``borrow_error``,
            ``sort_error``, ``hedge_rate``, ``verbosity``, ``show_work``, ``family_skill``).
    """

    def __init__(
        self,
        seed: int = 0,
        *,
        carry_error: float = TEACHER_PROFILE.carry_error,
        mul_carry_error: float = TEACHER_PROFILE.mul_carry_error,
        unit_error: float = TEACHER_PROFILE.unit_error,
        format_error: float = TEACHER_PROFILE.format_error,
        refusal_rate: float = TEACHER_PROFILE.refusal_rate,
        skill: float = TEACHER_PROFILE.skill,
        name: str = "toy-teacher",
        registry: Mapping[str, Task] | None = None,
        **profile,
    ) -> None:
        super().__init__(
            name,
            ErrorProfile(
                skill=skill,
                carry_error=carry_error,
                mul_carry_error=mul_carry_error,
                unit_error=unit_error,
                format_error=format_error,
                refusal_rate=refusal_rate,
                **profile,
            ),
            seed=seed,
            registry=registry,
        )


def _row(messages: list[dict[str, str]]) -> dict:
    prompt = messages[0]["content"]
    return {"prompt": prompt, "prompt_id": hashlib.sha256(prompt.encode("utf-8")).hexdigest(), "messages": messages}


def sft_dialogues(
    n: int,
    seed: int,
    *,
    teacher: ChatBackend | None = None,
    turns: tuple[int, int] = (1, 2),
    families: Sequence[str] | None = None,
    follow_up_rate: float = 0.5,
) -> list[dict]:
    """The fixed teacher dataset for dSFT, in the ``ultrachat_200k`` schema.

    Args:
        n: number of dialogues.
        seed: seed for questions, turn counts and the teacher's calls.
        teacher: who writes assistant turns (default ``ToyTeacher(seed)``); any ``ChatBackend`` works.
        turns: inclusive range of user/assistant exchanges per dialogue.
        families: task families to draw from (default: all). Questions come from the ``train`` split.
        follow_up_rate: chance that a later turn follows up on the previous answer ("Now double it.")
            rather than asking a new question; a follow-up needs a previous answer, so after a refusal
            a new question is asked.

    Returns:
        ``n`` rows ``{"prompt", "prompt_id", "messages"}``; messages alternate user/assistant and end with
        the assistant.

    Raises:
        ValueError: ``turns`` is not a valid ``(min, max)`` with ``1 <= min <= max``.
    """
    lo, hi = turns
    if not 1 <= lo <= hi:
        raise ValueError(f"zephyr/toy/teacher.py: turns must be (min, max) with 1 <= min <= max, got {turns}")
    teacher = teacher if teacher is not None else ToyTeacher(seed)
    rng = random.Random(f"zephyr-toy-sft:{seed}")
    firsts = sample_tasks(n, seed, split="train", families=families)
    extra = iter(sample_tasks(n * (hi - 1), seed + 7919, split="train", families=families)) if hi > 1 else iter(())
    rows = []
    for i, task in enumerate(firsts):
        n_turns = rng.randint(lo, hi)
        messages: list[dict[str, str]] = []
        current: Task | None = task
        for t in range(n_turns):
            assert current is not None
            messages.append({"role": "user", "content": current.question})
            reply = teacher.chat(messages, temperature=1.0, n=1, seed=seed * 100_003 + i * 17 + t).texts[0]
            messages.append({"role": "assistant", "content": reply})
            if t + 1 == n_turns:
                break
            said = extract_answer(current, reply)
            if rng.random() < follow_up_rate and said is not None and ("," in said) == ("," in current.answer):
                current = make_follow_up(current, rng, base_answer=said)
            else:
                current = next(extra)
        rows.append(_row(messages))
    return rows
