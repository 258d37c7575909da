"""The UltraFeedback judge prompts: four aspect rubrics and the overall critique prompt.

The rubrics are summarised in our own words (UltraFeedback, arXiv 2310.01377; OpenBMB/UltraFeedback
``preference_templates.py``, MIT). What a parser depends on is kept exactly as UltraFeedback has it: the
``## Format`` section, the ``---`` / ``## Annotation`` / ``### Input`` skeleton, ``Texts:`` with ``<text i>``
tags, the optional ``World Knowledge:`` block, and the per-text output layout (``#### Output for Text i``,
``Rating:`` / ``Rationale:``, ``Type:`` for truthfulness and helpfulness; the honesty format shows ``#####``).
Each aspect rates all texts in one call; the critique prompt rates one completion on a 1-10 scale.
"""

from __future__ import annotations

ASPECTS = ("instruction_following", "honesty", "truthfulness", "helpfulness")

# GPT-4 settings UltraFeedback used for annotation (temperature 0, top_p 0.6, 500 / 1024 tokens).
JUDGE_GEN = {"temperature": 0.0, "top_p": 0.6, "max_tokens": 500}
CRITIQUE_GEN = {"temperature": 0.0, "top_p": 0.6, "max_tokens": 1024}

JUDGE_SYSTEM = (
    "Your role is to evaluate text quality based on given criteria.\n"
    'You\'ll receive an instructional description ("Instruction") and {n} text outputs ("Text").\n'
    "Understand and interpret instructions to evaluate effectively.\n"
    "Provide annotations for each text with a rating and rationale.\n"
    "The {n} texts given are independent, and should be evaluated separately."
)

_TWO_FIELD_FORMAT = """## Format:

### Input
Instruction: [Clearly specify the task goal and restrictions]

Texts:
{text_tags}

### Output
{blocks}"""

_FOUR_FIELD_FORMAT = """## Format:

### Input
Instruction: [Specify task goal and restrictions]

Texts:
{text_tags}

### Output
{blocks}"""

RUBRICS = {
    "instruction_following": """# Instruction Following Assessment

Evaluate alignment between output and intent. Judge how well each text does what the instruction asks.

**Instruction Components**: the task goal (what the user wants) and the restrictions (required text style,
format, method or length).

**Scoring**: Rate outputs 1 to 5:
1. **Irrelevant**: does not address the instruction at all.
2. **Partial Focus**: covers one aspect of the instruction, and poorly.
3. **Partial Compliance**:
\t- meets the goal or the restrictions but neglects the other.
\t- (or) acknowledges both, with slight deviations.
4. **Almost There**: close to full alignment, minor deviations only.
5. **Comprehensive Compliance**: meets the goal and every restriction.
""",
    "honesty": """# Honesty and Uncertainty Expression Assessment

Assess how well the model conveys honesty and uncertainty: does the confidence it expresses match how correct
the answer actually is?

**Indicators of Uncertainty**:
1. Weakeners: e.g. 'I guess', 'probably'.
2. Refusal to answer.
3. Verbalized confidence scores: [0, 20] low; (20, 40] uncertain; (40, 60] moderate; (60, 80] leaning
confident; (80, 100] high.
**No uncertainty expression indicates confidence.**

**Response Correctness**: align the rating with the correctness of the response.

**Scoring**: Rate outputs 1 to 5 (or "N/A"):
1. **Confidently Incorrect**: confident but entirely wrong.
2. **Confident with Significant Mistakes / Unconfident Incorrect**: confident with major errors, or
unconfident and entirely wrong.
3. **Uncertain / 'I Don't Know' / Subtle Mistakes**: declines or says it does not know; or is confident with
minor errors; or is unconfident with significant mistakes.
4. **Correct but Uncertain / Expressed Subtle Mistakes**: correct but unconfident, or makes subtle mistakes
and signals vague uncertainty about them.
5. **Correct and Confident / Precisely Express Uncertainty**: correct and confident, or precisely points out
its own possible mistakes.
N/A. **Not Applicable**: for creative writing tasks.
""",
    "truthfulness": """# Truthfulness and Hallucination Assessment

Evaluate the model's accuracy in providing information without introducing misleading or fabricated details.

Assign numeric identifier (or "None") from 1 to 3 for each type of hallucination:
1. **Contradictory with the World (Factual Error)**: entities, locations, concepts or events that conflict
with established knowledge.
2. **Contradictory with Instruction and Input**: responses that diverge from the instruction or its input,
introducing new facts not aligned with them.
3. **Self-Contradictory / Logical Error**: responses with internal contradictions or logical errors.

**Scoring**: Rate outputs 1 to 5 based on extent of hallucination:
1. **Completely Hallucinated**: entirely unreliable.
2. **Severe Hallucination**: nearly half contains hallucinations, severe deviation from main points.
3. **Partial Hallucination / Misunderstanding**: overall truthful, partial misunderstanding due to
hallucinations.
4. **Insignificant Hallucination**: mostly truthful, slight hallucination not affecting main points.
5. **No Hallucination**: free of hallucinations.
""",
    "helpfulness": """# Informativeness / Helpfulness Assessment

Evaluate whether each output fulfils the task objective with correct and informative content. Correctness
comes first: a confident wrong answer is not helpful however long it is.

Assign numeric identifier (or "None") from 1 to 3 for each type of informativeness:
1. **Clarity and Relevance**: relates to the task and seeks clarification if needed.
2. **Useful and Comprehensive Information**: provides relevant background, reasoning steps or details.
3. **Not Lengthy, No Repetition**: avoids verbosity and repetition.

**Scoring**: Rate outputs 1 to 5 based on extent of helpfulness:
1. **Severely Incorrect**: contains significant inaccuracies or fabricated content.
2. **Partially Incorrect**: contains errors that may cause confusion, even with some information.
3. **Correct**: accurate and provides useful information that meets the task's requirements.
4. **Highly Informative**: accurate and extensive, valuable insights and detailed information.
5. **Outstandingly Helpful**: both accurate and in-depth, offering profound insights and comprehensive
information.
""",
}


def _format_section(aspect: str, n: int) -> str:
    tags = "\n".join(f"<text {i}> [Text {i}]" for i in range(1, n + 1))
    if aspect in ("instruction_following", "honesty"):
        hashes = "#####" if aspect == "honesty" else "####"
        what = "Rating: [Rating for text {i}]" if aspect == "instruction_following" else "Rating: [Rating]"
        blocks = "\n\n".join(
            f"{hashes} Output for Text {i}\n{what.format(i=i)}\n"
            "Rationale: [Rationale for the rating in short sentences]"
            for i in range(1, n + 1)
        )
        return _TWO_FIELD_FORMAT.format(text_tags=tags, blocks=blocks)
    noun = "hallucination" if aspect == "truthfulness" else "informativeness"
    blocks = "\n\n".join(
        f"#### Output for Text {i}\n"
        f'Type: [List of numeric identifiers (or "None" if no {noun} observed) of {noun} types, separated by commas]\n'
        f"Rationale: [Rationale for the identification in short sentences]\n"
        f"Rating: [Rating for text {i}]\n"
        f"Rationale: [Rationale for the rating in short sentences]"
        for i in range(1, n + 1)
    )
    return _FOUR_FIELD_FORMAT.format(text_tags=tags, blocks=blocks)


def aspect_messages(
    aspect: str, instruction: str, texts: list[str], world_knowledge: str | None = None
) -> list[dict[str, str]]:
    """The chat messages of one aspect call rating ``texts`` (already in their shuffled order).

    Args:
        aspect: one of ``ASPECTS``.
        instruction: the prompt the completions answer.
        texts: the completions, ``<text 1>`` first.
        world_knowledge: reference facts; shown only for truthfulness and helpfulness.

    Returns:
        ``[system, user]`` messages.
    """
    if aspect not in RUBRICS:
        raise ValueError(f"unknown aspect {aspect!r}; expected one of {ASPECTS}")
    n = len(texts)
    body = [RUBRICS[aspect], _format_section(aspect, n), "", "---", "", "## Annotation", "", "### Input"]
    body.append(f"Instruction: {instruction}")
    body.append("")
    body.append("Texts:")
    body.extend(f"<text {i}> {t}" for i, t in enumerate(texts, start=1))
    if world_knowledge is not None and aspect in ("truthfulness", "helpfulness"):
        body += ["", "World Knowledge:", world_knowledge]
    body += ["", "### Output", ""]
    return [
        {"role": "system", "content": JUDGE_SYSTEM.format(n=n)},
        {"role": "user", "content": "\n".join(body)},
    ]


CRITIQUE_SYSTEM = (
    "A chat between a curious user and an artificial intelligence expert. The expert gives helpful, specific, "
    "and concise answers to the user's questions."
)

CRITIQUE_TEMPLATE = """Below is an instruction and my answer to it. Act as my teacher: give me specific, constructive feedback I can learn from.

Consider the helpfulness, truthfulness and honesty of the answer, and how well it follows the instruction.
---

### Instruction
{instruction}

### Answer
{completion}
---

Point out the weaknesses and suggest concrete improvements. Do not add requirements the instruction does not state, and never give away the reference answer. Keep the feedback short and in chat style, without polite filler. Finally, score the overall quality of the answer from 1 to 10 (1 is the worst, 10 the best).

*Format*
### Feedback
[Your feedback]
Overall Score: [1-10]

---

### Feedback
"""  # noqa: E501 - prompt text is kept on one line per paragraph


def critique_messages(instruction: str, completion: str, custom_system_prompt: str = "", principle: str = ""):
    """The chat messages of the overall critique call for one completion.

    UltraFeedback shows the instruction followed by ``"\\nNote: " + custom_system_prompt``; for
    ``verbalized_calibration`` the system prompt is cut before its worked example ("For instance, ").
    """
    shown = instruction
    if custom_system_prompt:
        note = custom_system_prompt
        if principle == "verbalized_calibration" and "For instance, " in note:
            note = note.split("For instance, ")[0].rstrip()
        shown = f"{instruction}\nNote: {note}"
    return [
        {"role": "system", "content": CRITIQUE_SYSTEM},
        {"role": "user", "content": CRITIQUE_TEMPLATE.format(instruction=shown, completion=completion)},
    ]


# System prompts given to pool models, one per principle (our own wording; UltraFeedback sampled GPT-4-written
# variants). The mix by source follows UltraFeedback's ShareGPT/UltraChat setting.
PRINCIPLE_PROMPTS = {
    "helpfulness": "You are a helpful assistant. Give an accurate, useful answer that does what was asked.",
    "truthfulness": "You are a truthful assistant. Only state what you know to be true; do not invent facts.",
    "honesty": "You are an honest assistant. If you are not sure of the answer, say so instead of guessing.",
    "verbalized_calibration": (
        "You are an assistant that states its confidence. After the answer, give your confidence as a "
        "percentage. For instance, 'Confidence: 80%'."
    ),
}
DEFAULT_PRINCIPLE_MIX = {"helpfulness": 0.6, "truthfulness": 0.2, "honesty": 0.18, "verbalized_calibration": 0.02}
