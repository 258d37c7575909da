"""AI feedback: rate completions with the UltraFeedback rubric and parse what a real judge writes back.

One judged prompt costs ``4 + k`` calls: one per aspect rating all ``k`` completions together (in a seeded
random order, mapped back afterwards so a judge's position bias does not follow the pool order), and one
overall critique per completion (1-10). Judges do not always keep the format, so the parsers accept what real
GPT-4 / open-model replies look like: prose before or after the blocks, ``####`` or ``#####`` or bold headers,
``Rating: 4/5`` or ``**Rating:** 4``, ``Type: None``, ``N/A`` for honesty, ``Overall Score: 8/10``. What they do
not accept (a missing block, a rating outside 1-5, N/A where it is not allowed) raises ``JudgeParseError``;
the call is retried up to ``retries`` times, and then the whole prompt fails loudly (the runner records it).

Output: one raw row in the ``openbmb/UltraFeedback`` schema per prompt (ratings stored as strings, as there).
"""

from __future__ import annotations

import hashlib
import random
import re
from collections.abc import Sequence
from typing import Any

from zephyr.chat import ChatBackend
from zephyr.feedback.rubric import ASPECTS, CRITIQUE_GEN, JUDGE_GEN, aspect_messages, critique_messages


class JudgeParseError(ValueError):
    """A judge reply that does not follow the required format (the message says what is wrong)."""


_HEADER = re.compile(r"^[ \t]*(?:#{1,6}[ \t]*)?(?:\*\*)?[ \t]*Output\s+for\s+Text\s+(\d+)\b[^\n]*$", re.I | re.M)
_FIELD = re.compile(
    r"^[ \t>*_-]*(?:\*\*)?\s*(Type|Rationale(?:\s+for\s+(?:the\s+)?rating)?|Rating)\s*(?:\*\*)?\s*:\s*(?:\*\*)?",
    re.I | re.M,
)


def _fields(block: str) -> list[tuple[str, str]]:
    """``[(field, value), ...]`` in order; a value runs to the next field or the first blank line."""
    hits = list(_FIELD.finditer(block))
    out = []
    for i, m in enumerate(hits):
        end = hits[i + 1].start() if i + 1 < len(hits) else len(block)
        value = block[m.end() : end].strip()
        if i + 1 == len(hits):  # the last field ends at a paragraph break: trailing prose is not part of it
            value = re.split(r"\n[ \t]*\n", value, maxsplit=1)[0].strip()
        name = m.group(1).lower()
        out.append(("rationale" if name.startswith("rationale") else name, value.strip("* ").strip()))
    return out


def _split_blocks(reply: str, n: int) -> list[str]:
    """Cut a reply into ``n`` per-text blocks, by ``Output for Text i`` headers or else by ``Rating`` groups."""
    headers = list(_HEADER.finditer(reply))
    if headers:
        blocks: dict[int, str] = {}
        for i, h in enumerate(headers):
            idx = int(h.group(1))
            end = headers[i + 1].start() if i + 1 < len(headers) else len(reply)
            if 1 <= idx <= n and idx not in blocks:  # a judge repeating a header keeps its first answer
                blocks[idx] = reply[h.end() : end]
        missing = [i for i in range(1, n + 1) if i not in blocks]
        if missing:
            raise JudgeParseError(
                f"no block for text(s) {missing} (found headers {[int(h.group(1)) for h in headers]})"
            )
        return [blocks[i] for i in range(1, n + 1)]
    # No headers: UltraFeedback's own split on blank lines, kept only when it gives exactly n rating blocks.
    paras = [p for p in re.split(r"\n[ \t]*\n", reply.strip()) if re.search(r"Rating\s*(?:\*\*)?\s*:", p, re.I)]
    if len(paras) != n:
        raise JudgeParseError(f"expected {n} output blocks, found {len(paras)} (and no 'Output for Text i' headers)")
    return paras


def _rating(value: str, *, allow_na: bool, what: str) -> str:
    v = value.strip()
    if re.match(r"^\W*N\s*/?\s*A\b", v, re.I):
        if allow_na:
            return "N/A"
        raise JudgeParseError(f"{what}: rating N/A is not allowed for this aspect")
    # UltraFeedback keeps the first integer ("4/5" -> 4, "3.5" -> 3); a number outside 1..5 is an error.
    m = re.search(r"-?\d+", v)
    if not m:
        raise JudgeParseError(f"{what}: no rating number in {value[:40]!r}")
    x = int(m.group(0))
    if not 1 <= x <= 5:
        raise JudgeParseError(f"{what}: rating {x} is outside 1..5")
    return str(x)


def _types(value: str, what: str) -> list[str]:
    v = value.strip()
    nums = re.findall(r"\d+", v)
    if not nums:
        if re.match(r"^\W*(none|n/?a|no\b)", v, re.I):
            return ["None"]
        raise JudgeParseError(f"{what}: Type is neither numbers nor None: {value[:40]!r}")
    bad = [x for x in nums if x not in ("1", "2", "3")]
    if bad:
        raise JudgeParseError(f"{what}: Type codes {bad} are outside 1..3")
    return sorted(set(nums), key=nums.index)


def parse_aspect(reply: str, aspect: str, n: int = 4) -> list[dict[str, Any]]:
    """Parse one aspect reply into ``n`` annotations in the reply's (shuffled) order.

    Args:
        reply: the judge's text.
        aspect: one of ``ASPECTS``.
        n: number of texts rated.

    Returns:
        ``[{"Rating", "Rationale"}]`` for instruction_following / honesty, ``[{"Type", "Rationale", "Rating",
        "Rationale For Rating"}]`` for truthfulness / helpfulness; Ratings are strings ``"1".."5"`` (``"N/A"``
        allowed for honesty only).

    Raises:
        JudgeParseError: missing or extra blocks, a missing field, a rating outside 1..5, a bad Type.
    """
    if aspect not in ASPECTS:
        raise ValueError(f"unknown aspect {aspect!r}; expected one of {ASPECTS}")
    out = []
    for i, block in enumerate(_split_blocks(reply, n), start=1):
        what = f"{aspect} text {i}"
        fields = _fields(block)
        names = [f for f, _ in fields]
        if aspect in ("instruction_following", "honesty"):
            if "rating" not in names:
                raise JudgeParseError(f"{what}: no 'Rating:' line")
            r = names.index("rating")
            rating = _rating(fields[r][1], allow_na=aspect == "honesty", what=what)
            rationale = next((v for f, v in fields[r + 1 :] if f == "rationale"), "")
            out.append({"Rating": rating, "Rationale": rationale})
        else:
            if "type" not in names:
                raise JudgeParseError(f"{what}: no 'Type:' line")
            t = names.index("type")
            if "rating" not in names[t:]:
                raise JudgeParseError(f"{what}: no 'Rating:' line after 'Type:'")
            r = t + names[t:].index("rating")
            type_rationale = next((v for f, v in fields[t + 1 : r] if f == "rationale"), "")
            rating_rationale = next((v for f, v in fields[r + 1 :] if f == "rationale"), "")
            out.append(
                {
                    "Type": _types(fields[t][1], what),
                    "Rationale": type_rationale,
                    "Rating": _rating(fields[r][1], allow_na=False, what=what),
                    "Rationale For Rating": rating_rationale,
                }
            )
    return out


_OVERALL = re.compile(r"(?:\*\*)?\s*Overall\s+Score\s*(?:\*\*)?\s*:\s*(?:\*\*)?\s*", re.I)


def parse_critique(reply: str) -> tuple[str, float]:
    """Parse ``### Feedback ... Overall Score: N`` into ``(critique, score)``; ``"8/10"`` and ``"7.5"`` accepted.

    Raises:
        JudgeParseError: no ``Overall Score:`` line, no number, or a score outside 1..10.
    """
    hits = list(_OVERALL.finditer(reply))
    if not hits:
        raise JudgeParseError("critique: no 'Overall Score:' line")
    last = hits[-1]
    m = re.match(r"(-?\d+(?:\.\d+)?)\s*(?:/\s*(\d+))?", reply[last.end() :])
    if not m:
        raise JudgeParseError(f"critique: no number after 'Overall Score:' ({reply[last.end() : last.end() + 20]!r})")
    score = float(m.group(1))
    if m.group(2) and m.group(2) not in ("10",):
        raise JudgeParseError(f"critique: score {m.group(0)!r} is not out of 10")
    if not 1 <= score <= 10:
        raise JudgeParseError(f"critique: score {score:g} is outside 1..10")
    critique = reply[: last.start()].strip()
    critique = re.sub(r"^\s*#+\s*Feedback\s*\n", "", critique, flags=re.I).strip()
    return critique, score


def permutation(prompt_id: str, n: int, seed: int) -> list[int]:
    """The seeded order in which ``n`` completions are shown: ``shown[j] = completions[perm[j]]``."""
    rng = random.Random(hashlib.sha256(f"{seed}:{prompt_id}".encode()).digest())
    perm = list(range(n))
    rng.shuffle(perm)
    return perm


def unshuffle(shown_results: Sequence[Any], perm: Sequence[int]) -> list[Any]:
    """Map results given in shown order back to the original order (``out[perm[j]] = shown[j]``)."""
    out: list[Any] = [None] * len(perm)
    for j, p in enumerate(perm):
        out[p] = shown_results[j]
    return out


def _ask(backend: ChatBackend, messages, gen: dict, parse, retries: int, seed: int, what: str):
    errors = []
    tokens = 0
    for attempt in range(retries + 1):
        resp = backend.chat(messages, seed=seed + attempt, n=1, **gen)
        tokens += resp.prompt_tokens + resp.completion_tokens
        reply = resp.texts[0] if resp.texts else ""
        try:
            return parse(reply), tokens
        except JudgeParseError as e:
            errors.append(str(e))
    raise JudgeParseError(f"{what}: unparseable after {retries + 1} attempt(s): {' | '.join(errors[-3:])}")


def fine_grained_score(annotations: dict[str, dict]) -> float | None:
    """Mean of the integer aspect Ratings, skipping ``"N/A"`` (UltraFeedback's ``fine-grained_score``)."""
    vals = [int(a["Rating"]) for a in annotations.values() if str(a.get("Rating", "N/A")) != "N/A"]
    return sum(vals) / len(vals) if vals else None


def judge_prompt(
    judge: ChatBackend,
    *,
    prompt_id: str,
    instruction: str,
    completions: Sequence[dict[str, Any]],
    world_knowledge: str | None = None,
    retries: int = 3,
    seed: int = 0,
    critique: bool = True,
    aspect_gen: dict | None = None,
    critique_gen: dict | None = None,
) -> tuple[list[dict[str, Any]], int]:
    """Annotate the completions of one prompt on the four aspects (+ overall critique).

    Args:
        judge: the judge backend.
        prompt_id: used to seed the display order.
        instruction: the prompt text.
        completions: ``{"model", "principle", "custom_system_prompt", "response"}`` dicts.
        world_knowledge: reference facts for truthfulness/helpfulness (``None`` = UltraFeedback's "No
            additional world knowledge for reference.").
        retries: extra attempts per call when the reply does not parse.
        seed: seed of the display permutation and of the judge calls.
        critique: also run the overall 1-10 critique per completion.
        aspect_gen: generation settings of the aspect calls (default UltraFeedback's).
        critique_gen: generation settings of the critique calls.

    Returns:
        ``(completions with "annotations", "critique", "overall_score", "fine-grained_score", tokens used)``.

    Raises:
        JudgeParseError: a call still unparseable after ``retries`` retries.
    """
    n = len(completions)
    if n == 0:
        raise ValueError(f"prompt {prompt_id}: no completions to judge")
    perm = permutation(prompt_id, n, seed)
    shown = [completions[p]["response"] for p in perm]
    wk = world_knowledge if world_knowledge is not None else "No additional world knowledge for reference."
    tokens = 0
    per_aspect: dict[str, list[dict]] = {}
    call_seed = int.from_bytes(hashlib.sha256(f"judge:{seed}:{prompt_id}".encode()).digest()[:4], "big")
    for aspect in ASPECTS:
        messages = aspect_messages(aspect, instruction, shown, wk)
        parsed, t = _ask(
            judge,
            messages,
            aspect_gen or JUDGE_GEN,
            lambda r, a=aspect: parse_aspect(r, a, n),
            retries,
            call_seed,
            f"prompt {prompt_id} {aspect}",
        )
        tokens += t
        per_aspect[aspect] = unshuffle(parsed, perm)
    out = []
    for i, comp in enumerate(completions):
        ann = {aspect: per_aspect[aspect][i] for aspect in ASPECTS}
        row = {
            "model": comp["model"],
            "principle": comp.get("principle", "helpfulness"),
            "custom_system_prompt": comp.get("custom_system_prompt", ""),
            "response": comp["response"],
            "annotations": ann,
            "critique": "",
            "overall_score": None,
            "fine-grained_score": fine_grained_score(ann),
        }
        if critique:
            msgs = critique_messages(instruction, comp["response"], row["custom_system_prompt"], row["principle"])
            (text, score), t = _ask(
                judge,
                msgs,
                critique_gen or CRITIQUE_GEN,
                parse_critique,
                retries,
                call_seed + 100 + i,
                f"prompt {prompt_id} critique of {comp['model']}",
            )
            tokens += t
            row["critique"], row["overall_score"] = text, score
        out.append(row)
    return out, tokens
