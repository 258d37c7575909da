import hashlib

import pytest

from zephyr.chat import ChatBackend
from zephyr.data.chat_template import validate_messages
from zephyr.toy.rules import add_without_carry, multiply_without_carry, subtract_without_borrow
from zephyr.toy.tasks import extract_answer, follows_format, is_correct, is_refusal, parse_question, sample_tasks
from zephyr.toy.teacher import ToyTeacher, sft_dialogues


def _ask(model, text, **kw):
    return model.chat([{"role": "user", "content": text}], **kw).texts[0]


def test_buggy_arithmetic_by_hand():
    assert add_without_carry(47, 38) == 75
    assert add_without_carry(41, 38) == 79
    assert add_without_carry(999, 1) == 990
    assert subtract_without_borrow(52, 38) == 26
    assert multiply_without_carry(7, 93) == 31
    assert multiply_without_carry(93, 7) == 31
    assert multiply_without_carry(2, 12) == 24


def test_teacher_is_a_chat_backend_and_deterministic():
    t = ToyTeacher(seed=1)
    assert isinstance(t, ChatBackend)
    q = "What is 47 + 38?"
    assert _ask(t, q, temperature=0.0) == _ask(ToyTeacher(seed=1), q, temperature=0.0)
    r = t.chat([{"role": "user", "content": q}], temperature=1.0, n=3, seed=5)
    assert r.texts == ToyTeacher(seed=1).chat([{"role": "user", "content": q}], temperature=1.0, n=3, seed=5).texts
    assert r.model == "toy-teacher" and r.finish_reasons == ["stop"] * 3 and r.completion_tokens > 0


def test_teacher_forgets_carry_always_when_rate_is_one():
    t = ToyTeacher(seed=0, carry_error=1.0, refusal_rate=0.0, skill=1.0, format_error=0.0)
    reply = _ask(t, "What is 47 + 38?")
    assert reply == "47 + 38 = 75. The answer is 75."
    assert _ask(t, "What is 41 + 38?") == "41 + 38 = 79. The answer is 79."  # no carry: right


@pytest.mark.parametrize("carry_error", [0.3, 0.8])
def test_teacher_carry_error_rate_matches_config(carry_error):
    t = ToyTeacher(seed=0, carry_error=carry_error, refusal_rate=0.0, skill=1.0)
    tasks = [x for x in sample_tasks(3000, seed=2, families=["addition"]) if x.meta["carry"]][:1500]
    wrong = sum(not is_correct(x, _ask(t, x.question, temperature=1.0, seed=i)) for i, x in enumerate(tasks))
    assert abs(wrong / len(tasks) - carry_error) < 0.04


def test_teacher_refusal_and_format_rates_match_config():
    t = ToyTeacher(seed=0, refusal_rate=0.2, format_error=0.5, carry_error=0.0, mul_carry_error=0.0)
    tasks = sample_tasks(3000, seed=3)
    replies = [_ask(t, x.question) for x in tasks]
    refusals = sum(is_refusal(r) for r in replies) / len(tasks)
    assert abs(refusals - 0.2) < 0.03
    constrained = [(x, r) for x, r in zip(tasks, replies) if x.meta["format"] != "free" and not is_refusal(r)]
    violations = sum(not follows_format(x, r) for x, r in constrained) / len(constrained)
    assert abs(violations - 0.5) < 0.05


def test_teacher_answers_follow_up_on_its_own_answer():
    t = ToyTeacher(seed=0, carry_error=1.0, refusal_rate=0.0, skill=1.0)
    msgs = [
        {"role": "user", "content": "What is 47 + 38?"},
        {"role": "assistant", "content": "47 + 38 = 75. The answer is 75."},
        {"role": "user", "content": "Now double it."},
    ]
    assert t.chat(msgs).texts[0] == "2 * 75 = 150. The answer is 150."


def test_teacher_declines_unknown_prompts_and_honours_max_tokens():
    t = ToyTeacher(seed=0, refusal_rate=0.0, unit_error=0.0)
    assert is_refusal(_ask(t, "Write a poem about the sea."))
    r = t.chat([{"role": "user", "content": "Convert 16 kilometers to meters."}], max_tokens=3)
    assert r.texts[0] == "16 * 1000" and r.finish_reasons == ["length"]


def test_teacher_misremembers_unit_factors_as_100_and_says_so_in_its_work():
    t = ToyTeacher(seed=0, unit_error=1.0, refusal_rate=0.0, skill=1.0, format_error=0.0)
    assert _ask(t, "Convert 16 kilometers to meters.") == "16 * 100 = 1600. The answer is 1600."
    assert _ask(t, "How many minutes are in 7 hours?") == "7 * 100 = 700. The answer is 700."
    assert _ask(t, "Convert 16 kg to g. Answer with just the number.") == "1600"
    right = ToyTeacher(seed=0, unit_error=0.0, refusal_rate=0.0, skill=1.0, format_error=0.0)
    assert _ask(right, "How many minutes are in 7 hours?") == "7 * 60 = 420. The answer is 420."
    tasks = sample_tasks(400, seed=3, families=["unit_conversion"])
    half = ToyTeacher(seed=0, unit_error=0.5, refusal_rate=0.0, skill=1.0)
    wrong = sum(not is_correct(task, _ask(half, task.question)) for task in tasks)
    assert abs(wrong / len(tasks) - 0.5) < 0.07


def test_sft_dialogues_schema_and_determinism():
    rows = sft_dialogues(60, seed=4, turns=(1, 3))
    assert rows == sft_dialogues(60, seed=4, turns=(1, 3))
    lengths = set()
    for row in rows:
        msgs = row["messages"]
        validate_messages(msgs, require_assistant_last=True)
        assert row["prompt"] == msgs[0]["content"]
        assert row["prompt_id"] == hashlib.sha256(row["prompt"].encode()).hexdigest()
        assert [m["role"] for m in msgs] == ["user", "assistant"] * (len(msgs) // 2)
        assert parse_question(row["prompt"]) is not None
        lengths.add(len(msgs) // 2)
    assert lengths == {1, 2, 3}
    with pytest.raises(ValueError, match="turns"):
        sft_dialogues(1, seed=0, turns=(0, 2))


def test_sft_dialogues_contain_verifiable_follow_ups_and_teacher_errors():
    rows = sft_dialogues(400, seed=5, turns=(2, 2), teacher=ToyTeacher(seed=5, skill=1.0))
    follow = [r for r in rows if r["messages"][2]["content"] in ("Now double it.", "Now add 10 to it.")]
    assert len(follow) > 50
    # a follow-up is answered from the teacher's own previous answer
    for r in follow:
        first, reply1, _, reply2 = (m["content"] for m in r["messages"])
        prev = extract_answer(parse_question(first), reply1)
        if is_refusal(reply2):
            continue
        expected = 2 * int(prev) if "double" in r["messages"][2]["content"] else int(prev) + 10
        assert reply2.endswith(f"The answer is {expected}.")
    # the teacher is imperfect: some first answers are wrong, most are right
    firsts = [(parse_question(r["prompt"]), r["messages"][1]["content"]) for r in rows]
    acc = sum(is_correct(t, a) for t, a in firsts) / len(firsts)
    assert 0.55 < acc < 0.85


def test_sft_dialogues_with_other_teacher_and_families():
    perfect = ToyTeacher(seed=0, carry_error=0, mul_carry_error=0, format_error=0, refusal_rate=0, skill=1.0)
    rows = sft_dialogues(50, seed=6, teacher=perfect, turns=(1, 1), families=["addition"])
    assert all(is_correct(parse_question(r["prompt"]), r["messages"][1]["content"]) for r in rows)
    assert all(parse_question(r["prompt"]).family == "addition" for r in rows)
