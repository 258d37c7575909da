"""The GPU check kit's own code path on the CPU: ``train.py`` with the step meter, 2 steps, results JSON."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def test_cpu_smoke_runs_the_kit_path_and_writes_figures(tmp_path):
    out = tmp_path / "gpu.json"
    cmd = [sys.executable, "-m", "bench.gpu_check", "--cpu-smoke", "--cases", "dpo_auto", "--out", str(out)]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:] + proc.stdout[-2000:]
    assert proc.stdout.splitlines()[0] == "attention: sdpa (CPU smoke run)"
    res = json.loads(out.read_text())
    assert res["mode"] == "cpu-smoke" and res["gpu"] is None and res["attn_implementation"] == "sdpa"
    assert list(res["cases"]) == ["dpo_auto"]
    r = res["cases"]["dpo_auto"]
    assert "error" not in r, r
    assert r["timed_steps"] == 1 and r["tokens_per_s"] > 0 and r["tokens_per_step"] > 0
    assert r["mfu"] is None and r["peak_gpu_mem_gb"] is None and r["peak_rss_mb"] > 100
    assert r["model_flops_per_s"] > 0 and res["model"]["num_hidden_layers"] == 1


def test_cpu_smoke_qlora_case_trains_a_4bit_base_the_kit_saved(tmp_path):
    pytest.importorskip("bitsandbytes")
    out = tmp_path / "gpu.json"
    cmd = [sys.executable, "-m", "bench.gpu_check", "--cpu-smoke", "--cases", "sft_qlora", "--out", str(out)]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:] + proc.stdout[-2000:]
    r = json.loads(out.read_text())["cases"]["sft_qlora"]
    assert "error" not in r, r
    assert r["timed_steps"] == 1 and r["tokens_per_s"] > 0 and r["peak_rss_mb"] > 100
