import collections

import pytest

from zephyr.chat import ChatBackend
from zephyr.toy.rules import ErrorProfile
from zephyr.toy.students import RuleStudent, default_pool
from zephyr.toy.tasks import follows_format, is_correct, is_hedged, sample_tasks
from zephyr.toy.teacher import ToyTeacher


def _acc(model, tasks):
    return sum(is_correct(t, model.chat([{"role": "user", "content": t.question}]).texts[0]) for t in tasks) / len(
        tasks
    )


def test_default_pool_is_diverse_chat_backends():
    pool = default_pool(0)
    assert len(pool) >= 4 and all(isinstance(m, ChatBackend) for m in pool)
    assert len({m.name for m in pool}) == len(pool)
    tasks = sample_tasks(600, seed=0, split="heldout")
    accs = {m.name: _acc(m, tasks) for m in pool}
    assert max(accs.values()) - min(accs.values()) > 0.3


def test_a_pool_member_is_right_where_the_teacher_is_wrong():
    carry = [t for t in sample_tasks(800, seed=1, split="heldout", families=["addition"]) if t.meta["carry"]]
    teacher_acc = _acc(ToyTeacher(0), carry)
    best = max(_acc(m, carry) for m in default_pool(0))
    assert teacher_acc < 0.25 and best > 0.8


def test_student_skill_controls_random_slips():
    tasks = sample_tasks(1000, seed=2, families=["reverse_list", "count_letter"])
    for skill in (0.3, 0.9):
        acc = _acc(RuleStudent(f"s{skill}", skill=skill), tasks)
        assert abs(acc - skill) < 0.05


def test_student_style_knobs():
    tasks = [t for t in sample_tasks(1500, seed=3) if t.meta["format"] != "free"]
    sloppy = RuleStudent("sloppy", format_error=1.0)
    assert not any(follows_format(t, sloppy.chat([{"role": "user", "content": t.question}]).texts[0]) for t in tasks)
    hedger = RuleStudent("hedger", hedge_rate=1.0)
    assert all(is_hedged(hedger.chat([{"role": "user", "content": t.question}]).texts[0]) for t in tasks[:100])
    chatty = RuleStudent("chatty", verbosity=1.0)
    first = collections.Counter(
        chatty.chat([{"role": "user", "content": t.question}]).texts[0].split()[0] for t in tasks
    )
    assert set(first) <= {"Sure,", "Let", "Good"}


def test_student_seed_changes_sampling_but_not_when_fixed():
    tasks = sample_tasks(200, seed=4)
    a = [RuleStudent("w", seed=1, skill=0.5).chat([{"role": "user", "content": t.question}]).texts[0] for t in tasks]
    b = [RuleStudent("w", seed=1, skill=0.5).chat([{"role": "user", "content": t.question}]).texts[0] for t in tasks]
    c = [RuleStudent("w", seed=2, skill=0.5).chat([{"role": "user", "content": t.question}]).texts[0] for t in tasks]
    assert a == b and a != c


def test_error_profile_validates_ranges():
    with pytest.raises(ValueError, match="carry_error"):
        ErrorProfile(carry_error=1.5)
    with pytest.raises(ValueError, match="family_skill"):
        ErrorProfile(family_skill={"addition": -0.1})
