"""User mistakes reach the user as one line, ``train.py: error: ...``, exit 2, no traceback, before any model is built.

Subprocess runs of ``train.py`` where the exit code and stderr are the point; each stops before model load or
trains one step of a tiny model.
"""

from __future__ import annotations

import json
from pathlib import Path

from tests.integration.helpers_train import run_train


def good_row(i: int) -> dict:
    return {
        "messages": [
            {"role": "user", "content": f"Add {i} and 1."},
            {"role": "assistant", "content": f"The answer is {i + 1}."},
        ]
    }


def write_lines(path: Path, rows: list) -> Path:
    """One JSON row per line; ``None`` writes a blank line (not a row, but it counts as a file line)."""
    path.write_text("".join("\n" if r is None else json.dumps(r) + "\n" for r in rows))
    return path


def assert_one_line_error(proc, *fragments: str) -> str:
    """Exit 2, no traceback, and stderr ends with one ``train.py: error:`` line holding every fragment."""
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr and "HYDRA_FULL_ERROR" not in proc.stderr, proc.stderr[-2000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("train.py: error: "), proc.stderr[-2000:]
    for fragment in fragments:
        assert fragment in last, last
    return last


def test_small_local_file_trains_with_the_default_eval_size(tmp_path):
    data = write_lines(tmp_path / "chats.jsonl", [good_row(i) for i in range(9)])
    run = tmp_path / "run"
    proc = run_train(f"data.path={data}", "trainer.max_steps=1", "export=false", f"paths.output_dir={run}")
    out = proc.stdout + proc.stderr
    assert "data.eval_size=100 is more than half of the 9 valid rows" in out and "holding out 1 (10 %)" in out
    assert f"{data}: 8/8 rows kept" in out and "(held-out eval rows): 1/1 rows kept" in out
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["global_step"] == 1 and "eval/loss" in metrics


def test_bad_row_of_a_small_file_is_named_before_the_model(tmp_path):
    rows = [good_row(0), good_row(1), None, good_row(2)]
    rows += [{"messages": [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]}]
    rows += [good_row(i) for i in range(4)]
    data = write_lines(tmp_path / "chats.jsonl", rows)
    proc = run_train(f"data.path={data}", f"paths.output_dir={tmp_path}/run", check=False)
    assert_one_line_error(proc, f"{data}: row 5: turn 1 is 'user' but 'assistant' was expected")
    assert not (tmp_path / "run" / "model").exists()
