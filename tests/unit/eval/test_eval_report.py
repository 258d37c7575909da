"""Sweep and demo reports: loading the multirun format, swept keys, plots and markdown, the report CLI."""

from __future__ import annotations

import json

import pytest

from tests.unit.eval.helpers_report import make_demo, make_multirun
from zephyr.cli import main
from zephyr.eval import report


def test_parse_overrides_keeps_bracketed_commas():
    assert report.parse_overrides("objective.beta=0.1,+data.mix=[a,b],objective.lr=5e-7") == {
        "objective.beta": "0.1",
        "data.mix": "[a,b]",
        "objective.lr": "5e-7",
    }


def test_load_sweep_keys_and_metrics(tmp_path):
    d = make_multirun(tmp_path / "multirun")
    df = report.load_sweep(d)
    assert len(df) == 6
    assert report.swept_keys(df) == ["objective.beta", "objective.lr"]
    assert report.metric_columns(df)[:4] == [
        "eval/rewards/accuracies",
        "eval/rewards/margins",
        "eval/kl",
        "heldout/accuracy",
    ]
    (d / "summary.json").unlink()  # the csv holds the same rows
    assert len(report.load_sweep(d)) == 6
    assert report.latest_multirun(tmp_path / "multirun") == d


def test_plot_metric_vs_key_one_line_per_other_key(tmp_path):
    df = report.load_sweep(make_multirun(tmp_path))
    fig = report.plot_sweep(df, "objective.beta", ["eval/rewards/accuracies", "heldout/accuracy"])
    ax = fig.axes[0]
    assert ax.get_xscale() == "log"
    assert len(ax.lines) == 2  # one per learning rate
    xs = list(ax.lines[0].get_xdata())
    assert xs == [0.01, 0.1, 0.5]
    assert list(ax.lines[0].get_ydata()) == pytest.approx([0.5, 0.6, 0.5 + 0.1 * 1.69897], abs=1e-4)
    assert len(fig.axes[1].lines[0].get_xdata()) == 2  # job 2 has no heldout/accuracy


def test_sweep_report_cli_writes_pngs_and_markdown(tmp_path, capsys):
    d = make_multirun(tmp_path)
    assert main(["report", str(d)]) == 0
    out = d / "report"
    for name in ("objective.beta_sweep.png", "objective.lr_sweep.png", "loss_curves.png", "report.md"):
        assert (out / name).is_file(), name
    assert (out / "loss_curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = (out / "report.md").read_text()
    assert "6 jobs; swept: objective.beta, objective.lr" in md
    assert "highest `eval/rewards/accuracies`: 0.7199 (job 5: objective.beta=0.5, objective.lr=5e-06)" in md
    assert "lowest `train/loss`: 0.19 (job 5" in md
    assert str(out / "report.md") in capsys.readouterr().out


def test_demo_report_cli(tmp_path):
    d = make_demo(tmp_path)
    out = tmp_path / "out"
    assert main(["report", str(d), "--out", str(out)]) == 0
    assert {p.name for p in out.iterdir()} == {"accuracy.png", "stages.png", "report.md"}
    md = (out / "report.md").read_text()
    assert "| ddpo | 0.580 ± 0.040 |" in md
    assert "| **total** | 115.8 |" in md
    fig = report.plot_demo_accuracy(json.loads((d / "report.json").read_text()))
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == list(report.DEMO_ORDER)


def test_report_cli_errors_name_the_dir(tmp_path, capsys):
    assert main(["report", str(tmp_path)]) == 2
    assert f"{tmp_path}: neither a demo dir" in capsys.readouterr().err
    (tmp_path / "report.json").write_text(json.dumps({"stages": {}, "accuracy": [1]}))
    assert main(["report", str(tmp_path)]) == 2
    assert "'accuracy' must be a mapping" in capsys.readouterr().err


def test_load_wandb_offline_reads_summary_or_the_jobs_metrics_json(tmp_path):
    import json

    from zephyr.eval.report import load_wandb_offline

    assert load_wandb_offline(tmp_path).empty
    new = tmp_path / "0" / "wandb" / "offline-run-1-a"
    (new / "files").mkdir(parents=True)
    (tmp_path / "0" / "metrics.json").write_text(json.dumps({"eval/kl": 0.25, "epoch": 2}))
    old = tmp_path / "1" / "wandb" / "offline-run-2-b"
    (old / "files").mkdir(parents=True)
    (old / "files" / "wandb-summary.json").write_text(json.dumps({"eval/kl": 0.5, "_runtime": 3}))
    bare = tmp_path / "2" / "wandb" / "offline-run-3-c"
    bare.mkdir(parents=True)
    df = load_wandb_offline(tmp_path)
    assert list(df["job"]) == ["0", "1", "2"]
    assert list(df["source"])[:2] == ["metrics.json", "wandb-summary.json"] and df["source"].isna().iloc[2]
    assert list(df["eval/kl"])[:2] == [0.25, 0.5] and "epoch" not in df.columns
