"""MTBenchVerifierJudge: reads MT-Bench judge prompts, grades against references, answers in the judge format."""

from __future__ import annotations

import pytest

from zephyr.eval import mt_bench as mb
from zephyr.toy.mt_bench_judge import MTBenchVerifierJudge, grade_open, grade_with_reference, parse_pair, parse_single

MATH = {
    "question_id": 1,
    "category": "math",
    "turns": ["What is 47 + 38?", "Now double it."],
    "reference": ["47 + 38 = 85. The answer is 85.", "2 * 85 = 170. The answer is 170."],
}
SORT = {
    "question_id": 2,
    "category": "coding",
    "turns": ["Sort [9, 2, 7, 4].", "Now reverse that list."],
    "reference": ["The answer is 2, 4, 7, 9.", "The answer is 9, 7, 4, 2."],
}
NAMES = {
    "question_id": 3,
    "category": "reasoning",
    "turns": ["Ana is taller than Ben, and Ben is taller than Tom. Who is the shortest?", "Who is the tallest?"],
    "reference": ["The order is Ana, Ben, Tom. The answer is Tom.", "The answer is Ana."],
}
WRITING = {
    "question_id": 4,
    "category": "writing",
    "turns": ["Write a note inviting a neighbour to a party.", "Shorter."],
}


def ask(judge, tpl, prompt):
    resp = judge.chat([{"role": "system", "content": tpl.system_prompt}, {"role": "user", "content": prompt}])
    return resp.texts[0]


@pytest.mark.parametrize(
    ("answer", "score"),
    [
        ("47 + 38 = 85. The answer is 85.", 10),
        ("85", 10),
        ("The answer is 85, not 170.", 10),  # marker wins
        ("It is either 85 or 86; the answer is 86.", 5),  # right number present, wrong final
        ("The answer is 84.", 2),
        ("", 1),
        ("The answer is 85. " + "word " * 210, 9),  # padded
    ],
)
def test_grade_number_reference(answer, score):
    assert grade_with_reference(answer, MATH["reference"][0])[0] == score


def test_grade_list_and_word_references():
    assert grade_with_reference("Sorted: [2, 4, 7, 9]", SORT["reference"][0])[0] == 10
    assert grade_with_reference("The answer is 9, 2, 7, 4.", SORT["reference"][0])[0] == 2
    assert grade_with_reference("Tom is the shortest.", NAMES["reference"][0])[0] == 10
    assert grade_with_reference("The answer is Ben.", NAMES["reference"][0])[0] == 2
    assert grade_with_reference("Maybe Ana, Ben or Tom.", NAMES["reference"][0])[0] == 5


def test_grade_open_formula():
    # 60+ distinct words -> length term 4; question words of 4+ letters: write, note, inviting, neighbour, party
    answer = "Dear neighbour, you are warmly invited to our party. " + " ".join(
        f"w{chr(97 + i % 26)}{chr(97 + i // 26)}" for i in range(60)
    )
    score, why = grade_open(answer, WRITING["turns"][0])
    assert score == round(1 + 4 + 3 * (2 / 5) + 2) == 8
    assert "40%" in why
    assert grade_open("party party party party", WRITING["turns"][0])[0] == round(1 + 4 * 4 / 60 + 3 / 5)


@pytest.mark.parametrize("turn", [1, 2])
def test_single_prompt_round_trip(turn):
    answers = ["The answer is 85.", "The answer is 170."]
    tpl, prompt = mb.single_prompt(MATH, answers, turn)
    question, answer, ref = parse_single(prompt)
    assert question == MATH["turns"][turn - 1]
    assert answer == answers[turn - 1]
    assert ref == MATH["reference"][turn - 1]
    judge = MTBenchVerifierJudge()
    assert mb.parse_rating(ask(judge, tpl, prompt)) == 10
    _, wrong = mb.single_prompt(MATH, ["The answer is 85.", "The answer is 171."], turn)
    assert mb.parse_rating(ask(judge, tpl, wrong)) == (10 if turn == 1 else 2)


@pytest.mark.parametrize("turn", [1, 2])
def test_pair_prompt_round_trip_and_verdicts(turn):
    good, bad = ["The answer is 2, 4, 7, 9.", "9, 7, 4, 2"], ["2, 9, 4, 7", "The answer is 2, 4, 7, 9."]
    tpl, prompt = mb.pair_prompt(SORT, good, bad, turn)
    q, a, b, ref = parse_pair(prompt)
    assert (q, a, b, ref) == (SORT["turns"][turn - 1], good[turn - 1], bad[turn - 1], SORT["reference"][turn - 1])
    judge = MTBenchVerifierJudge()
    assert mb.parse_pair_verdict(ask(judge, tpl, prompt)) == "A"
    _, swapped = mb.pair_prompt(SORT, bad, good, turn)
    assert mb.parse_pair_verdict(ask(judge, tpl, swapped)) == "B"
    _, same = mb.pair_prompt(SORT, good, good, turn)
    assert mb.parse_pair_verdict(ask(judge, tpl, same)) == "tie"


def test_pairwise_through_mt_bench_is_swap_consistent():
    judge = MTBenchVerifierJudge()
    a1 = {1: {"question_id": 1, "model_id": "good", "choices": [{"index": 0, "turns": ["85", "170"]}]}}
    a2 = {1: {"question_id": 1, "model_id": "bad", "choices": [{"index": 0, "turns": ["84", "170"]}]}}
    rows = mb.judge_pairwise([MATH], a1, a2, judge)
    assert [(r["g1_winner"], r["g2_winner"]) for r in rows] == [("good", "good"), ("tie", "tie")]


def test_prompt_without_answer_block_is_not_rated():
    judge = MTBenchVerifierJudge()
    text = judge.chat([{"role": "user", "content": "hello"}]).texts[0]
    assert mb.parse_rating(text) == -1
