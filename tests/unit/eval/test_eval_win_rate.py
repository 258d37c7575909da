"""Win rate: both-order judging, tie handling, average lengths, the length-controlled logistic fit."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from zephyr.chat import ChatResponse
from zephyr.eval.win_rate import fit_length_logistic, load_answer_set, win_rate, win_rate_markdown
from zephyr.toy.mt_bench_judge import parse_pair


class LongerWins:
    """A judge that always prefers the longer answer (ties on equal length)."""

    name = "longer-wins"

    def chat(self, messages, **kw):
        _, a, b, _ = parse_pair(messages[-1]["content"])
        return ChatResponse(texts=["[[A]]" if len(a) > len(b) else "[[B]]" if len(b) > len(a) else "[[C]]"])


class AlwaysA:
    name = "always-a"

    def chat(self, messages, **kw):
        return ChatResponse(texts=["[[A]]"])


def _set(outputs):
    return {str(i): {"instruction": f"q{i}", "output": o, "reference": None} for i, o in enumerate(outputs)}


def test_fit_constant_preference_recovers_it():
    fit = fit_length_logistic([0.75] * 8, [10, 20, 30, 40] * 2, [25] * 8, l2=0.0)
    assert fit["lc_win_rate"] == pytest.approx(0.75, abs=1e-6)
    assert fit["w1"] == pytest.approx(0.0, abs=1e-6)


def test_fit_hand_checked_symmetric_case():
    # Preference 1 when A is longer by 10, 0 when shorter by 10, equally often: the fitted intercept is 0
    # (sigmoid(0) = 0.5) however large the slope gets, while the raw win rate is also 0.5.
    fit = fit_length_logistic([1, 0, 1, 0], [20, 10, 20, 10], [10, 20, 10, 20])
    assert fit["lc_win_rate"] == pytest.approx(0.5, abs=1e-9)
    assert fit["w1"] > 2


def test_length_explains_wins_so_lc_is_lower_than_raw():
    # A is longer in 6 of 8 pairs and wins exactly those: raw 0.75, controlled for length much closer to 0.5
    la = [50, 60, 70, 80, 90, 100, 10, 12]
    lb = [20, 20, 20, 20, 20, 20, 40, 40]
    pref = [1, 1, 1, 1, 1, 1, 0, 0]
    fit = fit_length_logistic(pref, la, lb)
    assert np.mean(pref) == 0.75
    assert fit["lc_win_rate"] < 0.7
    assert fit["w1"] > 0


def test_win_rate_with_length_biased_judge(tmp_path):
    a = _set(["a" * 30, "a" * 30, "a" * 5, "same"])
    b = _set(["b" * 10, "b" * 10, "b" * 10, "diff"])
    res = win_rate(a, b, LongerWins(), name_a="A", name_b="B", out_path=tmp_path / "j.jsonl")
    assert (res["n"], res["wins"], res["losses"], res["ties"], res["errors"]) == (4, 2, 1, 1, 0)
    assert res["win_rate"] == pytest.approx((2 + 0.5) / 4)
    assert res["avg_len_a"] == pytest.approx((30 + 30 + 5 + 4) / 4)
    assert res["avg_len_b"] == pytest.approx((10 + 10 + 10 + 4) / 4)
    assert res["length_slope"] > 0
    rows = [json.loads(line) for line in (tmp_path / "j.jsonl").read_text().splitlines()]
    assert [r["outcome"] for r in rows] == ["a", "a", "b", "tie"]
    md = win_rate_markdown(res)
    assert "| A | B | 4 | 2 | 1 | 1 | 0 | 62.5% |" in md


def test_position_biased_judge_is_all_ties():
    res = win_rate(_set(["x", "yy"]), _set(["zzz", "w"]), AlwaysA())
    assert (res["wins"], res["losses"], res["ties"]) == (0, 0, 2)
    assert res["win_rate"] == 0.5 and math.isclose(res["lc_win_rate"], 0.5, abs_tol=1e-9)


def test_load_answer_set_formats(tmp_path):
    q = [{"question_id": 7, "category": "math", "turns": ["2+2?", "double"], "reference": ["4", "8"]}]
    (tmp_path / "fc.jsonl").write_text(
        json.dumps(
            {"question_id": 7, "answer_id": "x", "model_id": "m", "choices": [{"index": 0, "turns": ["4", "8"]}]}
        )
        + "\n"
    )
    (tmp_path / "gen.jsonl").write_text(
        json.dumps({"id": "7", "messages": [{"role": "user", "content": "2+2?"}], "output": "four"}) + "\n"
    )
    (tmp_path / "bad.jsonl").write_text(json.dumps({"foo": 1}) + "\n")
    assert load_answer_set(tmp_path / "fc.jsonl", q) == {"7": {"instruction": "2+2?", "output": "4", "reference": "4"}}
    assert load_answer_set(tmp_path / "gen.jsonl")["7"]["output"] == "four"
    with pytest.raises(ValueError, match=r"bad\.jsonl:1"):
        load_answer_set(tmp_path / "bad.jsonl")
    with pytest.raises(ValueError, match="no instruction id in common"):
        win_rate(_set(["a"]), {"x": {"instruction": "i", "output": "o"}}, AlwaysA())


def test_win_rate_cli_with_toy_judge(tmp_path, capsys):
    from zephyr.cli import main

    q = tmp_path / "q.jsonl"
    rows = [
        {
            "question_id": 1,
            "category": "math",
            "turns": ["What is 2 + 3?", "x"],
            "reference": ["The answer is 5.", "y"],
        },
        {
            "question_id": 2,
            "category": "math",
            "turns": ["What is 4 + 4?", "x"],
            "reference": ["The answer is 8.", "y"],
        },
    ]
    q.write_text("".join(json.dumps(r) + "\n" for r in rows))

    def answers(path, model, outs):
        path.write_text(
            "".join(
                json.dumps(
                    {
                        "question_id": i + 1,
                        "answer_id": "a",
                        "model_id": model,
                        "choices": [{"index": 0, "turns": [o, ""]}],
                    }
                )
                + "\n"
                for i, o in enumerate(outs)
            )
        )
        return path

    a = answers(tmp_path / "a.jsonl", "good", ["The answer is 5.", "The answer is 8."])
    b = answers(tmp_path / "b.jsonl", "bad", ["The answer is 6.", "The answer is 8."])
    out = tmp_path / "wr"
    assert (
        main(
            ["eval", "win-rate", "--answers-a", str(a), "--answers-b", str(b), "--questions", str(q), "--out", str(out)]
        )
        == 0
    )
    res = json.loads((out / "win_rate.json").read_text())
    assert (res["wins"], res["losses"], res["ties"], res["win_rate"]) == (1, 0, 1, 0.75)
    assert res["judge"] == "toy-verifier-judge" and res["model_a"] == "a"
    assert "| a | b | 2 | 1 | 0 | 1 | 0 | 75.0% |" in (out / "win_rate.md").read_text()
    assert len((out / "win_rate_judgments.jsonl").read_text().splitlines()) == 2
