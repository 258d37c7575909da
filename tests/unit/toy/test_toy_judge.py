import re

import pytest

from zephyr.chat import ChatBackend
from zephyr.toy.judge import CANNOT_ASSESS, VerifierJudge, parse_annotation_prompt, parse_critique_prompt
from zephyr.toy.rules import add_without_carry
from zephyr.toy.tasks import Task, sample_tasks

TITLES = {
    "instruction_following": "Instruction Following Assessment",
    "honesty": "Honesty and Uncertainty Expression Assessment",
    "truthfulness": "Truthfulness and Hallucination Assessment",
    "helpfulness": "Informativeness / Helpfulness Assessment",
}
INSTRUCTION = "What is 47 + 38? End your answer with 'Answer: <x>'."
RIGHT = "47 + 38 = 85. Answer: 85"
WRONG = "47 + 38 = 75. Answer: 75"
REFUSAL = "I'm not able to help with that."
UNFORMATTED = "47 + 38 = 85. The answer is 85."
TEXTS = [RIGHT, WRONG, REFUSAL, UNFORMATTED]


def aspect_prompt(aspect, instruction, texts, world_knowledge=None):
    """Same skeleton as the UltraFeedback annotation prompt (rubric, Format section, then Annotation)."""
    typed = aspect in ("truthfulness", "helpfulness")
    fmt_block = "Type: [List of numeric identifiers]\nRationale: [Rationale]\n" if typed else ""
    parts = [
        f"# {TITLES[aspect]}\n\nEvaluate the texts against the rubric.\n\n**Scoring**: Rate outputs 1 to 5.\n",
        "## Format:\n\n### Input\nInstruction: [Clearly specify the task goal and restrictions]\n\nTexts:\n"
        "<text 1> [Text 1]\n<text 2> [Text 2]\n\n### Output\n#### Output for Text 1\n"
        f"{fmt_block}Rating: [Rating for text 1]\nRationale: [Rationale for the rating in short sentences]\n",
        "---\n\n## Annotation\n\n### Input\n"
        f"Instruction: {instruction}\n\nTexts:\n" + "\n".join(f"<text {i}> {t}" for i, t in enumerate(texts, 1)),
    ]
    if world_knowledge is not None:
        parts.append(f"\nWorld Knowledge:\n{world_knowledge}")
    parts.append("\n### Output\n")
    return "\n".join(parts)


def critique_prompt(instruction, answer):
    return (
        "Given my answer to an instruction, your role is to provide specific and constructive feedback for me.\n"
        f"---\n\n### Instruction\n{instruction}\n\n### Answer\n{answer}\n---\n\n"
        "Please act as a teacher and provide specific and constructive feedback. Finally, score the overall "
        "quality of the answer from 1 to 10.\n\n### Feedback\n[feedback]\nOverall Score: [1-10]"
    )


def judge_reply(judge, prompt):
    msgs = [
        {"role": "system", "content": "Your role is to evaluate text quality."},
        {"role": "user", "content": prompt},
    ]
    return judge.chat(msgs, temperature=0.0, top_p=0.6, max_tokens=500).texts[0]


def parse_like_ultrafeedback(reply, aspect):
    """The reference parser (annotate_preference.py): 4 blocks split on blank lines, then a regex per block."""
    blocks = reply.split("\n\n")
    assert len(blocks) == 4, reply
    out = []
    for block in blocks:
        if aspect in ("truthfulness", "helpfulness"):
            m = re.search(r"Type: (.+?)\nRationale: (.+?)\nRating: (.+?)\nRationale: (.+)", block, re.DOTALL)
            assert m, block
            types = re.findall(r"\b\d\b", m.group(1)) or ["None"]
            out.append((int(re.findall(r"\d+", m.group(3))[0]), types))
        else:
            m = re.search(r"Rating: (.+?)\nRationale: (.+)", block, re.DOTALL)
            assert m, block
            out.append((int(re.findall(r"\d+", m.group(1))[0]), None))
    return out


def test_judge_is_chat_backend():
    assert isinstance(VerifierJudge(), ChatBackend)


@pytest.mark.parametrize(
    "aspect,expected",
    [
        # right / wrong / refusal / right-but-ignores-format
        ("instruction_following", [5, 3, 1, 3]),
        ("honesty", [5, 1, 3, 5]),
        ("truthfulness", [5, 2, 4, 5]),
        ("helpfulness", [5, 2, 1, 4]),
    ],
)
def test_aspect_ratings_follow_the_truth(aspect, expected):
    reply = judge_reply(VerifierJudge(), aspect_prompt(aspect, INSTRUCTION, TEXTS))
    assert reply.startswith("#### Output for Text 1\n")
    assert [f"#### Output for Text {k}" in reply for k in range(1, 5)] == [True] * 4
    parsed = parse_like_ultrafeedback(reply, aspect)
    assert [r for r, _ in parsed] == expected
    if aspect == "truthfulness":
        assert parsed[0][1] == ["None"] and parsed[1][1] == ["1", "3"]


def test_world_knowledge_block_and_text_order_do_not_matter():
    judge = VerifierJudge()
    shuffled = [UNFORMATTED, REFUSAL, RIGHT, WRONG]
    reply = judge_reply(judge, aspect_prompt("helpfulness", INSTRUCTION, shuffled, "No additional world knowledge."))
    assert [r for r, _ in parse_like_ultrafeedback(reply, "helpfulness")] == [4, 1, 5, 2]


def test_hedged_correct_answer_loses_honesty_point():
    reply = judge_reply(
        VerifierJudge(),
        aspect_prompt("honesty", "What is 12 + 30?", ["I think the answer is 42.", "The answer is 42.", "42", "41"]),
    )
    assert [r for r, _ in parse_like_ultrafeedback(reply, "honesty")] == [4, 5, 5, 1]


def test_multiline_texts_are_kept_whole():
    prompt = aspect_prompt("instruction_following", INSTRUCTION, ["Let me see.\n47 + 38 = 85.\nAnswer: 85", WRONG])
    aspect, instruction, texts = parse_annotation_prompt(prompt)
    assert aspect == "instruction_following" and instruction == INSTRUCTION
    assert texts == ["Let me see.\n47 + 38 = 85.\nAnswer: 85", WRONG]


@pytest.mark.parametrize(
    "answer,score",
    [(RIGHT, 10), (UNFORMATTED, 6), (WRONG, 3), ("The answer is 75.", 2), (REFUSAL, 2), ("Hmm.", 1)],
)
def test_critique_format_and_score(answer, score):
    reply = judge_reply(VerifierJudge(), critique_prompt(INSTRUCTION + "\nNote: Be helpful and honest.", answer))
    assert reply.startswith("### Feedback\n")
    critique, _, tail = reply.partition("\nOverall Score: ")
    assert int(tail.split(".")[0]) == score
    assert "85" not in critique  # never reveals the reference answer


def test_critique_score_reask_returns_bare_score():
    first = critique_prompt(INSTRUCTION, UNFORMATTED)
    msgs = [
        {"role": "user", "content": first},
        {"role": "assistant", "content": "### Feedback\nFollow the format."},
        {"role": "user", "content": "Overall Score: "},
    ]
    assert VerifierJudge().chat(msgs, max_tokens=1).texts == ["6"]


def test_parse_critique_prompt():
    assert parse_critique_prompt(critique_prompt("What is 1 + 2?", "3")) == ("What is 1 + 2?", "3")
    assert parse_critique_prompt("hello") is None


def test_unknown_instruction_gets_unparseable_reply():
    reply = judge_reply(VerifierJudge(), aspect_prompt("honesty", "Write a poem about autumn.", TEXTS))
    assert reply == CANNOT_ASSESS and "Rating" not in reply
    assert judge_reply(VerifierJudge(), "Tell me a joke.") == CANNOT_ASSESS


def test_registry_resolves_instructions_that_do_not_parse():
    task = Task("custom", "Name the number after 41.", "42", {"format": "free"})
    judge = VerifierJudge(registry={task.question: task})
    reply = judge_reply(judge, aspect_prompt("truthfulness", task.question, ["42", "It is 43.", "42.", "41"]))
    assert [r for r, _ in parse_like_ultrafeedback(reply, "truthfulness")] == [5, 2, 5, 2]


def test_noise_emits_malformed_replies_and_retries_recover():
    judge = VerifierJudge(seed=0, noise=0.5)
    prompts = [aspect_prompt("honesty", t.question, TEXTS) for t in sample_tasks(60, seed=0, families=["addition"])]
    clean = VerifierJudge()
    malformed, recovered = 0, 0
    for p in prompts:
        good = judge_reply(clean, p)
        for _attempt in range(10):
            reply = judge_reply(judge, p)
            if reply == good:
                recovered += 1
                break
            malformed += 1
    assert recovered == len(prompts)
    assert 30 <= malformed <= 100  # about one malformed reply per prompt at noise 0.5
    with pytest.raises(ValueError, match="noise"):
        VerifierJudge(noise=2.0)


def test_judge_prefers_right_over_teacher_bug_across_many_prompts():
    judge = VerifierJudge()
    for t in [t for t in sample_tasks(200, seed=1, families=["addition"]) if t.meta["carry"]][:50]:
        a, b = t.meta["a"], t.meta["b"]
        wrong = f"{a} + {b} = {add_without_carry(a, b)}. The answer is {add_without_carry(a, b)}."
        right = f"{a} + {b} = {a + b}. The answer is {a + b}."
        means = []
        for aspect in TITLES:
            ratings = [
                r
                for r, _ in parse_like_ultrafeedback(
                    judge_reply(judge, aspect_prompt(aspect, t.question, [right, wrong, right, wrong])), aspect
                )
            ]
            means.append(ratings)
        assert sum(m[0] for m in means) > sum(m[1] for m in means)


def test_aspect_is_the_rubric_title_not_a_later_mention():
    prompt = aspect_prompt("helpfulness", INSTRUCTION, TEXTS).replace(
        "Evaluate the texts", "Unlike the Truthfulness and Hallucination Assessment, evaluate the texts"
    )
    aspect, _, texts = parse_annotation_prompt(prompt)
    assert aspect == "helpfulness" and texts == TEXTS
