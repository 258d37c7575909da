"""Run ``train.py`` (or a module under torchrun) in a subprocess with tiny dimensions, for the scale tests."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import TINY_OVERRIDES

REPO = Path(__file__).resolve().parents[2]
# tiny model, small toy set, 4 optimizer steps of a global batch of 8, no checkpoints or loggers
TINY = [
    *TINY_OVERRIDES,
    "logger=none",
    "trainer.enable_progress_bar=false",
    "callbacks.model_checkpoint=null",
    "data.toy.n=300",
    "data.eval_size=16",
    "trainer.max_steps=4",
    "trainer.log_every_n_steps=1",
    "trainer.global_batch_size=8",
    "data.batch_size=4",
]


def run(cmd: list[str], timeout: int = 600, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "HYDRA_FULL_ERROR": "0", "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


def train(
    out: Path, *overrides: str, check: bool = True, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    """``train.py`` with :data:`TINY`, writing to ``out``; ``env`` adds environment variables."""
    proc = run([sys.executable, str(REPO / "train.py"), *TINY, f"paths.output_dir={out}", *overrides], env=env)
    if check and proc.returncode != 0:
        raise AssertionError(f"train.py failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    return proc


def eval_curve(out: Path) -> dict[int, float]:
    """``{step: eval/loss}`` from the run's ``metrics.csv`` (rows where an evaluation ran)."""
    with (out / "metrics.csv").open() as f:
        rows = list(csv.DictReader(f))
    curve: dict[int, float] = {}
    for r in rows:
        if r.get("eval/loss"):
            curve.setdefault(int(float(r["step"])), float(r["eval/loss"]))
    return curve
