"""The benchmark harness end to end in its tiny mode, and its bookkeeping with hand-worked numbers.

The smoke run uses a 1-layer, hidden-32 Mistral, 1 warm-up + 1 timed step and zephyr only (TRL's import alone
takes longer than this test may), then checks the ``latest.json`` schema that ``make bench`` promises.
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from bench.common import StepClock, median_result
from bench.run import table

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[3]
STEP_KEYS = (
    "zephyr_tokens_per_s",
    "trl_tokens_per_s",
    "zephyr_peak_rss_mb",
    "trl_peak_rss_mb",
    "batch_size",
    "max_length",
    "precision",
)


def test_step_clock_drops_warmup_and_divides_tokens_by_time():
    clock = StepClock(times=[9.0, 2.0, 3.0], tokens=[100, 400, 600])
    s = clock.summary(warmup=1)
    assert s["tokens_per_s"] == pytest.approx(1000 / 5.0)  # (400 + 600) tokens / (2 + 3) s
    assert s["s_per_step"] == pytest.approx(2.5)
    assert s["steps"] == 2
    with pytest.raises(RuntimeError, match="none left after 3 warm-up steps"):
        clock.summary(warmup=3)


def test_median_result_takes_each_value_median():
    runs = [
        {"tokens_per_s": 10.0, "s_per_step": 3.0, "tokens_per_step": 30.0, "peak_rss_mb": 900.0},
        {"tokens_per_s": 30.0, "s_per_step": 1.0, "tokens_per_step": 30.0, "peak_rss_mb": 700.0},
        {"tokens_per_s": 20.0, "s_per_step": 2.0, "tokens_per_step": 40.0, "peak_rss_mb": 800.0},
    ]
    m = median_result(runs)
    assert (m["tokens_per_s"], m["s_per_step"], m["tokens_per_step"], m["peak_rss_mb"]) == (20.0, 2.0, 30.0, 800.0)
    assert m["repeats"] == 3


def test_table_puts_the_ratio_last():
    row = {
        "zephyr_tokens_per_s": 1000.0,
        "trl_tokens_per_s": 400.0,
        "ratio_tokens_per_s": 2.5,
        "zephyr_s_per_step": 2.0,
        "trl_s_per_step": 5.0,
        "zephyr_peak_rss_mb": 1200.0,
        "trl_peak_rss_mb": 3000.0,
        "ratio_peak_rss": 0.4,
    }
    text = table({"dpo": row, "sweep": {"zephyr_s": 30.0, "trl_s": 120.0, "points": 5, "ratio_s": 0.25}})
    lines = text.splitlines()
    assert lines[2] == "| DPO tokens/s | 1000 | 400 | 2.50× |"
    assert lines[3] == "| DPO s/step | 2.00 | 5.00 | 0.40× |"
    assert lines[4] == "| DPO peak RSS (MiB) | 1200 | 3000 | 0.40× |"
    assert lines[-1] == "| 5-point beta sweep wall time (s) | 30.0 | 120.0 | 0.25× |"


def test_tiny_bench_run_writes_the_promised_schema(tmp_path):
    cmd = [
        sys.executable,
        "-m",
        "bench.run",
        "--out",
        str(tmp_path),
        "--tiny",
        "--skip-trl",
        "--repeats",
        "1",
        "--warmup",
        "1",
        "--steps",
        "1",
        "--sweep-steps",
        "1",
        "--points",
        "1",
        "--batch-size",
        "2",
        "--max-length",
        "256",
    ]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    data = json.loads((tmp_path / "latest.json").read_text())
    for kind in ("sft", "dpo"):
        row = data[kind]
        assert set(STEP_KEYS) <= set(row), f"{kind}: missing {set(STEP_KEYS) - set(row)}"
        assert row["zephyr_tokens_per_s"] > 0 and row["zephyr_peak_rss_mb"] > 0
        assert row["trl_tokens_per_s"] is None and row["trl_peak_rss_mb"] is None  # --skip-trl
        assert (row["batch_size"], row["max_length"], row["precision"]) == (2, 256, "fp32")
        assert row["zephyr_tokens_per_step"] > 0
    assert data["dpo"]["zephyr_cached_ref_tokens_per_s"] >= data["dpo"]["zephyr_tokens_per_s"]
    # the reference copy's build is timed apart from the fill's forwards (set-up, as TRL's copy is)
    assert data["dpo"]["zephyr_ref_build_s"] > 0 and data["dpo"]["zephyr_ref_fill_s"] > 0
    sweep = data["sweep"]
    assert sweep["points"] == 1 and sweep["zephyr_s"] > 0 and sweep["trl_s"] is None
    assert data["settings"]["model_config"]["hidden_size"] == 32
    # the table is the last thing printed
    assert proc.stdout.rstrip().splitlines()[-1].startswith("| 1-point beta sweep wall time (s) | ")


def test_a_utilisation_above_one_flags_the_peak_measurement():
    from bench.run import peak_suspect

    results = {
        "machine": {"matmul_peak_gflops": 195.4},
        "sft": {"zephyr_utilisation": 1.05, "trl_utilisation": 0.22},
        "dpo": {"zephyr_utilisation": 0.48, "trl_utilisation": None},
        "sweep": {"zephyr_s": 17.3},
    }
    msg = peak_suspect(results, ["sft", "dpo", "sweep"])
    assert msg.startswith("utilisation above 1 (sft zephyr 1.05): the matmul peak measured 195 GFLOP/s")
    results["sft"]["zephyr_utilisation"] = 0.98
    assert peak_suspect(results, ["sft", "dpo", "sweep"]) is None
