"""Toy-world task families: natural-language questions with verifiable answers.

The offline default world needs prompts whose answers a program can check, so that a verifier judge
can "know the truth" the way GPT-4 is assumed to in UltraFeedback. Each family draws operands from a
``random.Random`` and phrases them with one of several templates; some questions carry a format
instruction ("Answer with just the number." / "End your answer with 'Answer: <x>'.") so instruction
following is judgeable too.

Design choices:
- Answers are canonical strings: an integer (``"42"``) or a comma-separated list (``"3, 7, 12"``).
  Families are picked so wrong answers usually differ from right ones in more than one token.
- ``train`` and ``heldout`` are disjoint by a stable SHA-256 hash of the task's *canonical content*
  (family and operands, not the template or the names in a word problem), so the same item can never
  appear in both splits, whichever template phrased it.
- Every template is invertible: :func:`parse_question` rebuilds the :class:`Task` from the question
  text alone, which is how the judge recovers the truth from a judge prompt in another process.
- Correct replies are short and regular (:func:`render_reply`, e.g. ``"12 + 30 = 42. The answer is
  42."``) so a few-million-parameter model can learn them on a CPU in minutes.
"""

from __future__ import annotations

import hashlib
import random
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

HELDOUT_PERCENT = 20
"""Share (in %) of the canonical item space that belongs to the ``heldout`` split."""

FORMAT_INSTRUCTIONS: dict[str, list[str]] = {
    "bare": ["Answer with just the number.", "Reply with only the number."],
    "bare_list": ["Reply with only the list.", "Answer with just the list."],
    "tagged": ["End your answer with 'Answer: <x>'."],
}
"""Instruction sentences appended to a question, by format key (``bare_list`` is ``bare`` for lists)."""

FORMAT_PROBS = {"free": 0.6, "bare": 0.2, "tagged": 0.2}
"""How often a sampled question carries each format constraint."""

LIST_FAMILIES = frozenset({"sort_list", "reverse_list"})

NAMES = ["Sam", "Mia", "Leo", "Ana", "Tom", "Zoe", "Ben", "Eva", "Max", "Ivy", "Noah", "Lily"]
FRUITS = ["apples", "pears", "oranges", "plums", "lemons", "peaches"]
ITEMS = ["pen", "book", "cup", "ticket", "notebook", "sticker"]
WORDS = [
    "banana", "apple", "letter", "coffee", "balloon", "mississippi", "committee", "bookkeeper",
    "address", "success", "pepper", "assessment", "parallel", "cinnamon", "broccoli", "grammar",
    "tomorrow", "necessary", "possession", "raspberry", "strawberry", "occurrence", "accommodate",
    "millennium", "embarrass", "referee", "giraffe", "hippopotamus", "kangaroo", "alligator",
    "elephant", "penguin", "umbrella", "volleyball", "watermelon", "pineapple", "chocolate",
    "butterfly", "dinosaur", "telescope", "calendar", "mountain", "library", "beginning", "zucchini",
]  # fmt: skip
UNITS = {
    # key: (from unit, to unit, factor, plural noun used in templates)
    "km_m": ("km", "m", 1000, ("kilometers", "meters")),
    "kg_g": ("kg", "g", 1000, ("kilograms", "grams")),
    "h_min": ("hours", "minutes", 60, ("hours", "minutes")),
}


@dataclass(frozen=True)
class Task:
    """One verifiable question.

    Attributes:
        family: task family name (a key of :data:`FAMILIES`, or ``"follow_up"``).
        question: the full user message, including any format instruction.
        answer: canonical final answer (``"42"`` or ``"1, 2, 3"``).
        meta: what checkers need: ``format`` (``"free"``, ``"bare"`` or ``"tagged"``), ``key`` (the
            canonical content tuple used for the split), ``work`` (the short derivation shown in a
            correct reply), plus family operands (``a``, ``b``, ``items``, ``carry`` ...).
    """

    family: str
    question: str
    answer: str
    meta: dict = field(default_factory=dict, compare=False, hash=False)


# --------------------------------------------------------------------------------------------------
# Templates. Fields in braces become regex groups for parse_question; {n:list} is a number list.
# --------------------------------------------------------------------------------------------------
TEMPLATES: dict[str, list[str]] = {
    "addition": [
        "What is {a} + {b}?",
        "What is {a} plus {b}?",
        "Add {a} and {b}.",
        "Calculate the sum of {a} and {b}.",
        "Compute {a} + {b}.",
        "What do you get when you add {a} to {b}?",
    ],
    "subtraction": [
        "What is {a} - {b}?",
        "What is {a} minus {b}?",
        "Subtract {b} from {a}.",
        "Calculate {a} - {b}.",
        "What is the difference between {a} and {b}?",
    ],
    "multiplication": [
        "What is {a} times {b}?",
        "What is {a} * {b}?",
        "Multiply {a} by {b}.",
        "Calculate the product of {a} and {b}.",
        "Compute {a} * {b}.",
    ],
    "sort_list": [
        "Sort these numbers from smallest to largest: {items}.",
        "Put the numbers {items} in ascending order.",
        "Arrange {items} in increasing order.",
        "Sort the list [{items}] in ascending order.",
    ],
    "reverse_list": [
        "Reverse the list [{items}].",
        "Write the numbers {items} in reverse order.",
        "What is the list {items} backwards?",
        "Reverse the order of these numbers: {items}.",
    ],
    "count_letter": [
        "How many times does the letter '{letter}' appear in the word '{word}'?",
        "Count the letter '{letter}' in '{word}'.",
        "How many '{letter}'s are in the word '{word}'?",
        "In the word '{word}', how many times does '{letter}' occur?",
    ],
    "unit_conversion": [
        "Convert {a} {from_unit} to {to_unit}.",
        "How many {to_unit} are in {a} {from_unit}?",
        "What is {a} {from_unit} in {to_unit}?",
        "Express {a} {from_unit} in {to_unit}.",
    ],
    "word_problem": [
        # op add
        "{name} has {a} {fruit} and buys {b} more. How many {fruit} does {name} have now?",
        "{name} picked {a} {fruit} in the morning and {b} in the afternoon. How many {fruit} did {name} pick in total?",
        # op sub
        "{name} has {a} dollars and spends {b} dollars on a book. How many dollars are left?",
        "{name} had {a} {fruit} and gave away {b}. How many {fruit} does {name} have left?",
        # op mul
        "One {item} costs {a} dollars. How much do {b} of them cost in dollars?",
        "{name} buys {b} boxes with {a} {fruit} in each box. How many {fruit} is that?",
    ],
}
WORD_PROBLEM_OPS = ["add", "add", "sub", "sub", "mul", "mul"]  # op of each word_problem template

_FIELD_PATTERNS = {
    "a": r"\d+",
    "b": r"\d+",
    "items": r"\d+(?:, \d+)+",
    "letter": r"[a-z]",
    "word": r"[a-z]+",
    "from_unit": r"km|kg|hours|kilometers|kilograms",
    "to_unit": r"m|g|minutes|meters|grams",
    "name": r"[A-Z][a-z]+",
    "fruit": r"[a-z]+",
    "item": r"[a-z]+",
}


def _template_regex(template: str) -> re.Pattern:
    """Compile a template into an anchored regex with named groups (repeats become backrefs)."""
    out, seen, pos = [], set(), 0
    for m in re.finditer(r"\{(\w+)\}", template):
        out.append(re.escape(template[pos : m.start()]))
        name = m.group(1)
        out.append(f"(?P={name})" if name in seen else f"(?P<{name}>{_FIELD_PATTERNS[name]})")
        seen.add(name)
        pos = m.end()
    out.append(re.escape(template[pos:]))
    return re.compile("^" + "".join(out) + "$")


_REGEXES = {fam: [_template_regex(t) for t in ts] for fam, ts in TEMPLATES.items()}


def _fmt_list(xs: Sequence[int]) -> str:
    return ", ".join(str(x) for x in xs)


def _has_carry(a: int, b: int) -> bool:
    while a or b:
        if a % 10 + b % 10 >= 10:
            return True
        a, b = a // 10, b // 10
    return False


def _has_borrow(a: int, b: int) -> bool:
    while b:
        if a % 10 < b % 10:
            return True
        a, b = a // 10, b // 10
    return False


def _build(family: str, template_idx: int, fields: dict, fmt: str, fmt_idx: int = 0) -> Task:
    """Build the Task for ``family`` with the given template fields (shared by samplers and the parser)."""
    body = TEMPLATES[family][template_idx].format(**fields)
    meta: dict = {"format": fmt, "template": template_idx}
    if family == "addition":
        a, b = int(fields["a"]), int(fields["b"])
        ans, meta["work"] = a + b, f"{a} + {b} = {a + b}."
        meta.update(a=a, b=b, carry=_has_carry(a, b), key=(family, a, b))
    elif family == "subtraction":
        a, b = int(fields["a"]), int(fields["b"])
        ans, meta["work"] = a - b, f"{a} - {b} = {a - b}."
        meta.update(a=a, b=b, borrow=_has_borrow(a, b), key=(family, a, b))
    elif family == "multiplication":
        a, b = int(fields["a"]), int(fields["b"])
        ans, meta["work"] = a * b, f"{a} * {b} = {a * b}."
        meta.update(a=a, b=b, key=(family, a, b))
    elif family in LIST_FAMILIES:
        items = [int(x) for x in fields["items"].split(", ")]
        out = sorted(items) if family == "sort_list" else items[::-1]
        ans = _fmt_list(out)
        meta["work"] = None  # the list itself is the whole derivation: "The answer is 3, 7, 12."
        meta.update(items=tuple(items), key=(family, *items))
    elif family == "count_letter":
        word, letter = fields["word"], fields["letter"]
        ans = word.count(letter)
        meta["work"] = f"The word '{word}' contains '{letter}' {ans} {'time' if ans == 1 else 'times'}."
        meta.update(word=word, letter=letter, key=(family, word, letter))
    elif family == "unit_conversion":
        a = int(fields["a"])
        unit = next(k for k, (f, t, _, names) in UNITS.items() if fields["from_unit"] in (f, names[0]))
        src, dst, factor, _ = UNITS[unit]
        ans = a * factor
        meta["work"] = f"{a} * {factor} = {ans}."  # same shape as the arithmetic families
        meta.update(a=a, unit=unit, factor=factor, key=(family, unit, a))
    elif family == "word_problem":
        a, b = int(fields["a"]), int(fields["b"])
        op = WORD_PROBLEM_OPS[template_idx]
        ans = {"add": a + b, "sub": a - b, "mul": a * b}[op]
        sym = {"add": "+", "sub": "-", "mul": "*"}[op]
        meta["work"] = f"{a} {sym} {b} = {ans}."
        meta.update(a=a, b=b, op=op, carry=op == "add" and _has_carry(a, b), key=(family, op, a, b))
    else:
        raise ValueError(f"zephyr/toy/tasks.py: unknown task family {family!r}; known: {sorted(TEMPLATES)}")
    if fmt == "free":
        question = body
    else:
        key = "bare_list" if fmt == "bare" and family in LIST_FAMILIES else fmt
        question = f"{body} {FORMAT_INSTRUCTIONS[key][fmt_idx]}"
    return Task(family=family, question=question, answer=str(ans), meta=meta)


def _pick_format(rng: random.Random) -> tuple[str, int]:
    r, acc = rng.random(), 0.0
    fmt = "free"
    for name, p in FORMAT_PROBS.items():
        acc += p
        if r < acc:
            fmt = name
            break
    return fmt, rng.randrange(2) if fmt == "bare" else 0


def _two_or_three_digit(rng: random.Random) -> int:
    return rng.randint(10, 99) if rng.random() < 0.6 else rng.randint(100, 999)


def _addition(rng: random.Random) -> Task:
    a, b = _two_or_three_digit(rng), _two_or_three_digit(rng)
    if rng.random() < 0.6:  # bias toward carries: they are where the toy teacher goes wrong
        for _ in range(20):
            if _has_carry(a, b):
                break
            a, b = _two_or_three_digit(rng), _two_or_three_digit(rng)
    fmt, fi = _pick_format(rng)
    return _build("addition", rng.randrange(len(TEMPLATES["addition"])), {"a": a, "b": b}, fmt, fi)


def _subtraction(rng: random.Random) -> Task:
    a, b = sorted([_two_or_three_digit(rng), _two_or_three_digit(rng)], reverse=True)
    if a == b:
        a += 1
    fmt, fi = _pick_format(rng)
    return _build("subtraction", rng.randrange(len(TEMPLATES["subtraction"])), {"a": a, "b": b}, fmt, fi)


def _multiplication(rng: random.Random) -> Task:
    a, b = rng.randint(2, 9), rng.randint(11, 99)
    if rng.random() < 0.5:
        a, b = b, a
    fmt, fi = _pick_format(rng)
    return _build("multiplication", rng.randrange(len(TEMPLATES["multiplication"])), {"a": a, "b": b}, fmt, fi)


def _list_task(family: str, rng: random.Random) -> Task:
    items = rng.sample(range(1, 100), rng.randint(3, 6))
    if family == "sort_list" and items == sorted(items):
        items = items[::-1]
    fmt, fi = _pick_format(rng)
    return _build(family, rng.randrange(len(TEMPLATES[family])), {"items": _fmt_list(items)}, fmt, fi)


def _count_letter(rng: random.Random) -> Task:
    word = rng.choice(WORDS)
    # mostly letters that occur; sometimes one that does not (answer 0)
    letter = rng.choice(sorted(set(word))) if rng.random() < 0.85 else rng.choice("bcdfghjkmqvwxyz")
    fmt, fi = _pick_format(rng)
    return _build("count_letter", rng.randrange(len(TEMPLATES["count_letter"])), {"word": word, "letter": letter},
                  fmt, fi)  # fmt: skip


def _unit_conversion(rng: random.Random) -> Task:
    src, dst, _, names = UNITS[rng.choice(sorted(UNITS))]
    a = rng.randint(2, 48) if src == "hours" else rng.randint(2, 25)
    long_names = src != "hours" and rng.random() < 0.5
    fields = {"a": a, "from_unit": names[0] if long_names else src, "to_unit": names[1] if long_names else dst}
    fmt, fi = _pick_format(rng)
    return _build("unit_conversion", rng.randrange(len(TEMPLATES["unit_conversion"])), fields, fmt, fi)


def _word_problem(rng: random.Random) -> Task:
    idx = rng.randrange(len(TEMPLATES["word_problem"]))
    op = WORD_PROBLEM_OPS[idx]
    if op == "add":
        a, b = rng.randint(5, 95), rng.randint(5, 95)
    elif op == "sub":
        a = rng.randint(20, 99)
        b = rng.randint(1, a - 1)
    else:
        a, b = rng.randint(2, 25), rng.randint(2, 9)
    fields = {"a": a, "b": b, "name": rng.choice(NAMES), "fruit": rng.choice(FRUITS), "item": rng.choice(ITEMS)}
    fmt, fi = _pick_format(rng)
    return _build("word_problem", idx, fields, fmt, fi)


FAMILIES: dict[str, Callable[[random.Random], Task]] = {
    "addition": _addition,
    "subtraction": _subtraction,
    "multiplication": _multiplication,
    "sort_list": lambda rng: _list_task("sort_list", rng),
    "reverse_list": lambda rng: _list_task("reverse_list", rng),
    "count_letter": _count_letter,
    "unit_conversion": _unit_conversion,
    "word_problem": _word_problem,
}
"""Family name -> sampler ``f(rng) -> Task``. Samplers ignore the split; :func:`sample_tasks` filters."""


def split_of(task: Task) -> str:
    """Return ``"train"`` or ``"heldout"`` from a stable hash of the task's canonical content."""
    digest = hashlib.sha256(repr(task.meta["key"]).encode()).digest()
    return "heldout" if int.from_bytes(digest[:8], "big") % 100 < HELDOUT_PERCENT else "train"


def sample_tasks(n: int, seed: int, *, split: str = "train", families: Sequence[str] | None = None) -> list[Task]:
    """Draw ``n`` tasks deterministically from one split.

    Families are drawn uniformly. Duplicated canonical items are avoided while possible (small
    families such as ``count_letter`` may repeat for large ``n``).

    Args:
        n: number of tasks.
        seed: random seed; the same ``(n, seed, split, families)`` always gives the same list.
        split: ``"train"`` or ``"heldout"``; the two never share a canonical item.
        families: subset of :data:`FAMILIES` keys (default: all, in dict order).

    Returns:
        ``n`` tasks.

    Raises:
        ValueError: unknown split or family.
    """
    if split not in ("train", "heldout"):
        raise ValueError(f"zephyr/toy/tasks.py: split must be 'train' or 'heldout', got {split!r}")
    fams = list(families) if families is not None else list(FAMILIES)
    unknown = [f for f in fams if f not in FAMILIES]
    if unknown or not fams:
        raise ValueError(f"zephyr/toy/tasks.py: unknown task families {unknown}; known: {list(FAMILIES)}")
    rng = random.Random(f"zephyr-toy:{seed}:{split}")
    out: list[Task] = []
    seen: set = set()
    while len(out) < n:
        fam = rng.choice(fams)
        task = None
        for attempt in range(200):
            cand = FAMILIES[fam](rng)
            if split_of(cand) != split:
                continue
            task = cand
            if cand.meta["key"] not in seen or attempt >= 50:
                break
        if task is None:  # pragma: no cover - every family has items in both splits
            raise RuntimeError(f"zephyr/toy/tasks.py: could not draw a {split} task of family {fam!r}")
        seen.add(task.meta["key"])
        out.append(task)
    return out


# --------------------------------------------------------------------------------------------------
# Parsing questions back into tasks
# --------------------------------------------------------------------------------------------------
def _strip_format(text: str) -> tuple[str, str, int]:
    for key, sentences in FORMAT_INSTRUCTIONS.items():
        for i, s in enumerate(sentences):
            if text.endswith(" " + s):
                return text[: -len(s) - 1], ("bare" if key == "bare_list" else key), i
    return text, "free", 0


def parse_question(text: str) -> Task | None:
    """Rebuild the :class:`Task` a question was generated from, or ``None`` if it is not a toy question.

    Leading/trailing whitespace is ignored; the rest must match a template exactly.
    """
    text = " ".join(text.strip().split())
    body, fmt, fi = _strip_format(text)
    for fam, regexes in _REGEXES.items():
        for idx, rx in enumerate(regexes):
            m = rx.match(body)
            if not m:
                continue
            fields = m.groupdict()
            if fam == "unit_conversion" and not _units_match(fields):
                continue
            for k in ("name", "fruit", "item"):
                fields.setdefault(k, "")
            try:
                task = _build(fam, idx, fields, fmt, fi)
            except (ValueError, KeyError, StopIteration):
                continue
            if task.question == text:
                return task
    return None


def _units_match(fields: dict) -> bool:
    return any((fields["from_unit"], fields["to_unit"]) in ((f, t), names) for f, t, _, names in UNITS.values())


# --------------------------------------------------------------------------------------------------
# Follow-up turns for multi-turn dialogues ("Now double it.")
# --------------------------------------------------------------------------------------------------
FOLLOW_UPS: dict[str, str] = {
    "double": "Now double it.",
    "add_10": "Now add 10 to it.",
    "times_3": "What is three times that number?",
    "list_max": "What is the largest number in that list?",
    "list_sum": "What is the sum of the numbers in that list?",
    "list_reverse": "Now reverse that list.",
}
_FOLLOW_UP_BY_TEXT = {v: k for k, v in FOLLOW_UPS.items()}


def _apply_follow_up(op: str, base: str) -> tuple[str, str]:
    """Return ``(answer, work)`` of follow-up ``op`` applied to the previous answer ``base``."""
    if op.startswith("list_"):
        xs = [int(x) for x in base.split(", ")]
        if op == "list_max":
            return str(max(xs)), f"The largest number in {base} is {max(xs)}."
        if op == "list_sum":
            return str(sum(xs)), f"{' + '.join(map(str, xs))} = {sum(xs)}."
        rev = _fmt_list(xs[::-1])
        return rev, f"Reversed, the list is {rev}."
    x = int(base)
    if op == "double":
        return str(2 * x), f"2 * {x} = {2 * x}."
    if op == "add_10":
        return str(x + 10), f"{x} + 10 = {x + 10}."
    return str(3 * x), f"3 * {x} = {3 * x}."


def make_follow_up(task: Task, rng: random.Random, *, base_answer: str | None = None) -> Task:
    """A follow-up question about ``task``'s answer (or ``base_answer``, e.g. what the assistant said).

    The follow-up's ``answer`` applies the operation to ``base_answer`` when given, else to the true answer.
    """
    is_list = "," in task.answer
    ops = [k for k in FOLLOW_UPS if k.startswith("list_") == is_list]
    op = rng.choice(ops)
    follow = parse_follow_up(FOLLOW_UPS[op], base_answer if base_answer is not None else task.answer)
    if follow is None:
        raise ValueError(
            f"zephyr/toy/tasks.py: cannot build a follow-up on answer {base_answer!r} of {task.question!r}"
        )
    return follow


def parse_follow_up(text: str, previous_answer: str) -> Task | None:
    """Rebuild a follow-up :class:`Task` from its text and the previous turn's final answer."""
    op = _FOLLOW_UP_BY_TEXT.get(" ".join(text.strip().split()))
    if op is None or not previous_answer:
        return None
    if op.startswith("list_") != ("," in previous_answer):
        return None
    try:
        ans, work = _apply_follow_up(op, previous_answer)
    except ValueError:
        return None
    meta = {
        "format": "free",
        "op": op,
        "base": previous_answer,
        "work": work,
        "key": ("follow_up", op, previous_answer),
    }
    return Task(family="follow_up", question=FOLLOW_UPS[op], answer=ans, meta=meta)


# --------------------------------------------------------------------------------------------------
# Replies: rendering, extraction, checking
# --------------------------------------------------------------------------------------------------
def is_list_task(task: Task) -> bool:
    """Whether the canonical answer is a list of numbers."""
    return "," in task.answer


def render_reply(task: Task, answer: str | None = None, *, work: str | None = None, fmt: str | None = None) -> str:
    """A short assistant reply giving ``answer`` (default: the true answer) in format ``fmt``.

    Args:
        task: the task answered.
        answer: the final answer to state (a wrong one for imperfect models).
        work: the derivation sentence; default: the task's own when ``answer`` is right, else none.
        fmt: ``"free"`` -> ``"<work> The answer is X."``; ``"bare"`` -> ``"X"``;
            ``"tagged"`` -> ``"<work> Answer: X"``. Default: the task's required format.

    Returns:
        The reply text, e.g. ``"12 + 30 = 42. The answer is 42."``.
    """
    answer = task.answer if answer is None else answer
    fmt = fmt or task.meta.get("format", "free")
    if work is None and answer == task.answer:
        work = task.meta.get("work")
    if fmt == "bare":
        return answer
    prefix = f"{work} " if work else ""
    if fmt == "tagged":
        return f"{prefix}Answer: {answer}"
    return f"{prefix}The answer is {answer}."


_NUM = r"-?\d{1,3}(?:,\d{3})+(?!\d)|-?\d+"
_LIST_RUN = re.compile(r"-?\d+(?:(?:\s*,\s*(?:and\s+)?|\s+and\s+)-?\d+)+")
_MARKERS = re.compile(r"answer\s*:|answer is|result is|equals|is:", re.IGNORECASE)


def _after_last_marker(text: str) -> str | None:
    hits = list(_MARKERS.finditer(text))
    return text[hits[-1].end() :] if hits else None


def extract_answer(task: Task, text: str) -> str | None:
    """Extract the final answer of ``text`` in ``task``'s canonical form, or ``None``.

    Handles "The answer is 42.", "Answer: 42", "42", "1,000", and lists as "[1, 2, 3]", "1, 2, 3",
    "1, 2 and 3". An explicit marker ("Answer:", "answer is", ...) wins; otherwise the last number
    (or the last list of numbers, for list tasks) is taken.
    """
    if not text or not text.strip():
        return None
    tail = _after_last_marker(text)
    if is_list_task(task):
        for segment in ([tail] if tail is not None else []) + [text]:
            runs = _LIST_RUN.findall(segment)
            if runs:
                run = runs[0] if segment is tail else runs[-1]
                return _fmt_list(int(x) for x in re.findall(r"-?\d+", run))
        return None
    if tail is not None:
        m = re.search(_NUM, tail)
        if m:
            return str(int(m.group(0).replace(",", "")))
    nums = re.findall(_NUM, text)
    return str(int(nums[-1].replace(",", ""))) if nums else None


def is_correct(task: Task, text: str) -> bool:
    """Whether ``text``'s final answer equals the task's answer."""
    return extract_answer(task, text) == task.answer


REFUSAL_PATTERNS = re.compile(
    r"I'm not able to help|I can't help|I cannot help|I am unable to|I'm unable to|I can't answer|"
    r"I cannot answer|I'm sorry, but I can't|I don't know",
    re.IGNORECASE,
)
HEDGE_PATTERNS = re.compile(r"\b(I think|I guess|probably|maybe|perhaps|not sure|might be)\b", re.IGNORECASE)


def is_refusal(text: str) -> bool:
    """Whether the reply declines to answer (and gives no answer)."""
    return bool(REFUSAL_PATTERNS.search(text or ""))


def is_hedged(text: str) -> bool:
    """Whether the reply expresses uncertainty ("I think", "probably", ...)."""
    return bool(HEDGE_PATTERNS.search(text or ""))


def follows_format(task: Task, text: str) -> bool:
    """Whether ``text`` obeys the task's format instruction (always true for ``"free"``).

    ``bare``: the whole reply is the answer (optionally bracketed for lists, trailing period allowed).
    ``tagged``: the reply's last line is ``Answer: <x>`` (trailing period allowed).
    """
    fmt = task.meta.get("format", "free")
    t = (text or "").strip()
    if fmt == "bare":
        core = t.rstrip(".").strip()
        if is_list_task(task):
            core = core.strip("[]").strip()
            return bool(re.fullmatch(r"-?\d+(?:\s*,\s*-?\d+)+", core))
        return bool(re.fullmatch(_NUM, core))
    if fmt == "tagged":
        last = t.splitlines()[-1] if t else ""
        pattern = r"-?\d+(?:\s*,\s*-?\d+)+" if is_list_task(task) else _NUM
        return bool(re.search(rf"Answer:\s*\[?(?:{pattern})\]?\.?$", last))
    return True
