"""Self-Instruct prompt format, list parsing, the filters (ROUGE-L with hand-counted overlaps) and bootstrapping."""

import re

import pytest

from zephyr.chat import ChatResponse
from zephyr.feedback.selfinstruct import (
    InstructionFilter,
    bootstrap,
    encode_prompt,
    filter_instructions,
    parse_instructions,
)

pytestmark = pytest.mark.unit


def test_encode_prompt_numbers_items_and_ends_with_next_number():
    p = encode_prompt(["Give a  word that rhymes.", "Summarise the text:"])
    assert p == "Come up with a series of tasks:\n1. Give a word that rhymes.\n2. Summarise the text\n3."


def test_parse_continuation_echoed_number_and_truncation():
    reply = " Name three rivers in Europe.\n10. translate  the sentence\n into French.\n11 . List two uses of salt."
    assert parse_instructions(reply) == [
        "Name three rivers in Europe.",
        "Translate the sentence into French.",
        "List two uses of salt.",
    ]
    assert parse_instructions("9. First task here.\n10. Second task is cut of", truncated=True) == ["First task here."]
    assert parse_instructions("   ") == []


def test_rouge_l_threshold_hand_counted():
    # 7 tokens each, longest common subsequence 6 -> P = R = F = 6/7 = 0.857 > 0.7 -> drop
    f = InstructionFilter(existing=["Give me a list of three fruits."])
    sim, top = f.max_similarity("Give me a list of three vegetables.")
    assert sim == pytest.approx(6 / 7)
    assert f.reason("Give me a list of three vegetables.") == "rouge"
    # 10 tokens each, LCS 7 -> F = 0.7 exactly: the code drops only above 0.7, so it is kept
    f = InstructionFilter(existing=["Write a short poem about the sea at night today"])
    assert f.max_similarity("Write a short poem about the sea for my friend")[0] == pytest.approx(0.7)
    assert f.reason("Write a short poem about the sea for my friend") is None
    # no stemming: "fruits" vs "fruit" do not match
    f = InstructionFilter(existing=["name fruits"])
    assert f.max_similarity("name fruit")[0] == pytest.approx(0.5)


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("Summarise this text.", "too_short"),  # 3 words
        (" ".join(["word"] * 151), "too_long"),
        ("Describe the image in one sentence.", "blacklist"),
        ("Plot the sales figures by month.", "blacklist"),
        ("Tell me how to go to the station.", "blacklist"),
        ("Write a program that sorts numbers.", "banned_prefix"),
        ("write a program to add two numbers.", "banned_prefix"),
        ('"Quote" the famous line from Hamlet.', "punctuation_start"),
        ("Élaborez une phrase sur le printemps.", "non_ascii_start"),
        ("Describe the mapping between keys and values.", None),  # "map" only as a whole word
        ("Summarise this text briefly.", None),  # 4 words
    ],
)
def test_filters(text, reason):
    assert InstructionFilter().reason(text) == reason


def test_filter_compares_with_accepted_candidates_too():
    kept, reasons = filter_instructions(
        ["List three uses of a paperclip.", "List three uses of a paper clip.", "Explain why leaves change colour."],
        InstructionFilter(),
    )
    assert kept == ["List three uses of a paperclip.", "Explain why leaves change colour."]
    assert reasons == {"rouge": 1}


class ListTeacher:
    """Continues the numbered list with fresh, numbered tasks; records prompts."""

    name = "list-teacher"

    def __init__(self):
        self.prompts = []
        self.k = 0

    def chat(self, messages, **kw):
        self.prompts.append(messages[-1]["content"])
        topics = ["volcanoes", "bees", "tides", "glaciers", "comets", "deserts", "coral", "storms", "caves"]
        lines = []
        for _ in range(3):
            self.k += 1
            lines.append(f"Explain how {topics[self.k % len(topics)]} form, in case number {self.k}.")
        lines.append("Draw a picture of a cat.")  # blacklisted
        text = lines[0] + "".join(f"\n{10 + i}. {x}" for i, x in enumerate(lines[1:]))
        return ChatResponse([text], finish_reasons=["stop"])


def test_bootstrap_grows_pool_and_shows_at_most_two_machine_items():
    seeds = [f"Seed task number {i} about something useful." for i in range(10)]
    teacher = ListTeacher()
    accepted = []
    machine, reasons = bootstrap(
        seeds,
        teacher,
        7,
        flt=InstructionFilter(rouge_threshold=0.95),
        requests_per_round=2,
        workers=2,
        on_accept=accepted.append,
    )
    assert len(machine) == 7 and machine == accepted
    assert reasons["blacklist"] >= 2
    for p in teacher.prompts:
        items = re.findall(r"^\d+\. (.*)$", p, re.M)
        assert len(items) == 8 and p.endswith("\n9.")
        assert sum(not x.startswith("Seed task") for x in items) <= 2
    # later prompts include machine-written instructions (bootstrapping)
    assert any("Explain how" in p for p in teacher.prompts[2:])


def test_collect_instructions_self_instruct_resumes_from_its_store(tmp_path):
    from zephyr.feedback.selfinstruct import collect_instructions

    seeds = tmp_path / "seeds.jsonl"
    seeds.write_text("".join(f'{{"instruction": "Seed task number {i} about something useful."}}\n' for i in range(9)))
    spec = {"source": "self_instruct", "seed_tasks": str(seeds), "n": 4, "filter": {"rouge_threshold": 0.95}}
    teacher = ListTeacher()
    first, report = collect_instructions(spec, teacher, tmp_path, workers=1)
    assert len(first) == 4 and report["generated"] == 4 and report["seeds"] == 9
    calls = len(teacher.prompts)
    again, report = collect_instructions(spec, teacher, tmp_path, workers=1)
    assert again == first and report["resumed"] == 4 and len(teacher.prompts) == calls  # nothing asked again
    more, _ = collect_instructions({**spec, "n": 6}, teacher, tmp_path, workers=1)
    assert more[:4] == first and len(more) == 6


def test_collect_instructions_toy_source_and_bad_source(tmp_path):
    from zephyr.feedback.selfinstruct import collect_instructions

    got, report = collect_instructions({"source": "toy_tasks", "n": 30, "seed": 0, "filter": None}, None, tmp_path)
    assert len(got) + report["duplicates"] == 30 and len(set(got)) == len(got)
    with pytest.raises(ValueError, match="unknown source 'web'"):
        collect_instructions({"source": "web"}, None, tmp_path)
    with pytest.raises(ValueError, match="unknown keys"):
        collect_instructions({"source": "toy_tasks", "filter": {"min_word": 2}}, None, tmp_path)
