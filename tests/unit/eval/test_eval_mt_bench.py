"""MT-Bench format: FastChat question/answer fixtures, judge prompt selection, rating parsing, swap logic."""

from __future__ import annotations

import json

import pytest

from zephyr.chat import ChatResponse
from zephyr.eval import mt_bench as mb
from zephyr.toy.mt_bench_judge import parse_pair, parse_single

QUESTIONS = [
    {"question_id": 81, "category": "writing", "turns": ["Write a poem about tea.", "Make it rhyme."]},
    {
        "question_id": 111,
        "category": "math",
        "turns": ["What is 2 + 3?", "Now double it."],
        "reference": ["2 + 3 = 5. The answer is 5.", "2 * 5 = 10. The answer is 10."],
    },
    {"question_id": 131, "category": "extraction", "turns": ["List the names in 'Al met Bo'.", "Sort them."]},
]


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


class ScriptedBackend:
    """Answers with a scripted function of the messages and records every call."""

    def __init__(self, name, fn):
        self.name, self.fn, self.calls = name, fn, []

    def chat(self, messages, *, temperature=0.7, top_p=1.0, max_tokens=256, n=1, seed=None, stop=None):
        self.calls.append({"messages": [dict(m) for m in messages], "temperature": temperature, "seed": seed})
        return ChatResponse(texts=[self.fn(messages)] * n, model=self.name)


def test_load_questions_fastchat_fixture(tmp_path):
    qs = mb.load_questions(write_jsonl(tmp_path / "question.jsonl", QUESTIONS))
    assert [q["question_id"] for q in qs] == [81, 111, 131]
    assert qs[1]["reference"][1].endswith("10.")


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ({"category": "math", "turns": ["a", "b"]}, "question_id"),
        ({"question_id": 1, "turns": ["a", "b"]}, "category"),
        ({"question_id": 1, "category": "math", "turns": []}, "turns"),
        ({"question_id": 1, "category": "math", "turns": ["a", "b"], "reference": ["x"]}, "reference"),
    ],
)
def test_load_questions_errors_name_file_and_line(tmp_path, row, message):
    path = write_jsonl(tmp_path / "q.jsonl", [QUESTIONS[0], row])
    with pytest.raises(ValueError, match=rf"q\.jsonl:2: .*{message}"):
        mb.load_questions(path)


def test_builtin_question_set_covers_all_categories_with_references():
    qs = mb.load_questions()
    cats = {q["category"] for q in qs}
    assert cats == set(mb.TEMPERATURE_CONFIG)
    assert 16 <= len(qs) <= 24
    assert all(len(q["turns"]) == 2 for q in qs)
    for q in qs:
        assert bool(q.get("reference")) == (q["category"] in ("math", "reasoning", "coding")), q["question_id"]


def test_generate_answers_two_turns_temperatures_and_resume(tmp_path):
    backend = ScriptedBackend("m1", lambda msgs: f"answer to: {msgs[-1]['content']}")
    out = tmp_path / "model_answer" / "m1.jsonl"
    answers = mb.generate_answers(QUESTIONS[:2], backend, out, progress=False)
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["question_id"] for r in rows] == [81, 111]
    assert set(rows[0]) == {"question_id", "answer_id", "model_id", "choices", "tstamp"}
    assert rows[0]["model_id"] == "m1"
    assert rows[0]["choices"] == [
        {"index": 0, "turns": ["answer to: Write a poem about tea.", "answer to: Make it rhyme."]}
    ]
    # turn 2 saw its own turn-1 answer; FastChat temperatures: writing 0.7, math 0.0
    assert backend.calls[1]["messages"] == [
        {"role": "user", "content": "Write a poem about tea."},
        {"role": "assistant", "content": "answer to: Write a poem about tea."},
        {"role": "user", "content": "Make it rhyme."},
    ]
    assert [c["temperature"] for c in backend.calls] == [0.7, 0.7, 0.0, 0.0]
    assert answers[111]["choices"][0]["turns"][1] == "answer to: Now double it."
    # resume: only the new question is answered
    mb.generate_answers(QUESTIONS, backend, out, progress=False)
    assert len(backend.calls) == 6
    assert [json.loads(line)["question_id"] for line in out.read_text().splitlines()] == [81, 111, 131]


def test_load_answers_rejects_malformed_rows(tmp_path):
    path = write_jsonl(tmp_path / "a.jsonl", [{"question_id": 1, "model_id": "m", "choices": [{"index": 0}]}])
    with pytest.raises(ValueError, match=r"a\.jsonl:1: 'choices\[0\]\.turns'"):
        mb.load_answers(path)


@pytest.mark.parametrize(
    ("kind", "qi", "turn", "name"),
    [
        ("single", 0, 1, "single-v1"),
        ("single", 0, 2, "single-v1-multi-turn"),
        ("single", 1, 1, "single-math-v1"),
        ("single", 1, 2, "single-math-v1-multi-turn"),
        ("pairwise", 0, 1, "pair-v2"),
        ("pairwise", 0, 2, "pair-v2-multi-turn"),
        ("pairwise", 1, 1, "pair-math-v1"),
        ("pairwise", 1, 2, "pair-math-v1-multi-turn"),
    ],
)
def test_prompt_selection(kind, qi, turn, name):
    assert mb.pick_prompt(kind, QUESTIONS[qi], turn).name == name


def test_single_prompts_have_fastchat_blocks():
    tpl, p = mb.single_prompt(QUESTIONS[1], ["It is 5.", "It is 10."], 1)
    assert tpl.system_prompt == "You are a helpful assistant."
    assert p.startswith("[Instruction]\n") and '"[[rating]]"' in p
    assert "[Question]\nWhat is 2 + 3?\n\n[The Start of Reference Answer]\n2 + 3 = 5. The answer is 5.\n" in p
    assert p.endswith("[The Start of Assistant's Answer]\nIt is 5.\n[The End of Assistant's Answer]")
    tpl, p = mb.single_prompt(QUESTIONS[1], ["It is 5.", "It is 10."], 2)
    assert "second" in tpl.system_prompt
    assert p.index("### Reference answer:\n2 * 5 = 10.") < p.index("<|The Start of Assistant A's Conversation")
    assert "### User:\nNow double it.\n\n### Assistant A:\nIt is 10.\n\n<|The End of Assistant A's" in p


@pytest.mark.parametrize(
    ("text", "score"),
    [
        ("Good answer. Rating: [[7]]", 7.0),
        ("Rating: [[8.5]] and later [[2]]", 8.5),
        ("The rating is [6].", 6.0),  # fallback regex
        ("I would give it a seven.", -1.0),
        ("Rating: [[ten]]", -1.0),
    ],
)
def test_parse_rating(text, score):
    assert mb.parse_rating(text) == score


@pytest.mark.parametrize(
    ("text", "verdict"),
    [("... [[A]]", "A"), ("[[B]]", "B"), ("tie [[C]]", "tie"), ("[[A]] or [[B]]", "A"), ("A is better", "error")],
)
def test_parse_pair_verdict(text, verdict):
    assert mb.parse_pair_verdict(text) == verdict


def test_judge_single_counts_failures_and_averages(tmp_path):
    # the judge rates "good" answers 9, "bad" 3, and answers garbage for the extraction question
    def rate(msgs):
        p = msgs[-1]["content"]
        if "Al met Bo" in p:
            return "no idea"
        return "Rating: [[9]]" if parse_single(p)[1] == "good" else "Rating: [[3]]"

    judge = ScriptedBackend("fake-judge", rate)
    answers = {
        81: {"question_id": 81, "model_id": "m", "choices": [{"index": 0, "turns": ["good", "bad"]}]},
        111: {"question_id": 111, "model_id": "m", "choices": [{"index": 0, "turns": ["good", "good"]}]},
        131: {"question_id": 131, "model_id": "m", "choices": [{"index": 0, "turns": ["x", "y"]}]},
    }
    out = tmp_path / "judgment.jsonl"
    rows = mb.judge_single(QUESTIONS, answers, judge, out)
    assert [(r["question_id"], r["turn"], r["score"]) for r in rows] == [
        (81, 1, 9.0), (81, 2, 3.0), (111, 1, 9.0), (111, 2, 9.0), (131, 1, -1.0), (131, 2, -1.0),
    ]  # fmt: skip
    assert rows[2]["judge"] == ["fake-judge", "single-math-v1"]
    assert all(c["temperature"] == 0.0 for c in judge.calls)
    s = mb.summarize_single(rows, QUESTIONS)["m"]
    assert s["score"] == pytest.approx(7.5)  # (9 + 3 + 9 + 9) / 4, the two -1 rows excluded
    assert (s["turn_1"], s["turn_2"]) == (9.0, 6.0)
    assert s["categories"] == {"math": 9.0, "writing": 6.0}
    assert (s["n_valid"], s["n_failed"]) == (4, 2)
    # resume: a second run reuses the file and asks nothing
    n_calls = len(judge.calls)
    again = mb.judge_single(QUESTIONS, answers, judge, out)
    assert len(judge.calls) == n_calls and [r["score"] for r in again] == [r["score"] for r in rows]
    header, table = mb.single_table_rows(mb.summarize_single(rows, QUESTIONS))
    md = mb.markdown_table(header, table)
    assert "| overall | 7.50 |" in md and "| failed (-1) | 2 |" in md


@pytest.mark.parametrize(
    ("g1", "g2", "outcome"),
    [
        ("m1", "m1", "m1"),
        ("m2", "m2", "m2"),
        ("m1", "m2", "tie"),  # inconsistent across the swap
        ("tie", "m1", "tie"),
        ("m1", "tie", "tie"),
        ("tie", "tie", "tie"),
        ("error", "error", "error"),
        ("error", "m1", "tie"),
    ],
)
def test_swap_outcome(g1, g2, outcome):
    assert mb.swap_outcome(g1, g2) == outcome


def _answers(model, turns_by_q):
    return {
        q: {"question_id": q, "model_id": model, "choices": [{"index": 0, "turns": t}]} for q, t in turns_by_q.items()
    }


def test_pairwise_position_biased_judge_gives_only_ties():
    judge = ScriptedBackend("always-A", lambda msgs: "[[A]]")
    a1 = _answers("m1", {81: ["x1", "x2"], 111: ["y1", "y2"]})
    a2 = _answers("m2", {81: ["u1", "u2"], 111: ["v1", "v2"]})
    rows = mb.judge_pairwise(QUESTIONS[:2], a1, a2, judge)
    assert [(r["g1_winner"], r["g2_winner"]) for r in rows] == [("m1", "m2")] * 4
    s = mb.summarize_pairwise(rows, QUESTIONS)["overall"]
    assert (s["win"], s["loss"], s["tie"], s["n"]) == (0, 0, 4, 4)
    assert s["win_rate"] == 0.0 and s["win_rate_adjusted"] == 0.5


def test_pairwise_consistent_judge_maps_winners_back():
    def prefer_star(msgs):
        _, a, b, _ = parse_pair(msgs[-1]["content"])  # the answers of the judged turn
        if "*" in a and "*" not in b:
            return "A wins [[A]]"
        if "*" in b and "*" not in a:
            return "B wins [[B]]"
        return "[[C]]"

    judge = ScriptedBackend("star", prefer_star)
    a1 = _answers("m1", {81: ["*x1", "x2"], 111: ["y1", "y2"], 131: ["z", "*z"]})
    a2 = _answers("m2", {81: ["u1", "*u2"], 111: ["v1", "v2"], 131: ["w", "w"]})
    rows = mb.judge_pairwise(QUESTIONS, a1, a2, judge)
    got = [(r["question_id"], r["turn"], mb.swap_outcome(r["g1_winner"], r["g2_winner"])) for r in rows]
    assert got == [(81, 1, "m1"), (81, 2, "m2"), (111, 1, "tie"), (111, 2, "tie"), (131, 1, "tie"), (131, 2, "m1")]
    s = mb.summarize_pairwise(rows, QUESTIONS)
    assert (s["model_1"], s["model_2"]) == ("m1", "m2")
    o = s["overall"]
    assert (o["win"], o["loss"], o["tie"]) == (2, 1, 3)
    assert o["win_rate"] == pytest.approx(2 / 6) and o["win_rate_adjusted"] == pytest.approx(3.5 / 6)
    assert s["categories"]["writing"]["win"] == 1 and s["categories"]["writing"]["loss"] == 1
    header, table = mb.pairwise_table_rows(s)
    assert table[0] == ["overall", "2", "1", "3", "0", "0.333", "0.583"]


def test_mt_bench_cli_toy_teacher_and_verifier_judge(tmp_path, capsys):
    from zephyr.cli import main
    from zephyr.toy.mt_bench_judge import grade_with_reference

    qs = [q for q in mb.load_questions() if q["category"] == "math"]
    qfile = write_jsonl(tmp_path / "question.jsonl", qs)
    out = tmp_path / "out"
    argv = ["eval", "mt-bench", "--backend", '{"type": "toy_teacher"}', "--questions", str(qfile)]
    assert main([*argv, "--out", str(out), "--no-progress"]) == 0
    answers = mb.load_answers(out / "model_answer" / "toy-teacher.jsonl")
    judgments = [json.loads(line) for line in (out / "model_judgment" / "toy-verifier-judge_single.jsonl").open()]
    assert len(judgments) == 2 * len(qs)
    for j in judgments:
        q = next(q for q in qs if q["question_id"] == j["question_id"])
        answer = answers[j["question_id"]]["choices"][0]["turns"][j["turn"] - 1]
        assert j["score"] == grade_with_reference(answer, q["reference"][j["turn"] - 1])[0]
        assert j["judge"][1] == ("single-math-v1" if j["turn"] == 1 else "single-math-v1-multi-turn")
    results = json.loads((out / "results.json").read_text())["single"]["toy-teacher"]
    assert results["score"] == pytest.approx(sum(j["score"] for j in judgments) / len(judgments))
    assert "MT-Bench (single" in capsys.readouterr().out
    assert main(["eval", "mt-bench", "--backend", "{bad", "--questions", str(qfile)]) == 2
    assert "--backend: not valid JSON" in capsys.readouterr().err


class Interrupted(BaseException):
    """What Ctrl-C (KeyboardInterrupt) or a dying process looks like to the judging loop."""


class DyingJudge(ScriptedBackend):
    """A judge that answers ``k`` calls and then raises ``Interrupted`` (a crash mid-judging)."""

    def __init__(self, name, fn, k):
        super().__init__(name, fn)
        self.k = k

    def chat(self, messages, **kw):
        if self.k is not None and len(self.calls) >= self.k:
            raise Interrupted
        return super().chat(messages, **kw)


def _answer_rows(model, prefix):
    return _answers(model, {q["question_id"]: [f"{prefix}{q['question_id']}a", f"{prefix}b"] for q in QUESTIONS})


def test_judge_single_keeps_judgments_of_an_interrupted_run_and_resumes(tmp_path):
    out = tmp_path / "model_judgment" / "j_single.jsonl"
    answers = _answer_rows("m", "x")
    dying = DyingJudge("j", lambda msgs: "Rating: [[7]]", k=4)
    with pytest.raises(Interrupted):
        mb.judge_single(QUESTIONS, answers, dying, out)
    on_disk = [json.loads(x) for x in out.read_text().splitlines()]
    assert [(r["question_id"], r["turn"]) for r in on_disk] == [(81, 1), (81, 2), (111, 1), (111, 2)]
    with open(out, "a") as f:  # a kill -9 mid-write leaves a torn last line: it is cut, not glued or counted
        f.write('{"question_id": 131, "model": "m", "judge": ["j", ')
    rerun = DyingJudge("j", lambda msgs: "Rating: [[8]]", k=None)
    rows = mb.judge_single(QUESTIONS, answers, rerun, out)
    assert len(rerun.calls) == 2  # only the two missing judgments are asked for
    assert [(r["question_id"], r["turn"], r["score"]) for r in rows] == [
        (81, 1, 7.0), (81, 2, 7.0), (111, 1, 7.0), (111, 2, 7.0), (131, 1, 8.0), (131, 2, 8.0),
    ]  # fmt: skip
    keys = [(r["question_id"], r["turn"]) for r in map(json.loads, out.read_text().splitlines())]
    assert sorted(keys) == sorted({(q["question_id"], t) for q in QUESTIONS for t in (1, 2)})  # each exactly once


def test_judge_pairwise_appends_each_verdict_and_resumes(tmp_path):
    out = tmp_path / "j_pair.jsonl"
    a1, a2 = _answer_rows("m1", "x"), _answer_rows("m2", "y")
    dying = DyingJudge("j", lambda msgs: "[[A]]", k=5)  # 2 games per verdict: dies in the 3rd verdict
    with pytest.raises(Interrupted):
        mb.judge_pairwise(QUESTIONS, a1, a2, dying, out)
    assert [(r["question_id"], r["turn"]) for r in map(json.loads, out.read_text().splitlines())] == [
        (81, 1), (81, 2)
    ]  # fmt: skip
    rerun = DyingJudge("j", lambda msgs: "[[B]]", k=None)
    rows = mb.judge_pairwise(QUESTIONS, a1, a2, rerun, out)
    assert len(rerun.calls) == 2 * 4  # the 4 missing verdicts, two games each
    assert [r["g1_winner"] for r in rows] == ["m1", "m1", "m2", "m2", "m2", "m2"]
    again = DyingJudge("j", lambda msgs: "[[C]]", k=0)  # a third run asks nothing and writes nothing
    assert mb.judge_pairwise(QUESTIONS, a1, a2, again, out) == rows
    lines = out.read_text().splitlines()
    assert len(lines) == 6 and len({(json.loads(x)["question_id"], json.loads(x)["turn"]) for x in lines}) == 6
