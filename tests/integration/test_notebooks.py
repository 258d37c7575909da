"""The analysis notebooks run top to bottom on fixture outputs (as nbmake runs them in CI) and are stored clean."""

from __future__ import annotations

import json
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from tests.unit.eval.helpers_report import make_demo, make_multirun

NOTEBOOKS = Path(__file__).resolve().parents[2] / "notebooks"


def run_notebook(name: str, cwd: Path) -> nbformat.NotebookNode:
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    NotebookClient(nb, timeout=120, kernel_name="python3", resources={"metadata": {"path": str(cwd)}}).execute()
    return nb


def outputs_text(nb) -> str:
    parts = []
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            parts.append(out.get("text", ""))
            parts.extend(str(v) for k, v in out.get("data", {}).items() if k.startswith("text/"))
    return "\n".join(parts)


@pytest.mark.parametrize("name", ["sweep_analysis.ipynb", "pipeline_report.ipynb"])
def test_committed_without_outputs(name):
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code and all(not c.outputs and c.execution_count is None for c in code)
    assert all("def " not in c.source for c in code)  # plotting logic lives in zephyr/eval/report.py


def test_sweep_analysis_notebook(tmp_path, monkeypatch):
    # two sweeps under runs/multirun: without the env var the notebook picks the newest
    old = make_multirun(tmp_path / "old" / "runs" / "multirun")
    (old / "summary.json").touch()
    newer = make_multirun(tmp_path / "runs" / "multirun")
    monkeypatch.setenv("ZEPHYR_MULTIRUN_DIR", str(newer))
    nb = run_notebook("sweep_analysis.ipynb", tmp_path)
    out = newer / "notebook"
    assert {p.name for p in out.glob("*.png")} == {
        "objective.beta_sweep.png",
        "objective.lr_sweep.png",
        "loss_curves.png",
    }
    text = outputs_text(nb)
    assert "swept keys: ['objective.beta', 'objective.lr']" in text
    assert "highest `eval/rewards/accuracies`: 0.7199" in text
    images = [o for c in nb.cells for o in c.get("outputs", []) if "image/png" in o.get("data", {})]
    assert len(images) == 3


def test_sweep_notebook_default_is_newest_under_runs(tmp_path, monkeypatch):
    monkeypatch.delenv("ZEPHYR_MULTIRUN_DIR", raising=False)
    d = make_multirun(tmp_path / "runs" / "multirun")
    (tmp_path / "notebooks").mkdir()
    run_notebook("sweep_analysis.ipynb", tmp_path / "notebooks")
    assert (d / "notebook" / "loss_curves.png").is_file()


def test_pipeline_report_notebook(tmp_path, monkeypatch):
    demo = make_demo(tmp_path)
    monkeypatch.setenv("ZEPHYR_DEMO_DIR", str(demo))
    nb = run_notebook("pipeline_report.ipynb", tmp_path)
    assert (demo / "notebook" / "accuracy.png").is_file()
    assert (demo / "notebook" / "stages.png").is_file()
    assert "| ddpo | 0.580 ± 0.040 |" in outputs_text(nb)


def _add_wandb_runs(multirun: Path) -> None:
    """Offline W&B runs as this wandb version leaves them (no wandb-summary.json), one as older versions did."""
    for job in ("0", "1"):
        jd = multirun / job
        run = jd / "wandb" / f"offline-run-2026010{job}_120000-abc{job}"
        (run / "files").mkdir(parents=True)
        (run / f"run-abc{job}.wandb").write_bytes(b"")
        (jd / "metrics.json").write_text(json.dumps({"eval/rewards/accuracies": 0.6 + int(job) / 10, "epoch": 1}))
    old = multirun / "2" / "wandb" / "offline-run-20260102_120000-old2" / "files"
    old.mkdir(parents=True)
    (old / "wandb-summary.json").write_text(json.dumps({"eval/rewards/accuracies": 0.9, "_step": 3}))


def test_sweep_notebook_relative_dir_and_wandb_runs(tmp_path, monkeypatch):
    # `ZEPHYR_MULTIRUN_DIR=runs/multirun/... pytest --nbmake notebooks/` from tmp_path: the kernel runs in
    # notebooks/, the relative path is the user's, from $PWD
    d = make_multirun(tmp_path / "runs" / "multirun")
    _add_wandb_runs(d)
    (tmp_path / "notebooks").mkdir()
    monkeypatch.setenv("PWD", str(tmp_path))
    monkeypatch.delenv("ZEPHYR_ORIG_CWD", raising=False)
    monkeypatch.setenv("ZEPHYR_MULTIRUN_DIR", str(d.relative_to(tmp_path)))
    nb = run_notebook("sweep_analysis.ipynb", tmp_path / "notebooks")
    assert (d / "notebook" / "loss_curves.png").is_file()
    assert not (tmp_path / "notebooks" / "runs").exists()
    wandb_cell = next(c for c in nb.cells if c.cell_type == "code" and "load_wandb_offline" in c.source)
    table = wandb_cell.outputs[0]["data"]["text/plain"]
    assert "metrics.json" in table and "wandb-summary.json" in table
    for value in ("0.6", "0.7", "0.9"):
        assert value in table
    # a relative dir that exists nowhere names where it looked
    monkeypatch.setenv("ZEPHYR_MULTIRUN_DIR", "runs/nope")
    from zephyr.eval.report import find_multirun

    with pytest.raises(FileNotFoundError, match=rf"runs/nope: no such directory \(relative to {tmp_path}"):
        find_multirun()
