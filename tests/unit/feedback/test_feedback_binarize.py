"""Binarization: chosen = best mean, seeded random rejected, tie policies, criteria, failures, schema."""

import pytest

from zephyr.feedback.binarize import binarize, completion_score, split_pairs

pytestmark = pytest.mark.unit


def comp(model, ratings, overall=None, response=None):
    aspects = ["instruction_following", "honesty", "truthfulness", "helpfulness"]
    return {
        "model": model,
        "response": response if response is not None else f"reply of {model}",
        "annotations": {a: {"Rating": str(r)} for a, r in zip(aspects, ratings)},
        "overall_score": overall,
    }


def row(*completions, instruction="What is 2 + 2?"):
    return {"instruction": instruction, "completions": list(completions)}


def test_score_mean_skips_na_and_overall():
    assert completion_score(comp("a", [5, "N/A", 4, 3])) == 4.0
    assert completion_score(comp("a", [5, 5, 5, 5], overall=7.5), "overall") == 7.5
    assert completion_score(comp("a", ["N/A"] * 4)) is None


def test_chosen_is_best_mean_and_rejected_is_seeded_random_other():
    r = row(comp("a", [2, 2, 2, 2]), comp("b", [5, 5, 4, 4]), comp("c", [3, 3, 3, 3]), comp("d", [1, 1, 1, 1]))
    rejected = set()
    for seed in range(30):
        pairs, rep = binarize([r], seed=seed)
        assert len(pairs) == 1 and rep["pairs"] == 1
        p = pairs[0]
        assert p["chosen"][1]["content"] == "reply of b" and p["score_chosen"] == 4.5
        rejected.add(p["rejected"][1]["content"])
    assert rejected == {"reply of a", "reply of c", "reply of d"}
    assert binarize([r], seed=7)[0] == binarize([r], seed=7)[0]


def test_schema():
    pairs, _ = binarize([row(comp("a", [5, 5, 5, 5]), comp("b", [1, 1, 1, 1]))])
    p = pairs[0]
    assert set(p) == {"prompt", "prompt_id", "chosen", "rejected", "messages", "score_chosen", "score_rejected"}
    assert p["chosen"] == [
        {"role": "user", "content": "What is 2 + 2?"},
        {"role": "assistant", "content": "reply of a"},
    ]
    assert p["messages"] == p["chosen"] and p["rejected"][1]["content"] == "reply of b"
    assert len(p["prompt_id"]) == 64 and (p["score_chosen"], p["score_rejected"]) == (5.0, 1.0)


def test_ties_drop_vs_random():
    r = row(comp("a", [4, 4, 4, 4]), comp("b", [4, 4, 4, 4]), comp("c", [4, 4, 4, 4]), comp("d", [4, 4, 4, 4]))
    pairs, rep = binarize([r], ties="drop")
    assert pairs == [] and rep["ties_dropped"] == 1 and rep["prompts_without_pair"] == 1
    pairs, rep = binarize([r], ties="random")
    assert len(pairs) == 1 and pairs[0]["score_chosen"] == pairs[0]["score_rejected"] == 4.0
    assert pairs[0]["chosen"] != pairs[0]["rejected"]
    # ties=random breaks a tie for the top by a seeded draw, not by position
    chosen = {binarize([r], ties="random", seed=s)[0][0]["chosen"][1]["content"] for s in range(20)}
    assert len(chosen) > 1


def test_random_rejected_tie_with_best_is_dropped_only_when_drawn():
    r = row(comp("a", [5, 5, 5, 5]), comp("b", [5, 5, 5, 5]), comp("c", [1, 1, 1, 1]))
    outcomes = [binarize([r], seed=s)[1]["ties_dropped"] for s in range(40)]
    assert set(outcomes) == {0, 1}


def test_random_lower_lowest_and_all_pairs():
    r = row(comp("a", [5, 5, 5, 5]), comp("b", [5, 5, 5, 5]), comp("c", [3, 3, 3, 3]), comp("d", [1, 1, 1, 1]))
    for s in range(20):
        p = binarize([r], rejected="random_lower", seed=s)[0][0]
        assert p["score_rejected"] < p["score_chosen"]
    p = binarize([r], rejected="lowest")[0][0]
    assert p["rejected"][1]["content"] == "reply of d"
    pairs, rep = binarize([r], rejected="all_pairs")
    assert len(pairs) == 5 and rep["ties_dropped"] == 1  # 6 pairs, a=b dropped
    assert all(p["score_chosen"] > p["score_rejected"] for p in pairs)
    assert len(binarize([r], rejected="all_pairs", ties="random")[0]) == 6


def test_overall_criterion():
    r = row(comp("a", [5, 5, 5, 5], overall=3.0), comp("b", [1, 1, 1, 1], overall=9.0))
    p = binarize([r], criterion="overall")[0][0]
    assert p["chosen"][1]["content"] == "reply of b" and p["score_chosen"] == 9.0


def test_failures_and_counts():
    bad = comp("x", ["N/A"] * 4)
    rows = [
        row(comp("a", [5, 5, 5, 5]), comp("b", [2, 2, 2, 2]), bad, instruction="q1"),
        row(comp("a", [5, 5, 5, 5]), bad, instruction="q2"),
        row(comp("a", [5, 5, 5, 5]), comp("b", [1, 1, 1, 1], response="  "), instruction="q3"),
    ]
    pairs, rep = binarize(rows, seed=1)
    assert rep["prompts"] == 3 and rep["pairs"] == 1
    assert rep["prompts_with_failures"] == 3 and rep["prompts_without_pair"] == 2
    assert rep["chosen_models"] == {"a": 1} and rep["rejected_models"] == {"b": 1}


def test_bad_options_and_rows():
    with pytest.raises(ValueError, match="ties must be one of"):
        binarize([], ties="keep")
    with pytest.raises(ValueError, match="row 0: an UltraFeedback row needs"):
        binarize([{"prompt": "x"}])


def test_split_keeps_prompts_together():
    r1 = row(comp("a", [5, 5, 5, 5]), comp("b", [3, 3, 3, 3]), comp("c", [1, 1, 1, 1]), instruction="q1")
    rows = [r1] + [row(comp("a", [5] * 4), comp("b", [1] * 4), instruction=f"q{i}") for i in range(2, 11)]
    pairs, _ = binarize(rows, rejected="all_pairs")
    train, test = split_pairs(pairs, 0.2, seed=0)
    assert len(train) + len(test) == len(pairs) == 12
    assert len({p["prompt_id"] for p in test}) == 2
    assert not {p["prompt_id"] for p in train} & {p["prompt_id"] for p in test}
