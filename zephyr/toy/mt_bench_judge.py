"""MT-Bench verifier judge: answers MT-Bench judge prompts by verifying answers instead of asking GPT-4 (toy world).

``MTBenchVerifierJudge`` is a ``ChatBackend``. It reads the judge prompt the way a human grader would read
it: it finds the question, the reference answer (when the template has one) and the assistant's answer
through the block markers of FastChat's templates (``[The Start of Assistant's Answer]``,
``### Assistant A:`` ...), grades the answer, and replies with a one-line explanation ending in
``Rating: [[n]]`` (single mode) or ``[[A]]``/``[[B]]``/``[[C]]`` (pairwise mode).

Grading rules (deliberately simple and documented, so scores can be checked by hand):

* With a reference: the reference's final answer is read with the toy world's extractor
  (``zephyr.toy.tasks.extract_answer``: "The answer is 42.", lists "2, 4, 7, 9"; a word such as a name
  after "The answer is"; a reply without "the answer is" that names the word and no other capitalised
  candidate from the reference counts as final). The assistant's final answer equal to it: 10 (9 if the
  reply is over 200 words, for padding). The right answer present but not as the final answer: 5. Wrong: 2. Empty: 1.
* Without a reference (writing, roleplay, ...): a proxy for effort and relevance, 1 to 10:
  ``1 + 4 * min(1, words / 60)`` for length, ``+ 3 * overlap`` with the question's content words
  (share of question words of 4+ letters found in the answer), ``+ 2`` when under half of the words are
  repeats of other words (distinct / total >= 0.5). Rounded to an integer.
* Pairwise: both answers are graded as above; a difference below 1 point is a tie (``[[C]]``). The
  verdict depends only on the answers, never on their positions, so it is swap-consistent.
"""

from __future__ import annotations

import re

from zephyr.chat import ChatResponse

_WORD = re.compile(r"[A-Za-z']+")
_ANSWER_IS = re.compile(r"(?:answer is|answer:)\s*([A-Za-z][A-Za-z' -]*?)\s*[.!\n]?\s*$", re.IGNORECASE)


def _between(text: str, start: str, end: str) -> str | None:
    i = text.find(start)
    if i < 0:
        return None
    i += len(start)
    j = text.find(end, i)
    return text[i:j].strip("\n") if j >= 0 else None


def _last_between(text: str, start: str, end: str) -> str | None:
    i = text.rfind(start)
    if i < 0:
        return None
    i += len(start)
    j = text.find(end, i)
    return text[i:j].strip("\n") if j >= 0 else None


def _final_of(reference: str):
    """The toy-world task standing for a reference: ``(Task, kind)`` with kind "list", "number" or "word"."""
    from zephyr.toy.tasks import Task, extract_answer

    as_list = extract_answer(Task("reference", "", "0, 0"), reference)
    if as_list is not None:
        return Task("reference", "", as_list), "list"
    m = _ANSWER_IS.search(reference.strip())
    if m and not any(ch.isdigit() for ch in m.group(1)):
        return Task("reference", "", m.group(1).strip().lower()), "word"
    as_num = extract_answer(Task("reference", "", "0"), reference)
    if as_num is not None:
        return Task("reference", "", as_num), "number"
    return None, None


def grade_with_reference(answer: str, reference: str) -> tuple[int, str]:
    """Score ``answer`` against ``reference``'s final answer (rules in the module docstring)."""
    from zephyr.toy.tasks import extract_answer

    if not answer.strip():
        return 1, "The answer is empty."
    task, kind = _final_of(reference)
    if task is None:
        return grade_open(answer, "")[0], "The reference has no final answer to check; graded as open-ended."
    if kind == "word":
        words = [w.lower() for w in _WORD.findall(answer)]
        present = task.answer in words
        m = _ANSWER_IS.search(answer.strip())
        if m:
            final = m.group(1).strip().lower()
            right_final = final == task.answer or final.endswith(" " + task.answer)
        else:  # no "the answer is": right when the target is named and no other candidate from the reference is
            others = {w.lower() for w in re.findall(r"\b[A-Z][a-z]+\b", reference)} - {task.answer, "the"}
            right_final = present and not others & set(words)
    else:
        got = extract_answer(task, answer)
        right_final = got == task.answer
        if kind == "list":
            present = task.answer.replace(" ", "") in re.sub(r"\s+", "", answer)
        else:
            present = task.answer in re.findall(r"-?\d+", answer.replace(",", ""))
    if right_final:
        n_words = len(answer.split())
        score = 9 if n_words > 200 else 10
        return score, f"The final answer {task.answer} matches the reference." + (
            " The reply is padded." if score == 9 else ""
        )
    if present:
        return 5, f"The reference answer {task.answer} appears, but it is not the assistant's final answer."
    return 2, f"The assistant's final answer does not match the reference answer {task.answer}."


def grade_open(answer: str, question: str) -> tuple[int, str]:
    """Score an open-ended answer by length, overlap with the question and repetition (module docstring)."""
    words = [w.lower() for w in _WORD.findall(answer)]
    if not words:
        return 1, "The answer is empty."
    length = min(1.0, len(words) / 60)
    q_words = {w.lower() for w in _WORD.findall(question) if len(w) >= 4}
    overlap = len(q_words & set(words)) / len(q_words) if q_words else 0.0
    varied = len(set(words)) / len(words) >= 0.5
    score = round(1 + 4 * length + 3 * overlap + (2 if varied else 0))
    score = max(1, min(10, score))
    return score, (
        f"{len(words)} words, {overlap:.0%} of the question's key words, "
        f"{'varied' if varied else 'repetitive'} wording."
    )


def _grade(question: str, answer: str, reference: str | None) -> tuple[int, str]:
    return grade_with_reference(answer, reference) if reference else grade_open(answer, question)


def parse_single(prompt: str) -> tuple[str, str, str | None]:
    """``(question, answer, reference)`` of the turn being judged, from a single-mode judge prompt.

    Raises:
        ValueError: when the prompt has neither FastChat single-turn nor multi-turn answer blocks.
    """
    answer = _between(prompt, "[The Start of Assistant's Answer]\n", "\n[The End of Assistant's Answer]")
    if answer is not None:
        question = _between(prompt, "[Question]\n", "\n\n[The Start of") or ""
        reference = _between(prompt, "[The Start of Reference Answer]\n", "\n[The End of Reference Answer]")
        return question, answer, reference
    convo = _between(
        prompt, "<|The Start of Assistant A's Conversation with User|>", "<|The End of Assistant A's Conversation"
    )
    if convo is None:
        raise ValueError("judge prompt has no assistant answer block")
    question = _last_between(convo, "### User:\n", "\n\n### Assistant A:") or ""
    answer = convo[convo.rfind("### Assistant A:\n") + len("### Assistant A:\n") :].strip("\n")
    ref_block = _between(prompt, "<|The Start of Reference Answer|>", "<|The End of Reference Answer|>")
    reference = None
    if ref_block is not None:
        reference = ref_block[ref_block.rfind("### Reference answer:\n") + len("### Reference answer:\n") :]
        reference = reference.strip("\n")
    return question, answer, reference


def parse_pair(prompt: str) -> tuple[str, str, str, str | None]:
    """``(question, answer_a, answer_b, reference)`` from a pairwise judge prompt (single- or multi-turn).

    Raises:
        ValueError: when the prompt lacks assistant A's or B's answer block.
    """
    a = _between(prompt, "[The Start of Assistant A's Answer]\n", "\n[The End of Assistant A's Answer]")
    b = _between(prompt, "[The Start of Assistant B's Answer]\n", "\n[The End of Assistant B's Answer]")
    if a is not None and b is not None:
        question = _between(prompt, "[User Question]\n", "\n\n[The Start of") or ""
        reference = _between(prompt, "[The Start of Reference Answer]\n", "\n[The End of Reference Answer]")
        return question, a, b, reference
    answers = []
    question = ""
    for tag in ("A", "B"):
        convo = _between(
            prompt,
            f"<|The Start of Assistant {tag}'s Conversation with User|>",
            f"<|The End of Assistant {tag}'s Conversation",
        )
        if convo is None:
            raise ValueError(f"judge prompt has no assistant {tag} answer block")
        question = _last_between(convo, "### User:\n", f"\n\n### Assistant {tag}:") or question
        marker = f"### Assistant {tag}:\n"
        answers.append(convo[convo.rfind(marker) + len(marker) :].strip("\n"))
    ref_block = _between(prompt, "<|The Start of Reference Answer|>", "<|The End of Reference Answer|>")
    reference = None
    if ref_block is not None:
        marker = "### Reference answer:\n"
        reference = ref_block[ref_block.rfind(marker) + len(marker) :].strip("\n")
    return question, answers[0], answers[1], reference


class MTBenchVerifierJudge:
    """Offline MT-Bench judge (a ``ChatBackend``); see the module docstring for the grading rules.

    Args:
        name: the judge name recorded in judgment files.
        tie_margin: pairwise scores closer than this are a tie.
    """

    def __init__(self, name: str = "toy-verifier-judge", tie_margin: float = 1.0):
        self.name = name
        self.tie_margin = tie_margin

    def judge_text(self, system: str, prompt: str) -> str:
        """The judgment for one judge prompt (``system`` decides pairwise vs single mode)."""
        if "[[A]]" in system or ("[[A]]" in prompt and "Assistant B" in prompt):
            question, a, b, ref = parse_pair(prompt)
            sa, why_a = _grade(question, a, ref)
            sb, why_b = _grade(question, b, ref)
            verdict = "[[C]]" if abs(sa - sb) < self.tie_margin else ("[[A]]" if sa > sb else "[[B]]")
            return f"Assistant A: {why_a} ({sa}/10). Assistant B: {why_b} ({sb}/10). Verdict: {verdict}"
        question, answer, ref = parse_single(prompt)
        score, why = _grade(question, answer, ref)
        return f"{why} Rating: [[{score}]]"

    def chat(
        self,
        messages: list[dict[str, str]],
        *,
        temperature: float = 0.0,
        top_p: float = 1.0,
        max_tokens: int = 2048,
        n: int = 1,
        seed: int | None = None,
        stop: list[str] | None = None,
    ) -> ChatResponse:
        system = "\n".join(m["content"] for m in messages if m["role"] == "system")
        users = [m["content"] for m in messages if m["role"] == "user"]
        if not users:
            raise ValueError("MTBenchVerifierJudge needs a user message holding the judge prompt")
        try:
            text = self.judge_text(system, users[-1])
        except ValueError as e:
            text = f"I cannot find the answer to grade in this prompt ({e})."
        return ChatResponse(texts=[text] * n, model=self.name, finish_reasons=["stop"] * n)
