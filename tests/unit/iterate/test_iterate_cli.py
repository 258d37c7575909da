"""``zephyr iterate`` and ``zephyr demo --rounds``: flags reach the loop, bad input is one line (exit 2)."""

from __future__ import annotations

import pytest

import zephyr.iterate
from zephyr.cli import main

pytestmark = pytest.mark.unit


def test_iterate_bad_value_one_line(tmp_path, capsys):
    assert main(["iterate", "--size", "ci", "--out", str(tmp_path / "i"), "--set", "iterate.rounds=0"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("zephyr iterate: error: iterate.rounds must be an integer >= 1")
    assert not (tmp_path / "i").exists()


def test_iterate_vllm_refused_before_any_stage(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    out = tmp_path / "i"
    assert main(["iterate", "--size", "ci", "--out", str(out), "--set", "iterate.generation.backend=vllm"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "needs a CUDA GPU and none is visible" in err
    assert not (out / "dsft").exists()


def test_flags_reach_the_loop(tmp_path, monkeypatch):
    seen = {}
    monkeypatch.setattr(zephyr.iterate, "run_iterate", lambda out, **kw: seen.update(out=out, **kw))
    argv = ["iterate", "--out", str(tmp_path), "--rounds", "2", "--prompts", "same", "--reference", "sft"]
    assert main([*argv, "--size", "ci", "--seed", "4", "--set", "feedback.prompts=5"]) == 0
    assert seen == {
        "out": str(tmp_path), "rounds": 2, "size": "ci", "seed": 4, "prompts": "same", "reference": "sft",
        "config": None, "overrides": ["feedback.prompts=5"],
    }  # fmt: skip


def test_demo_rounds(tmp_path, monkeypatch, capsys):
    seen = {}
    monkeypatch.setattr(zephyr.iterate, "run_iterate", lambda out, **kw: seen.update(out=out, **kw))
    assert main(["demo", "--out", str(tmp_path), "--rounds", "3", "--size", "ci"]) == 0
    assert seen == {"out": str(tmp_path), "rounds": 3, "size": "ci", "seed": None, "overrides": []}
    assert main(["demo", "--out", str(tmp_path), "--rounds", "2", "--seeds", "2"]) == 2
    assert "--rounds > 1 runs one seed" in capsys.readouterr().err
    assert main(["demo", "--out", str(tmp_path), "--rounds", "0"]) == 2
    assert "--rounds must be >= 1" in capsys.readouterr().err
