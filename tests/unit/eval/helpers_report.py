"""Fixture writers for the sweep (Hydra multirun) and demo report formats, shared by report and notebook tests."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

BETAS = [0.01, 0.1, 0.5]
LRS = [5e-7, 5e-6]


def make_multirun(root: Path) -> Path:
    """A 2-key sweep (beta x lr, 6 jobs) in the DPO engineer's format; returns the multirun dir."""
    d = root / "2026-01-01" / "12-00-00"
    d.mkdir(parents=True)
    rows = []
    job = 0
    for lr in LRS:
        for beta in BETAS:
            name = str(job)
            acc = 0.5 + 0.1 * math.log10(beta / 0.01) + (0.05 if lr == 5e-6 else 0.0)
            row = {
                "job": name,
                "overrides": f"objective.beta={beta},objective.lr={lr}",
                "objective.beta": beta,
                "objective.lr": lr,
                "train/loss": 0.69 - 0.1 * job,
                "eval/loss": 0.7 - 0.05 * job,
                "eval/rewards/accuracies": acc,
                "eval/rewards/margins": 0.2 * beta * 10,
                "eval/rewards/chosen": 0.1,
                "eval/kl": 1.0 / beta / 100,
                "runtime_s": 12.5 + job,
            }
            if job != 2:  # heldout/accuracy may be missing
                row["heldout/accuracy"] = 0.4 + 0.05 * job
            rows.append(row)
            jd = d / name
            (jd / ".hydra").mkdir(parents=True)
            (jd / ".hydra" / "overrides.yaml").write_text(f"- objective.beta={beta}\n- objective.lr={lr}\n")
            with open(jd / "metrics.csv", "w", newline="") as f:
                w = csv.writer(f)
                w.writerow(["step", "train/loss", "eval/loss", "eval/rewards/accuracies"])
                for step in range(0, 50, 5):
                    ev = step % 25 == 0
                    w.writerow(
                        [step, 0.69 - 0.002 * step * (job + 1), 0.7 - step * 0.001 if ev else "", 0.6 if ev else ""]
                    )
            job += 1
    (d / "summary.json").write_text(json.dumps(rows, indent=2))
    cols = sorted({k for r in rows for k in r})
    with open(d / "summary.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=cols)
        w.writeheader()
        w.writerows(rows)
    return d


def make_demo(root: Path) -> Path:
    """A demo dir with report.json in the demo's format; returns it."""
    d = root / "demo"
    d.mkdir(parents=True)
    report = {
        "stages": {"teacher": 3.2, "dsft": 41.0, "feedback": 12.5, "ddpo": 55.1, "eval": 4.0},
        "accuracy": {"base": 0.05, "dsft": 0.42, "dsft_compute_matched": 0.44, "ddpo": 0.58, "dpo_from_base": 0.11},
        "accuracy_std": {"base": 0.01, "dsft": 0.03, "dsft_compute_matched": 0.02, "ddpo": 0.04, "dpo_from_base": 0.02},
        "heldout_n": 200,
        "seed": [0, 1, 2],
        "seeds": [0, 1, 2],
    }
    (d / "report.json").write_text(json.dumps(report))
    return d
