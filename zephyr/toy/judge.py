"""Verifier judge: a ``ChatBackend`` that reads real UltraFeedback judge prompts and answers like GPT-4.

It gets the *same* prompt text a GPT-4 judge would get, so the real prompt builders, parser, retry
logic and binarizer all run unchanged in the offline toy world:

- an aspect prompt (``### Input`` / ``Instruction: ...`` / ``Texts:`` / ``<text 1> ...``), whose aspect
  is recognised from its rubric title ("Instruction Following Assessment", "Honesty and Uncertainty
  Expression Assessment", "Truthfulness and Hallucination Assessment", "Informativeness / Helpfulness
  Assessment"); the reply has one ``#### Output for Text k`` block per text, with ``Rating:`` and
  ``Rationale:`` lines, plus ``Type:`` lines for truthfulness and helpfulness;
- the overall critique prompt (``### Instruction`` / ``### Answer``), answered with
  ``### Feedback`` text and a final ``Overall Score: n`` line (1-10);
- a follow-up turn after a critique (UltraFeedback's score re-ask), answered with the bare score.

The judge recovers the task from the instruction (``tasks.parse_question`` or a registry) and checks
every text with the verifier, so its ratings follow the truth: correctness drives truthfulness and
helpfulness, the format instruction drives instruction following, and confidence versus correctness
drives honesty (rubric levels as in ultrafeedback_judge.md §2). An instruction it cannot verify gets a
plain "cannot assess" reply that no parser accepts, so the pipeline records a failure instead of a
made-up rating. ``noise`` makes it occasionally write malformed output to exercise retries.
"""

from __future__ import annotations

import hashlib
import random
import re
import threading
from collections.abc import Mapping
from dataclasses import dataclass

from zephyr.chat import ChatResponse
from zephyr.toy.tasks import Task, extract_answer, follows_format, is_hedged, is_refusal, parse_question

ASPECT_TITLES = {
    "instruction_following": "Instruction Following Assessment",
    "honesty": "Honesty and Uncertainty Expression Assessment",
    "truthfulness": "Truthfulness and Hallucination Assessment",
    "helpfulness": "Informativeness / Helpfulness Assessment",
}
TYPED_ASPECTS = frozenset({"truthfulness", "helpfulness"})
CANNOT_ASSESS = "I cannot assess these texts: the instruction is not a task I can verify."

_FAMILY_HINTS = {
    "addition": "Add the digits column by column and remember to carry.",
    "subtraction": "Subtract column by column and borrow where a digit is too small.",
    "multiplication": "Multiply each digit and remember to carry into the next column.",
    "sort_list": "Compare the numbers by their value, not as text.",
    "reverse_list": "Read the list from the last item to the first.",
    "count_letter": "Go through the word letter by letter and count every occurrence.",
    "unit_conversion": "Multiply by the conversion factor between the two units.",
    "word_problem": "Decide which operation the story describes, then compute it carefully.",
    "follow_up": "Apply the operation to the previous answer carefully.",
}


@dataclass(frozen=True)
class Verdict:
    """What the verifier found in one text."""

    answer: str | None
    correct: bool
    refusal: bool
    hedged: bool
    follows_format: bool
    format_required: bool
    extra: bool  # words beyond the answer and its derivation (filler)
    shows_work: bool


def verify(task: Task, text: str) -> Verdict:
    """Check one completion against ``task``."""
    refusal = is_refusal(text)
    answer = None if refusal else extract_answer(task, text)
    correct = answer == task.answer
    # list answers have no derivation to show; other families show "a + b = c", "contains", "largest"
    shows_work = task.meta.get("work") is None or bool(re.search(r"=|\bcontains\b|\blargest\b", text))
    extra = bool(re.match(r"\s*(Sure|Let me|Good question|Of course|Certainly)", text))
    return Verdict(
        answer=answer,
        correct=correct,
        refusal=refusal,
        hedged=is_hedged(text),
        follows_format=follows_format(task, text),
        format_required=task.meta.get("format", "free") != "free",
        extra=extra,
        shows_work=shows_work,
    )


# --------------------------------------------------------------------------------------------------
# Ratings per aspect: (rating, types, type rationale, rating rationale)
# --------------------------------------------------------------------------------------------------
def _fmt_phrase(task: Task) -> str:
    return {"bare": "give only the answer", "tagged": "end with 'Answer: <x>'"}.get(task.meta.get("format", ""), "")


def rate(task: Task, v: Verdict, aspect: str) -> tuple[int, str, str, str]:
    """Rate one verdict on one aspect (1-5), following the UltraFeedback rubric levels.

    Returns:
        ``(rating, types, type_rationale, rationale)``; ``types`` is ``"None"`` or ``"1, 3"`` style and is
        only used for truthfulness and helpfulness.
    """
    fmt = _fmt_phrase(task)
    if aspect == "instruction_following":
        if v.refusal:
            return 1, "", "", "The text declines the task and does not address the instruction at all."
        if v.answer is None:
            return 1, "", "", "The text does not give an answer to the instruction."
        if v.correct and v.follows_format:
            if v.extra:
                return 4, "", "", "The text solves the task as asked but adds unnecessary filler."
            return 5, "", "", "The text fully solves the task" + (f" and follows the request to {fmt}." if fmt else ".")
        if v.correct:
            return 3, "", "", f"The text solves the task but ignores the instruction to {fmt}."
        if v.follows_format:
            return 3, "", "", "The text respects the requested form, but its answer does not solve the task."
        return 2, "", "", f"The text gets the answer wrong and does not {fmt} as instructed."
    if aspect == "honesty":
        if v.refusal:
            return 3, "", "", "The model declines to answer, which is honest but unhelpful for a question it can solve."
        if v.correct and not v.hedged:
            return 5, "", "", "The answer is correct and stated with appropriate confidence."
        if v.correct:
            return 4, "", "", "The answer is correct, but the text expresses uncertainty it does not need."
        if v.hedged:
            return 2, "", "", "The text expresses some uncertainty, yet its answer is entirely wrong."
        return 1, "", "", "The text is confidently incorrect: it states a wrong answer without any doubt."
    if aspect == "truthfulness":
        if v.refusal:
            return 4, "None", "The text makes no claims about the task.", "No hallucination, but it gives no answer."
        if v.correct:
            return 5, "None", "No hallucination or error.", "The answer is accurate and free of hallucination."
        if v.answer is None:
            return 2, "2", "The text does not engage with the given input.", "Severe deviation from the instruction."
        return (
            2,
            "1, 3",
            "The final answer contradicts the correct result; the computation contains a logical error.",
            "The main claim of the text, its final answer, is wrong.",
        )
    if aspect == "helpfulness":
        if v.refusal:
            return 1, "None", "The text provides no information.", "The text gives no answer, so it is not helpful."
        if v.answer is None:
            return 1, "None", "The text is not relevant to the task.", "The text does not answer the question."
        if not v.correct:
            if v.shows_work:
                return 2, "1", "The text is relevant and shows its steps.", "The final answer is incorrect."
            return 1, "None", "The text gives an unsupported answer.", "The answer is incorrect and unexplained."
        types = ["1"] + (["2"] if v.shows_work else []) + ([] if v.extra else ["3"])
        type_note = (
            "Clear and relevant"
            + (", shows the computation" if v.shows_work else "")
            + (", concise." if not v.extra else ", though with some filler.")
        )
        if (v.follows_format and not v.extra) and (v.shows_work or task.meta.get("format") == "bare"):
            return 5, ", ".join(types), type_note, "Correct, concise and exactly what was asked."
        return 4, ", ".join(types), type_note, "Correct and useful, with minor room for improvement."
    raise ValueError(f"zephyr/toy/judge.py: unknown aspect {aspect!r}; known: {sorted(ASPECT_TITLES)}")


def overall_score(task: Task, v: Verdict) -> tuple[int, str]:
    """Critique score (1-10) and feedback text for one completion; never reveals the reference answer."""
    hint = _FAMILY_HINTS.get(task.family, "Check the computation.")
    fmt = _fmt_phrase(task)
    if v.refusal:
        return 2, "You declined a question you could answer. Attempt the task and show the key step."
    if v.answer is None:
        return 1, "The answer never states a result for the task. State the final answer clearly."
    if not v.correct:
        tail = f" Also {fmt}, as the instruction asks." if v.format_required and not v.follows_format else ""
        score = 2 if (v.format_required and not v.follows_format) else 3
        return score, f"The final answer is incorrect. {hint}{tail}"
    notes, score = [], 10
    if v.format_required and not v.follows_format:
        notes.append(f"The instruction asked you to {fmt}; follow the requested format.")
        score -= 4
    if v.hedged:
        notes.append("Your result is right, so state it confidently instead of hedging.")
        score -= 2
    if v.extra:
        notes.append("Drop the filler sentence and get to the point.")
        score -= 1
    if not notes:
        notes.append("Correct, concise and it follows the instruction. Well done.")
    return score, " ".join(notes)


# --------------------------------------------------------------------------------------------------
# Prompt parsing
# --------------------------------------------------------------------------------------------------
_TEXT_MARK = re.compile(r"^<text (\d+)> ?", re.MULTILINE)


def parse_annotation_prompt(prompt: str) -> tuple[str, str, list[str]] | None:
    """Split an aspect prompt into ``(aspect, instruction, texts)``, or ``None`` if it is not one."""
    # the rubric's title comes first; later text may mention other aspects, so take the earliest title
    low = prompt.lower()
    found = {a: low.find(title.lower()) for a, title in ASPECT_TITLES.items()}
    found = {a: i for a, i in found.items() if i >= 0}
    if not found:
        return None
    aspect = min(found, key=found.__getitem__)
    start = prompt.rfind("### Input")
    body = prompt[start:] if start >= 0 else prompt
    m = re.search(r"Instruction: (.*?)\n\s*Texts:\s*\n", body, re.DOTALL)
    if not m:
        return None
    instruction = m.group(1).strip()
    rest = body[m.end() :]
    end = len(rest)
    for stop in ("\nWorld Knowledge:", "\n### Output"):
        i = rest.find(stop)
        if i >= 0:
            end = min(end, i)
    rest = rest[:end]
    marks = list(_TEXT_MARK.finditer(rest))
    if not marks or [int(x.group(1)) for x in marks] != list(range(1, len(marks) + 1)):
        return None
    texts = [
        rest[a.end() : (b.start() if b is not None else len(rest))].strip() for a, b in zip(marks, marks[1:] + [None])
    ]
    return aspect, instruction, texts


def parse_critique_prompt(prompt: str) -> tuple[str, str] | None:
    """Split a critique prompt into ``(instruction, answer)``, or ``None`` if it is not one."""
    m = re.search(r"### Instruction\n(.*?)\n\s*### Answer\n(.*?)\n---", prompt, re.DOTALL)
    if not m:
        return None
    return m.group(1).strip(), m.group(2).strip()


# --------------------------------------------------------------------------------------------------
# The backend
# --------------------------------------------------------------------------------------------------
class VerifierJudge:
    """A judge that knows the truth, speaking the UltraFeedback output format.

    Args:
        seed: seed of the noise stream.
        noise: probability that a reply is malformed (missing block, bad rating, no score line, ...).
            Retries of the same prompt draw fresh noise, so a retrying client eventually succeeds.
        registry: optional question text -> Task map, consulted before parsing the instruction.
        name: model name reported in responses.
    """

    def __init__(
        self,
        seed: int = 0,
        *,
        noise: float = 0.0,
        registry: Mapping[str, Task] | None = None,
        name: str = "toy-verifier",
    ) -> None:
        if not 0.0 <= noise <= 1.0:
            raise ValueError(f"zephyr/toy/judge.py: noise must be in [0, 1], got {noise}")
        self.name = name
        self.seed = seed
        self.noise = noise
        self.registry = {" ".join(k.split()): v for k, v in (registry or {}).items()}
        self._attempts: dict[str, int] = {}
        self._lock = threading.Lock()

    def task_for(self, instruction: str) -> Task | None:
        """Recover the task from the instruction (registry, then parsing; a trailing ``Note:`` is dropped)."""
        for cand in (instruction, instruction.split("\nNote: ")[0]):
            key = " ".join(cand.split())
            task = self.registry.get(key) or parse_question(key)
            if task is not None:
                return task
        return None

    # ---- reply writers -------------------------------------------------------------------------
    def annotate(self, aspect: str, task: Task, texts: list[str]) -> str:
        """The UltraFeedback-format reply rating ``texts`` on ``aspect``."""
        blocks = []
        for k, text in enumerate(texts, start=1):
            rating, types, type_note, rationale = rate(task, verify(task, text), aspect)
            if aspect in TYPED_ASPECTS:
                body = f"Type: {types}\nRationale: {type_note}\nRating: {rating}\nRationale: {rationale}"
            else:
                body = f"Rating: {rating}\nRationale: {rationale}"
            blocks.append(f"#### Output for Text {k}\n{body}")
        return "\n\n".join(blocks)

    def critique(self, task: Task, answer: str) -> str:
        """The critique reply: ``### Feedback`` text and the ``Overall Score`` line."""
        score, feedback = overall_score(task, verify(task, answer))
        return f"### Feedback\n{feedback}\nOverall Score: {score}"

    def _malformed(self, reply: str, rng: random.Random) -> str:
        kind = rng.randrange(5)
        if kind == 0 and "\n\n" in reply:  # a block is missing
            return reply.rsplit("\n\n", 1)[0]
        if kind == 1:  # out-of-range rating
            return re.sub(r"(Rating|Overall Score): \d+", r"\1: 11", reply, count=1)
        if kind == 2:  # rating label renamed
            return reply.replace("Rating:", "Score:", 1).replace("Overall Score:", "Score out of ten:", 1)
        if kind == 3:  # chatter around the answer
            return "Here is my evaluation of the texts.\n\n" + reply + "\n\nLet me know if you need more detail."
        return reply[: max(1, len(reply) // 3)]  # truncated

    def respond(self, messages: list[dict[str, str]]) -> str:
        """The judge's reply to a conversation (no noise)."""
        users = [m["content"] for m in messages if m.get("role") == "user"]
        if not users:
            return CANNOT_ASSESS
        first = users[0]
        parsed = parse_annotation_prompt(first)
        if parsed is not None:
            aspect, instruction, texts = parsed
            task = self.task_for(instruction)
            return CANNOT_ASSESS if task is None else self.annotate(aspect, task, texts)
        crit = parse_critique_prompt(first)
        if crit is not None:
            instruction, answer = crit
            task = self.task_for(instruction)
            if task is None:
                return CANNOT_ASSESS
            if len(users) > 1:  # score re-ask after a stored critique: reply with the score only
                return str(overall_score(task, verify(task, answer))[0])
            return self.critique(task, answer)
        return CANNOT_ASSESS

    def chat(
        self,
        messages: list[dict[str, str]],
        *,
        temperature: float = 0.0,
        top_p: float = 1.0,
        max_tokens: int = 1024,
        n: int = 1,
        seed: int | None = None,
        stop: list[str] | None = None,
    ) -> ChatResponse:
        """Judge ``messages``; ``n`` choices share the verdict and differ only in drawn noise."""
        reply = self.respond(messages)
        digest = hashlib.sha256(repr(messages).encode("utf-8")).hexdigest()
        with self._lock:
            attempt = self._attempts.get(digest, 0)
            self._attempts[digest] = attempt + n
        texts = []
        for i in range(n):
            rng = random.Random(f"{self.name}|{self.seed}|{digest}|{attempt + i}")
            texts.append(self._malformed(reply, rng) if rng.random() < self.noise else reply)
        words = [len(t.split()) for t in texts]
        texts = [" ".join(t.split(" ")[:max_tokens]) if w > max_tokens else t for t, w in zip(texts, words)]
        return ChatResponse(
            texts=texts,
            prompt_tokens=sum(len(m.get("content", "").split()) for m in messages),
            completion_tokens=sum(min(w, max_tokens) for w in words),
            model=self.name,
            finish_reasons=["length" if w > max_tokens else "stop" for w in words],
        )
