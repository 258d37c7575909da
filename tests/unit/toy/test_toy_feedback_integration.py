"""The toy judge behind the real feedback judge code: prompt builders, parser, retries, permutation."""

from zephyr.feedback.judge import judge_prompt
from zephyr.feedback.rubric import ASPECTS
from zephyr.toy import ToyTeacher, VerifierJudge, default_pool, is_correct, sample_tasks


def test_pipeline_parses_toy_judge_and_prefers_correct_answers():
    pool = default_pool(0)[:3] + [ToyTeacher(0)]
    judge = VerifierJudge(seed=0, noise=0.2)
    tasks = sample_tasks(40, seed=11)
    chosen_correct = 0
    for k, t in enumerate(tasks):
        comps = [
            {"model": m.name, "response": m.chat([{"role": "user", "content": t.question}]).texts[0]} for m in pool
        ]
        rows, tokens = judge_prompt(judge, prompt_id=f"p{k}", instruction=t.question, completions=comps, retries=8)
        assert tokens > 0 and [r["model"] for r in rows] == [c["model"] for c in comps]
        for r, c in zip(rows, comps):
            assert r["response"] == c["response"]  # the display permutation was undone
            assert set(r["annotations"]) == set(ASPECTS)
            assert 1 <= r["overall_score"] <= 10
            if is_correct(t, r["response"]):
                assert r["annotations"]["truthfulness"]["Rating"] == "5"
            else:
                assert int(r["annotations"]["truthfulness"]["Rating"]) <= 4
        best = max(rows, key=lambda r: r["fine-grained_score"])
        chosen_correct += is_correct(t, best["response"])
        if any(is_correct(t, c["response"]) for c in comps):
            assert is_correct(t, best["response"]), (t.question, rows)
    assert chosen_correct >= 36
