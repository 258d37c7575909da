"""User mistakes reach the user as one line, ``train.py: error: ...``, exit 2, no traceback, before any model is built.

Subprocess runs of ``train.py`` where the exit code and stderr are the point; each stops before model load or
trains one step of a tiny model.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

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


def plugin_installed(module: str) -> bool:
    import importlib.util

    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        return False


@pytest.mark.parametrize(
    ("overrides", "fragments"),
    [
        (["trainer.max_steps=abc"], ["trainer.max_steps='abc' must be an integer"]),
        (["trainer.enable_progress_bar=maybe"], ["trainer.enable_progress_bar='maybe' must be true or false"]),
        (["data.loss_on=assistant_only"], ["data.loss_on='assistant_only' must be one of assistant, all"]),
        (
            ["+experiment=dpo_toy", "model.path=runs/zephyr-test-not-trained/model"],
            [
                "model.path=runs/zephyr-test-not-trained/model has no checkpoint",
                "python train.py trainer.max_steps=500 paths.output_dir=",
            ],
        ),
    ],
    ids=["max_steps", "bool", "loss_on", "model_path"],
)
def test_config_mistakes_are_one_line(tmp_path, overrides, fragments):
    proc = run_train(*overrides, f"paths.output_dir={tmp_path}/run", check=False, timeout=120)
    assert_one_line_error(proc, *fragments)
    assert not (tmp_path / "run" / "model").exists()


def test_unreachable_hub_dataset_is_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    proc = run_train(
        "data=ultrachat", "data.name=zephyr-test/never-downloaded", f"paths.output_dir={tmp_path}/run", check=False
    )
    assert_one_line_error(proc, "dataset 'zephyr-test/never-downloaded' (split 'train_sft') could not be loaded")
    assert "data.path=FILE" in proc.stderr


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="Liger runs where there is CUDA")
def test_liger_kernel_without_cuda_is_one_line(tmp_path):
    proc = run_train("trainer.liger_kernel=true", f"paths.output_dir={tmp_path}/run", check=False, timeout=120)
    assert_one_line_error(proc, "trainer.liger_kernel=true needs")


@pytest.mark.skipif(plugin_installed("hydra_plugins.hydra_optuna_sweeper"), reason="the Optuna plugin is installed")
def test_optuna_sweep_without_the_plugin_names_the_install(tmp_path):
    proc = run_train("-m", "+experiment=dpo_toy", "+sweep=optuna", check=False, timeout=60)
    last = assert_one_line_error(proc, "+sweep=optuna needs the Optuna sweeper", "pip install -e '.[optuna]'")
    assert proc.stderr.strip() == last  # nothing else: no config search path


def test_model_path_spelled_without_dot_is_local(tmp_path, monkeypatch):
    from zephyr.run import looks_local

    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()
    assert looks_local("runs/dsft") and looks_local("runs/dsft/model") and looks_local("./m") and looks_local("~/m")
    assert not looks_local("mistralai/Mistral-7B-v0.1") and not looks_local("HuggingFaceH4/zephyr-7b-beta")


def plant_previous_run(run: Path) -> None:
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "last.ckpt").write_bytes(b"the 500-step run")
    (run / "model").mkdir()
    (run / "model" / "config.json").write_text('{"previous": true}')


def test_fresh_run_into_a_finished_run_is_refused(tmp_path):
    run = tmp_path / "dsft"
    plant_previous_run(run)
    proc = run_train("trainer.max_steps=1", f"paths.output_dir={run}", check=False, timeout=120)
    assert_one_line_error(
        proc, f"paths.output_dir={run} already holds a run (checkpoints/last.ckpt, model/)", "ckpt_path=last",
        "paths.output_dir=DIR", "overwrite=true",
    )  # fmt: skip
    assert (run / "checkpoints" / "last.ckpt").read_bytes() == b"the 500-step run"
    assert json.loads((run / "model" / "config.json").read_text()) == {"previous": True}


def test_overwrite_true_replaces_the_previous_run(tmp_path):
    run = tmp_path / "dsft"
    plant_previous_run(run)
    proc = run_train("trainer.max_steps=1", "overwrite=true", f"paths.output_dir={run}", timeout=180)
    assert "overwrite=true: deleting the previous run's checkpoints/last.ckpt, model/" in proc.stdout + proc.stderr
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["last.ckpt"]  # no last-v1.ckpt beside it
    assert (run / "checkpoints" / "last.ckpt").read_bytes() != b"the 500-step run"
    assert "previous" not in json.loads((run / "model" / "config.json").read_text())
    assert json.loads((run / "metrics.json").read_text())["global_step"] == 1
