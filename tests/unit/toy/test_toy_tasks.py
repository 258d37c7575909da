import random

import pytest

from zephyr.toy.tasks import (
    FAMILIES,
    Task,
    extract_answer,
    follows_format,
    is_correct,
    is_refusal,
    make_follow_up,
    parse_follow_up,
    parse_question,
    render_reply,
    sample_tasks,
    split_of,
)

pytestmark = pytest.mark.unit


def test_sample_tasks_is_deterministic():
    a = sample_tasks(200, seed=3)
    b = sample_tasks(200, seed=3)
    c = sample_tasks(200, seed=4)
    assert [t.question for t in a] == [t.question for t in b]
    assert [t.question for t in a] != [t.question for t in c]


def test_splits_are_disjoint_by_canonical_content():
    train = sample_tasks(3000, seed=0, split="train")
    heldout = sample_tasks(1000, seed=0, split="heldout")
    assert {t.meta["key"] for t in train}.isdisjoint({t.meta["key"] for t in heldout})
    assert all(split_of(t) == "train" for t in train)
    assert all(split_of(t) == "heldout" for t in heldout)
    # a different phrasing of the same operands lands in the same split
    t = next(t for t in heldout if t.family == "addition")
    other = parse_question(f"What is {t.meta['a']} plus {t.meta['b']}?")
    assert other is not None and split_of(other) == "heldout"


def test_all_families_present_and_family_filter():
    tasks = sample_tasks(800, seed=1)
    assert {t.family for t in tasks} == set(FAMILIES)
    only = sample_tasks(50, seed=1, families=["addition", "sort_list"])
    assert {t.family for t in only} == {"addition", "sort_list"}
    with pytest.raises(ValueError, match="unknown task families"):
        sample_tasks(1, seed=0, families=["nope"])
    with pytest.raises(ValueError, match="split"):
        sample_tasks(1, seed=0, split="test")


def test_heldout_sample_mostly_unique():
    hs = sample_tasks(1000, seed=0, split="heldout")
    assert len({t.meta["key"] for t in hs}) > 800


def test_answers_are_correct_by_hand():
    t = parse_question("What is 47 + 38?")
    assert t.family == "addition" and t.answer == "85" and t.meta["carry"] is True
    assert parse_question("What is 41 + 38?").meta["carry"] is False
    assert parse_question("Subtract 25 from 42.").answer == "17"
    assert parse_question("Multiply 7 by 93.").answer == "651"
    assert parse_question("Sort these numbers from smallest to largest: 91, 56, 59, 72.").answer == "56, 59, 72, 91"
    assert parse_question("Reverse the list [68, 72, 40].").answer == "40, 72, 68"
    assert parse_question("Count the letter 's' in 'mississippi'.").answer == "4"
    assert parse_question("Convert 16 kilometers to meters.").answer == "16000"
    assert parse_question("How many minutes are in 3 hours?").answer == "180"
    wp = parse_question("Mia had 40 pears and gave away 15. How many pears does Mia have left?")
    assert wp.family == "word_problem" and wp.answer == "25" and wp.meta["op"] == "sub"


def test_parse_question_roundtrip_and_rejects_other_text():
    for t in sample_tasks(1500, seed=7) + sample_tasks(500, seed=7, split="heldout"):
        p = parse_question(t.question)
        assert p == t
        assert p.meta["format"] == t.meta["format"] and p.meta["key"] == t.meta["key"]
    assert parse_question("Write a poem about the sea.") is None
    assert parse_question("What is 3 + ?") is None
    # the repeated name in a word problem must agree
    assert parse_question("Sam has 4 apples and buys 3 more. How many apples does Mia have now?") is None
    assert parse_question("  What is 12 + 30?\n").answer == "42"


def test_format_instruction_parsed():
    t = parse_question("What is 12 + 30? Answer with just the number.")
    assert t.meta["format"] == "bare"
    t = parse_question("Reverse the list [1, 2, 3]. Reply with only the list.")
    assert t.meta["format"] == "bare"
    t = parse_question("What is 12 + 30? End your answer with 'Answer: <x>'.")
    assert t.meta["format"] == "tagged"


@pytest.mark.parametrize(
    "text,expected",
    [
        ("The answer is 42.", "42"),
        ("Answer: 42", "42"),
        ("42", "42"),
        ("12 + 30 = 42. The answer is 42.", "42"),
        ("12 + 30 = 41. The answer is 42.", "42"),
        ("12 + 30 = 42", "42"),
        ("The result is 1,042.", "1042"),
        ("I think it is 40.\nAnswer: 41.", "41"),
        ("Sorry, I can't help with that.", None),
        ("", None),
    ],
)
def test_extract_answer_numbers(text, expected):
    t = parse_question("What is 12 + 30?")
    assert extract_answer(t, text) == expected


@pytest.mark.parametrize(
    "text,expected",
    [
        ("[1, 2, 3]", "1, 2, 3"),
        ("1, 2, 3", "1, 2, 3"),
        ("1,2,3.", "1, 2, 3"),
        ("The answer is 1, 2 and 3.", "1, 2, 3"),
        ("The list 3, 1, 2 sorted is 1, 2, 3.", "1, 2, 3"),
        ("Answer: [1, 2, 3] (was 3, 1, 2)", "1, 2, 3"),
        ("The answer is 7.", None),
    ],
)
def test_extract_answer_lists(text, expected):
    t = parse_question("Sort the list [3, 1, 2] in ascending order.")
    assert extract_answer(t, text) == expected


def test_render_reply_correct_short_and_formatted():
    for t in sample_tasks(400, seed=11):
        r = render_reply(t)
        assert is_correct(t, r) and follows_format(t, r)
        assert len(r.split()) <= 30
    t = parse_question("What is 12 + 30?")
    assert render_reply(t) == "12 + 30 = 42. The answer is 42."
    assert render_reply(t, "41") == "The answer is 41."
    assert render_reply(t, "41", work="12 + 30 = 41.") == "12 + 30 = 41. The answer is 41."
    assert render_reply(t, fmt="tagged") == "12 + 30 = 42. Answer: 42"
    assert render_reply(t, fmt="bare") == "42"


def test_follows_format():
    bare = parse_question("What is 12 + 30? Answer with just the number.")
    assert follows_format(bare, "42") and follows_format(bare, " 42. ")
    assert not follows_format(bare, "The answer is 42.")
    tagged = parse_question("What is 12 + 30? End your answer with 'Answer: <x>'.")
    assert follows_format(tagged, "12 + 30 = 42. Answer: 42")
    assert not follows_format(tagged, "Answer: 42. That was easy.")
    assert not follows_format(tagged, "The answer is 42.")
    lst = parse_question("Reverse the list [1, 2, 3]. Reply with only the list.")
    assert follows_format(lst, "[3, 2, 1]") and follows_format(lst, "3, 2, 1")
    assert not follows_format(lst, "The answer is 3, 2, 1.")
    free = parse_question("What is 12 + 30?")
    assert follows_format(free, "anything")


def test_follow_ups():
    t = parse_question("What is 12 + 30?")
    f = parse_follow_up("Now double it.", "42")
    assert f.answer == "84" and f.family == "follow_up"
    assert parse_follow_up("Now add 10 to it.", "41").answer == "51"
    assert parse_follow_up("What is the largest number in that list?", "3, 9, 2").answer == "9"
    assert parse_follow_up("Now reverse that list.", "3, 9, 2").answer == "2, 9, 3"
    assert parse_follow_up("Now double it.", "3, 9, 2") is None
    assert parse_follow_up("Tell me a joke.", "42") is None
    rng = random.Random(0)
    for _ in range(20):
        fu = make_follow_up(t, rng)
        assert "list" not in fu.question and is_correct(fu, render_reply(fu))


def test_refusal_detection():
    assert is_refusal("I'm not able to help with that.")
    assert not is_refusal("12 + 30 = 42. The answer is 42.")


def test_task_is_hashable_and_frozen():
    t = Task("addition", "What is 1 + 2?", "3", {"format": "free"})
    assert t in {t}
    with pytest.raises(AttributeError):
        t.answer = "4"  # type: ignore[misc]
