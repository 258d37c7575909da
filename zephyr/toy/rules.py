"""Rule-based answerers with controllable, *systematic* error profiles (shared by the teacher and students).

The toy world needs models that are wrong in structured ways, the way a real teacher or pool member
is: a model that forgets the carry in additions is wrong on exactly the carry questions, every time,
not on a random 10 %. :class:`ErrorProfile` lists those behaviours as probabilities and
:class:`RuleChatModel` turns a conversation into a short reply through ``ChatBackend``.

Behaviours (each a probability, drawn per reply):
- systematic errors: ``carry_error`` (additions with a carry, also "add" word problems: digits are
  summed without carrying), ``borrow_error`` (subtractions with a borrow: each digit pair is
  subtracted smaller-from-larger), ``mul_carry_error`` (products: the carry is dropped),
  ``sort_error`` (numbers sorted as text, so 9 comes after 56), ``unit_error`` (a misremembered unit:
  every conversion uses a factor of 100, "1 km = 100 m", "1 hour = 100 minutes");
- random slips: with probability ``1 - skill`` (per family via ``family_skill``) the answer is
  perturbed (off by one or ten, swapped digits; lists get two items swapped);
- style: ``format_error`` ignores a format instruction, ``refusal_rate`` declines, ``hedge_rate``
  adds "I think", ``verbosity`` adds filler, ``show_work`` keeps the one-line derivation.

Determinism: every reply is a function of ``(model seed, call seed, choice index, conversation)``; at
temperature 0 the call seed and index are ignored, so the model is a fixed function of the question.
"""

from __future__ import annotations

import random
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field

from zephyr.chat import ChatResponse
from zephyr.toy.tasks import (
    Task,
    extract_answer,
    is_list_task,
    parse_follow_up,
    parse_question,
    render_reply,
)

REFUSALS = [
    "I'm not able to help with that.",
    "I'm sorry, but I can't help with that request.",
    "I'm unable to answer this question.",
]
FILLERS = ["Sure, happy to help!", "Let me work this out.", "Good question!"]
NOT_A_TASK = "I'm not able to help with that. I can only answer arithmetic, list and counting questions."


@dataclass(frozen=True)
class ErrorProfile:
    """How a rule-based model goes wrong. All fields are probabilities in [0, 1].

    Attributes:
        skill: chance of no random slip (the default for families missing from ``family_skill``).
        family_skill: per-family override of ``skill``.
        carry_error: forget the carry in additions that have one.
        borrow_error: subtract digit pairs smaller-from-larger in subtractions that borrow.
        mul_carry_error: drop carries in products.
        sort_error: sort numbers as strings.
        unit_error: convert units with a factor of 100 whatever the units (a factual misconception).
        format_error: ignore the question's format instruction.
        refusal_rate: decline to answer.
        hedge_rate: express uncertainty ("I think the answer is ...").
        verbosity: add a filler sentence before the answer.
        show_work: show the one-line derivation in free and tagged replies.
    """

    skill: float = 1.0
    family_skill: Mapping[str, float] = field(default_factory=dict)
    carry_error: float = 0.0
    borrow_error: float = 0.0
    mul_carry_error: float = 0.0
    sort_error: float = 0.0
    unit_error: float = 0.0
    format_error: float = 0.0
    refusal_rate: float = 0.0
    hedge_rate: float = 0.0
    verbosity: float = 0.0
    show_work: float = 1.0

    def __post_init__(self) -> None:
        for name, value in [(k, getattr(self, k)) for k in self.__dataclass_fields__ if k != "family_skill"]:
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"zephyr/toy/rules.py: ErrorProfile.{name} must be in [0, 1], got {value}")
        for fam, value in self.family_skill.items():
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"zephyr/toy/rules.py: ErrorProfile.family_skill[{fam!r}] must be in [0, 1]")


def add_without_carry(a: int, b: int) -> int:
    """Digit-wise sum mod 10 (the "forgot to carry" bug): 47 + 38 -> 75."""
    out, place = 0, 1
    while a or b:
        out += ((a % 10 + b % 10) % 10) * place
        a, b, place = a // 10, b // 10, place * 10
    return out


def subtract_without_borrow(a: int, b: int) -> int:
    """Digit-wise |x - y| (the "smaller from larger" bug): 52 - 38 -> 26."""
    out, place = 0, 1
    while a or b:
        out += abs(a % 10 - b % 10) * place
        a, b, place = a // 10, b // 10, place * 10
    return out


def multiply_without_carry(a: int, b: int) -> int:
    """One-digit times many-digit product with carries dropped: 7 * 93 -> 31 (7*9=63 -> 3, 7*3=21 -> 1)."""
    small, big = (a, b) if a < 10 else (b, a)
    if small >= 10:  # both multi-digit: not produced by the task families; fall back to the true product
        return a * b
    out, place = 0, 1
    while big:
        out += ((small * (big % 10)) % 10) * place
        big, place = big // 10, place * 10
    return out


MISREMEMBERED_FACTOR = 100
"""The conversion factor a model with ``unit_error`` uses for every unit pair."""


def _systematic(task: Task, p: ErrorProfile, u: float) -> str | None:
    """The wrong answer a systematic bug produces on ``task`` (``None`` when no bug applies or fires)."""
    m, fam = task.meta, task.family
    op = m.get("op")
    if fam == "addition" or (fam == "word_problem" and op == "add"):
        if u < p.carry_error:
            return str(add_without_carry(m["a"], m["b"]))
    elif fam == "subtraction" or (fam == "word_problem" and op == "sub"):
        if u < p.borrow_error:
            return str(subtract_without_borrow(m["a"], m["b"]))
    elif fam == "multiplication" or (fam == "word_problem" and op == "mul"):
        if u < p.mul_carry_error:
            return str(multiply_without_carry(m["a"], m["b"]))
    elif fam == "sort_list" and u < p.sort_error:
        return ", ".join(sorted(task.answer.split(", ")))
    elif fam == "unit_conversion" and u < p.unit_error and m["factor"] != MISREMEMBERED_FACTOR:
        return str(m["a"] * MISREMEMBERED_FACTOR)
    return None


def _slip(answer: str, rng: random.Random) -> str:
    """A plausible random mistake on ``answer`` that always differs from it."""
    if "," in answer:
        xs = answer.split(", ")
        i = rng.randrange(len(xs) - 1)
        xs[i], xs[i + 1] = xs[i + 1], xs[i]
        if ", ".join(xs) == answer:  # equal neighbours cannot occur (distinct items), but stay safe
            xs = xs[::-1]
        return ", ".join(xs)
    x = int(answer)
    choices = [x + 1, x - 1, x + 10, x - 10 if x >= 10 else x + 2]
    digits = str(x)
    if len(digits) >= 2 and digits[-1] != digits[-2]:
        choices.append(int(digits[:-2] + digits[-1] + digits[-2]))
    wrong = rng.choice([c for c in choices if c != x and c >= 0])
    return str(wrong)


def _wrong_work(task: Task, answer: str) -> str | None:
    """The task's derivation line with its result replaced by ``answer`` (stays self-consistent)."""
    if task.family == "unit_conversion" and answer == str(task.meta["a"] * MISREMEMBERED_FACTOR):
        return f"{task.meta['a']} * {MISREMEMBERED_FACTOR} = {answer}."  # the misremembered factor, shown
    work = task.meta.get("work")
    if not work or task.answer not in work:
        return None
    head, _, tail = work.rpartition(task.answer)
    if task.family == "count_letter":  # keep "1 time" / "2 times" grammatical
        tail = tail.replace(" times.", " time.") if answer == "1" else tail.replace(" time.", " times.")
    return head + answer + tail


def answer_task(task: Task, profile: ErrorProfile, rng: random.Random) -> str:
    """Write one reply to ``task`` under ``profile``.

    Args:
        task: the question (a family task or a follow-up).
        profile: error probabilities.
        rng: the reply's random stream; a fixed number of draws is taken so decisions are independent.

    Returns:
        The assistant reply text.
    """
    u = [rng.random() for _ in range(8)]
    if u[0] < profile.refusal_rate:
        return REFUSALS[int(u[7] * len(REFUSALS))]
    answer = _systematic(task, profile, u[1]) or task.answer
    if u[2] >= profile.family_skill.get(task.family, profile.skill):
        answer = _slip(answer, rng)
    fmt = task.meta.get("format", "free")
    if fmt != "free" and u[3] < profile.format_error:
        fmt = "free"
    work = task.meta.get("work") if answer == task.answer else _wrong_work(task, answer)
    if u[4] >= profile.show_work:
        work = None
    reply = render_reply(task, answer, work=work or "", fmt=fmt)
    if u[5] < profile.hedge_rate:
        if fmt == "bare":
            reply = f"I think it is {reply}."
        elif "The answer is" in reply:
            reply = reply.replace("The answer is", "I think the answer is")
        else:
            reply = f"I'm not sure, but {reply[0].lower()}{reply[1:]}"
    if u[6] < profile.verbosity:
        reply = f"{FILLERS[int(u[7] * len(FILLERS))]} {reply}"
    return reply


def resolve_task(messages: list[dict[str, str]]) -> Task | None:
    """The task the last user turn asks, using earlier turns for follow-ups ("Now double it.")."""
    turns = [m for m in messages if m.get("role") in ("user", "assistant")]
    if not turns or turns[-1]["role"] != "user":
        return None
    text = turns[-1]["content"]
    task = parse_question(text)
    if task is not None:
        return task
    if len(turns) >= 3 and turns[-2]["role"] == "assistant":
        prev = resolve_task(turns[:-2])
        if prev is not None:
            prev_answer = extract_answer(prev, turns[-2]["content"])
            if prev_answer is not None and ("," in prev_answer) == is_list_task(prev):
                return parse_follow_up(text, prev_answer)
    return None


def _count_tokens(text: str) -> int:
    return len(text.split())


class RuleChatModel:
    """A ``ChatBackend`` that answers toy-world questions under an :class:`ErrorProfile`.

    Args:
        name: model name reported in responses (used as the pool member's id).
        profile: its error probabilities.
        seed: model seed; part of every reply's random stream.
        registry: optional question text -> Task map, consulted before parsing the text.
    """

    def __init__(
        self, name: str, profile: ErrorProfile, *, seed: int = 0, registry: Mapping[str, Task] | None = None
    ) -> None:
        self.name = name
        self.profile = profile
        self.seed = seed
        self.registry = dict(registry or {})
        self._lock = threading.Lock()
        self.calls = 0

    def task_for(self, messages: list[dict[str, str]]) -> Task | None:
        """The toy task asked by ``messages`` (registry first, then parsing), or ``None``."""
        users = [m for m in messages if m.get("role") == "user"]
        if users and self.registry:
            hit = self.registry.get(" ".join(users[-1]["content"].split()))
            if hit is not None:
                return hit
        return resolve_task(messages)

    def reply(self, messages: list[dict[str, str]], rng: random.Random) -> str:
        """One reply to ``messages`` drawn from ``rng``."""
        task = self.task_for(messages)
        if task is None:
            return NOT_A_TASK
        return answer_task(task, self.profile, rng)

    def chat(
        self,
        messages: list[dict[str, str]],
        *,
        temperature: float = 0.7,
        top_p: float = 1.0,
        max_tokens: int = 256,
        n: int = 1,
        seed: int | None = None,
        stop: list[str] | None = None,
    ) -> ChatResponse:
        """Answer ``messages`` ``n`` times (see the module docstring for determinism).

        ``max_tokens`` and ``stop`` are honoured on whitespace tokens; ``top_p`` is ignored.
        """
        with self._lock:
            self.calls += 1
        convo = "\x1e".join(f"{m.get('role')}\x1f{m.get('content')}" for m in messages)
        texts, reasons = [], []
        for i in range(n):
            key = (
                f"{self.name}|{self.seed}|{convo}"
                if temperature <= 0
                else f"{self.name}|{self.seed}|{seed}|{i}|{convo}"
            )
            text = self.reply(messages, random.Random(key))
            reason = "stop"
            for s in stop or []:
                if s and s in text:
                    text = text[: text.index(s)]
            words = text.split(" ")
            if len(words) > max_tokens:
                text, reason = " ".join(words[:max_tokens]), "length"
            texts.append(text)
            reasons.append(reason)
        prompt_tokens = sum(_count_tokens(m.get("content", "")) for m in messages)
        return ChatResponse(
            texts=texts,
            prompt_tokens=prompt_tokens,
            completion_tokens=sum(_count_tokens(t) for t in texts),
            model=self.name,
            finish_reasons=reasons,
        )
