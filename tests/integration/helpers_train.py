"""Run ``train.py`` in a subprocess the way a user does."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import TINY_OVERRIDES

REPO = Path(__file__).resolve().parents[2]
TINY = [
    *TINY_OVERRIDES,
    "trainer.enable_progress_bar=false",
    "logger=none",
]


def train_cmd(*overrides: str) -> list[str]:
    return [sys.executable, str(REPO / "train.py"), *TINY, *overrides]


def run_train(*overrides: str, timeout: int = 300, check: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "HYDRA_FULL_ERROR": "0", "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run(train_cmd(*overrides), cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"train.py failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return proc


def kill_when(*overrides: str, ready, timeout: float = 240, poll: float = 0.02) -> None:
    """Start ``train.py`` with ``overrides`` and kill -9 its process group once ``ready()`` is true.

    Also stops waiting when the run exits by itself or after ``timeout`` seconds (the caller checks what it got).
    """
    import signal
    import time

    proc = subprocess.Popen(
        train_cmd(*overrides),
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )
    deadline = time.time() + timeout
    while time.time() < deadline and not ready() and proc.poll() is None:
        time.sleep(poll)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
