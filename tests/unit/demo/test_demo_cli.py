"""``zephyr demo --set``: unknown keys are refused in one line; ``--help`` tells the ci size's real duration."""

from __future__ import annotations

import pytest

from zephyr.cli import main
from zephyr.demo import load_settings


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("bogus=1", "bogus"),
        ("feedback.promts=7", "feedback.promts"),
        ("eval.x.y=1", "eval.x"),
    ],  # names the first key that does not exist
)
def test_demo_set_refuses_unknown_keys(tmp_path, capsys, override, key):
    with pytest.raises(ValueError, match=rf"unknown demo setting '{key}'"):
        load_settings("ci", [override])
    assert main(["demo", "--size", "ci", "--out", str(tmp_path / "d"), "--set", override]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"zephyr demo: error: --set {override}: unknown demo setting")
    assert not (tmp_path / "d").exists()


def test_demo_set_known_keys_and_teacher_kwargs_still_merge():
    s = load_settings("ci", ["threads=1", "feedback.prompts=9", "world.teacher.unit_error=0.5", "ddpo=[a=1]"])
    assert (s.threads, s.feedback.prompts, s.world.teacher.unit_error, list(s.ddpo)) == (1, 9, 0.5, ["a=1"])
    s.new_key = 1  # the returned settings are not locked (run_demo adds size_name)


def test_demo_help_gives_the_ci_duration(capsys):
    with pytest.raises(SystemExit):
        main(["demo", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "~30 s" in out and "3 min" not in out
