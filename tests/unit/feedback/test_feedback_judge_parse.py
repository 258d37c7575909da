"""Judge parsing on real-looking, messy judge replies; the display permutation and its inverse."""

import re

import pytest

from zephyr.chat import ChatResponse
from zephyr.feedback.judge import (
    JudgeParseError,
    fine_grained_score,
    judge_prompt,
    parse_aspect,
    parse_critique,
    permutation,
    unshuffle,
)
from zephyr.feedback.rubric import ASPECTS, aspect_messages, critique_messages

pytestmark = pytest.mark.unit

CLEAN_IF = """#### Output for Text 1
Rating: 4
Rationale: Answers the question but ignores the requested format.

#### Output for Text 2
Rating: 5
Rationale: Meets the goal and the restriction.

#### Output for Text 3
Rating: 1
Rationale: Irrelevant.

#### Output for Text 4
Rating: 3
Rationale: Partially compliant."""


def test_clean_instruction_following():
    out = parse_aspect(CLEAN_IF, "instruction_following")
    assert [o["Rating"] for o in out] == ["4", "5", "1", "3"]
    assert out[0]["Rationale"] == "Answers the question but ignores the requested format."


def test_prose_before_and_after_and_bold_headers():
    reply = (
        "Sure! Here is my evaluation of the four texts.\n\n"
        + CLEAN_IF.replace("#### Output", "**Output").replace("Text 1\n", "Text 1**\n")
        + "\n\nOverall, Text 2 is the strongest answer because it follows every instruction."
    )
    out = parse_aspect(reply, "instruction_following")
    assert [o["Rating"] for o in out] == ["4", "5", "1", "3"]
    # the closing remark is not glued to text 4's rationale
    assert out[3]["Rationale"] == "Partially compliant."


def test_honesty_five_hashes_na_and_markdown_ratings():
    reply = """##### Output for Text 1
**Rating:** 5
**Rationale:** Correct and confident.

##### Output for Text 2
Rating: N/A
Rationale: Creative writing, not applicable.

##### Output for Text 3
Rating: 2 (Confident with Significant Mistakes)
Rationale: States a wrong sum with full confidence.

##### Output for Text 4
Rating: 3/5
Rationale: Declines to answer."""
    out = parse_aspect(reply, "honesty")
    assert [o["Rating"] for o in out] == ["5", "N/A", "2", "3"]
    assert out[0]["Rationale"] == "Correct and confident."


def test_truthfulness_types_none_and_rationale_for_rating():
    reply = """Here are my annotations.

#### Output for Text 1
Type: None
Rationale: No hallucination.
Rating: 5
Rationale: Accurate.

#### Output for Text 2
Type: 1, 3
Rationale: Wrong arithmetic and a contradiction.
Rating: 2
Rationale For Rating: Severe.

#### Output for Text 3
Type: [2]
Rationale: Ignores the input list.
Rating: 3
Rationale: Partial misunderstanding.

#### Output for Text 4
Type: none
Rationale: Fine.
Rating: 4
Rationale: Insignificant issue."""
    out = parse_aspect(reply, "truthfulness")
    assert [o["Type"] for o in out] == [["None"], ["1", "3"], ["2"], ["None"]]
    assert [o["Rating"] for o in out] == ["5", "2", "3", "4"]
    assert out[1]["Rationale"] == "Wrong arithmetic and a contradiction."
    assert out[1]["Rationale For Rating"] == "Severe."


def test_no_headers_falls_back_to_blank_line_blocks():
    reply = "\n\n".join(f"Rating: {r}\nRationale: reason {r}." for r in (2, 3, 4, 5))
    out = parse_aspect(reply, "instruction_following")
    assert [o["Rating"] for o in out] == ["2", "3", "4", "5"]


@pytest.mark.parametrize(
    ("reply", "aspect", "message"),
    [
        (CLEAN_IF.split("#### Output for Text 4")[0], "instruction_following", "no block for text(s) [4]"),
        (CLEAN_IF.replace("Rating: 5", "Rating: 6"), "instruction_following", "rating 6 is outside 1..5"),
        (CLEAN_IF.replace("Rating: 1", "Rating: 0"), "instruction_following", "rating 0 is outside 1..5"),
        (CLEAN_IF.replace("Rating: 4", "Rating: N/A"), "instruction_following", "N/A is not allowed"),
        (CLEAN_IF.replace("Rating: 3", "Rating: good"), "instruction_following", "no rating number"),
        (CLEAN_IF.replace("Rating: 3\n", ""), "instruction_following", "no 'Rating:' line"),
        ("I cannot rate these texts.", "honesty", "expected 4 output blocks, found 0"),
    ],
)
def test_malformed_replies_raise(reply, aspect, message):
    with pytest.raises(JudgeParseError, match=re.escape(message)):
        parse_aspect(reply, aspect)


def test_truthfulness_bad_type_code_and_missing_type():
    block = "#### Output for Text {i}\nType: {t}\nRationale: x\nRating: 4\nRationale: y"
    bad = "\n\n".join(block.format(i=i, t="4" if i == 2 else "None") for i in range(1, 5))
    with pytest.raises(JudgeParseError, match=r"Type codes \['4'\]"):
        parse_aspect(bad, "helpfulness")
    missing = bad.replace("Type: 4\n", "")
    with pytest.raises(JudgeParseError, match="truthfulness text 2: no 'Type:' line"):
        parse_aspect(missing.replace("Type: None", "Type: None"), "truthfulness")


def test_critique_variants():
    assert parse_critique("### Feedback\nGood answer, show the carry.\nOverall Score: 8") == (
        "Good answer, show the carry.",
        8.0,
    )
    assert parse_critique("The sum is wrong.\n**Overall Score:** 3/10.") == ("The sum is wrong.", 3.0)
    assert parse_critique("Fine.\nOverall Score: 7.5\nHope this helps!")[1] == 7.5
    for bad, msg in [
        ("Nice work.", "no 'Overall Score:' line"),
        ("Nice.\nOverall Score: 11", "outside 1..10"),
        ("Nice.\nOverall Score: 0", "outside 1..10"),
        ("Nice.\nOverall Score: 4/5", "not out of 10"),
        ("Nice.\nOverall Score: excellent", "no number"),
    ]:
        with pytest.raises(JudgeParseError, match=msg):
            parse_critique(bad)


def test_permutation_is_seeded_and_unshuffle_inverts_it():
    p = permutation("abc", 4, seed=0)
    assert sorted(p) == [0, 1, 2, 3]
    assert p == permutation("abc", 4, seed=0)
    assert any(permutation(f"id{i}", 4, 0) != [0, 1, 2, 3] for i in range(5))
    items = ["A", "B", "C", "D"]
    shown = [items[i] for i in p]
    assert unshuffle(shown, p) == items


def test_fine_grained_score_skips_na():
    ann = {"a": {"Rating": "4"}, "b": {"Rating": "N/A"}, "c": {"Rating": "2"}, "d": {"Rating": "3"}}
    assert fine_grained_score(ann) == 3.0


def test_prompts_keep_ultrafeedback_skeleton():
    msgs = aspect_messages(
        "truthfulness", "What is 2 + 2?", ["4", "5", "four", "22"], "a subset of correct answers: ['4']"
    )
    user = msgs[1]["content"]
    assert "## Format:" in user and "---\n\n## Annotation\n\n### Input\nInstruction: What is 2 + 2?" in user
    assert "Texts:\n<text 1> 4\n<text 2> 5\n<text 3> four\n<text 4> 22\n\nWorld Knowledge:\n" in user
    assert user.rstrip().endswith("### Output")
    assert "#### Output for Text 4\nType:" in user
    honesty = aspect_messages("honesty", "q", ["a", "b", "c", "d"])[1]["content"]
    assert "##### Output for Text 1\nRating:" in honesty and "World Knowledge" not in honesty
    crit = critique_messages("Q?", "A.", "Say 'Confidence: 80%'. For instance, x", "verbalized_calibration")[1][
        "content"
    ]
    assert "Q?\nNote: Say 'Confidence: 80%'." in crit and "For instance" not in crit.split("### Answer")[0]
    assert "Overall Score: [1-10]" in crit


class ScriptedJudge:
    """Answers aspect prompts from per-text ratings keyed by the text itself (so shuffling is visible)."""

    name = "scripted-judge"

    def __init__(self, ratings, bad_first=0):
        self.ratings = ratings  # text -> rating
        self.bad_first = bad_first
        self.calls = 0

    def chat(self, messages, **kw):
        self.calls += 1
        user = messages[-1]["content"]
        if "Overall Score" in user:
            answer = user.split("### Answer\n")[1].split("\n---")[0]
            return ChatResponse([f"### Feedback\nok\nOverall Score: {2 * self.ratings[answer]}"])
        if self.bad_first > 0:
            self.bad_first -= 1
            return ChatResponse(["I think they are all fine."])
        texts = [line.split("> ", 1)[1] for line in user.rsplit("Texts:\n", 1)[1].split("\n\n")[0].splitlines()]
        blocks = []
        for i, t in enumerate(texts, 1):
            r = self.ratings[t]
            if "Type:" in user.split("---")[0]:
                blocks.append(f"#### Output for Text {i}\nType: None\nRationale: r\nRating: {r}\nRationale: why")
            else:
                blocks.append(f"#### Output for Text {i}\nRating: {r}\nRationale: why")
        return ChatResponse(["\n\n".join(blocks)], prompt_tokens=10, completion_tokens=5)


def _completions():
    return [{"model": f"m{i}", "response": f"answer {i}"} for i in range(4)]


def test_judge_prompt_maps_shuffled_ratings_back():
    judge = ScriptedJudge({"answer 0": 1, "answer 1": 5, "answer 2": 3, "answer 3": 2})
    rows, tokens = judge_prompt(judge, prompt_id="p1", instruction="Q", completions=_completions(), seed=3)
    assert [r["model"] for r in rows] == ["m0", "m1", "m2", "m3"]
    for r, expected in zip(rows, [1, 5, 3, 2]):
        assert {a: r["annotations"][a]["Rating"] for a in ASPECTS} == dict.fromkeys(ASPECTS, str(expected))
        assert r["fine-grained_score"] == expected
        assert r["overall_score"] == 2 * expected
    assert tokens == 4 * 15
    assert judge.calls == 8


def test_judge_prompt_retries_then_fails_loudly():
    judge = ScriptedJudge({"answer 0": 1, "answer 1": 5, "answer 2": 3, "answer 3": 2}, bad_first=2)
    rows, _ = judge_prompt(judge, prompt_id="p", instruction="Q", completions=_completions(), retries=2)
    assert rows[1]["annotations"]["honesty"]["Rating"] == "5"
    judge = ScriptedJudge({"answer 0": 1, "answer 1": 5, "answer 2": 3, "answer 3": 2}, bad_first=10)
    with pytest.raises(JudgeParseError, match=r"prompt p instruction_following: unparseable after 3 attempt\(s\)"):
        judge_prompt(judge, prompt_id="p", instruction="Q", completions=_completions(), retries=2)
