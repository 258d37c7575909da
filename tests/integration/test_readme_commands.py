"""Every ``python train.py ...`` and ``zephyr ...`` command in README's ``bash`` blocks works exactly as written.

The commands run in README order from a fresh copy of the repository (tracked and untracked, non-ignored files)
with no path overrides: only a size override (steps, rows, model width) is appended, so Hydra's own defaults
(``runs/<task>/<time>``, ``runs/multirun/<task>/<time>``, ``paths.sft_model`` = ``runs/dsft/model``) are what
is tested. The DPO commands use the dSFT export that the README's own dSFT command makes earlier in the list.

A command that needs the hub, a GPU, SLURM, an API key or a plugin that is not installed is listed in
``SKIPPED`` with the reason. A README command in neither table fails the test: add it to one of them.
"""

from __future__ import annotations

import csv
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import TINY_OVERRIDES
from tests.integration.test_sweep_wandb import run_record

REPO = Path(__file__).resolve().parents[2]

# the dSFT export the DPO commands start from: small and fast, every other knob at its default
SFT_SIZE = ["trainer.max_steps=2", "data.eval_size=8", "data.batch_size=4", *TINY_OVERRIDES]
SFT_TOY_SIZE = [*SFT_SIZE, "data.toy.n=64"]
DPO_SIZE = ["trainer.max_steps=2", "data.eval_size=8", "data.batch_size=4", "trainer.val_check_interval=2"]
DPO_TOY_SIZE = [*DPO_SIZE, "data.toy.n=48"]

# README command -> what is appended (README order is the run order)
RUN: dict[str, list[str]] = {
    "python train.py": SFT_TOY_SIZE,
    "python train.py trainer.max_steps=500 paths.output_dir=runs/dsft": SFT_TOY_SIZE,
    "python train.py data.path=chats.jsonl": SFT_SIZE,  # chats.jsonl: the user's file, written by the test
    "python train.py ckpt_path=last paths.output_dir=runs/dsft": [*SFT_TOY_SIZE, "trainer.max_steps=3"],
    "python train.py +experiment=dpo_toy": DPO_TOY_SIZE,
    "python train.py +experiment=dpo_beta": DPO_TOY_SIZE,
    "python train.py -m +experiment=dpo_beta": DPO_TOY_SIZE,
    "python train.py -m +experiment=dpo_lr": DPO_TOY_SIZE,
    "python train.py -m +experiment=dpo_toy +sweep=dpo_beta_lr": DPO_TOY_SIZE,
    "python train.py -m +experiment=dpo_toy +sweep=optuna": [*DPO_TOY_SIZE, "hydra.sweeper.n_trials=2"],
    "zephyr data sft --out runs/data --n 200": ["--n", "24"],
    "zephyr data feedback --out runs/data --n 200": ["--n", "24"],
    "zephyr data binarize --out runs/data": [],
    "python train.py data.path=runs/data/train_sft.jsonl data.eval_path=runs/data/test_sft.jsonl": SFT_SIZE,
    "python train.py +experiment=dpo_toy data=local_prefs data.path=runs/data/train_prefs.jsonl "
    "data.eval_path=runs/data/test_prefs.jsonl": DPO_SIZE,
    "python train.py adapter=lora": SFT_TOY_SIZE,
    "python train.py +experiment=dpo_toy adapter=lora": DPO_TOY_SIZE,
}

# README command -> why it does not run here (composition of these is covered by tests/unit)
SKIPPED: dict[str, str] = {
    "python train.py data=ultrachat": "downloads HuggingFaceH4/ultrachat_200k from the hub",
    "python train.py model=mistral_7b data=ultrachat hardware=a100x8 strategy=deepspeed_stage_3": (
        "hub data and weights, 8 GPUs"
    ),
    "python train.py +experiment=zephyr_7b_dpo model.path=DIR": "a Mistral-7B dSFT checkpoint, 16 GPUs",
    "python train.py +experiment=zephyr_7b_sft hardware=gpu1 strategy=deepspeed_stage_3_offload "
    "data.batch_size=4": "hub weights and data, a GPU",
    "python train.py +experiment=zephyr_7b_sft hardware=a100x8 strategy=deepspeed_stage_3": "hub, 8 GPUs",
    "python train.py -m +experiment=zephyr_7b_sft hardware=a100x16 strategy=deepspeed_stage_3 "
    "+launcher=slurm hydra.launcher.partition=YOUR_PARTITION paths.output_dir=runs/dsft": "SLURM, 16 GPUs",
    "python train.py -m +experiment=zephyr_7b_dpo model.path=runs/dsft/model "
    "+launcher=slurm hydra.launcher.partition=YOUR_PARTITION": "SLURM, 16 GPUs",
    "python train.py -m +experiment=dpo_beta adapter=lora adapter.r=8,64": (
        "10 jobs (5 betas x 2 ranks); composed in tests/unit/models/test_adapters.py"
    ),
    "python train.py adapter=qlora model.path=DIR": "a pretrained DIR (QLoRA on CPU: tests/integration/test_lora.py)",
    "python train.py +experiment=zephyr_7b_sft_qlora paths.output_dir=runs/dsft_qlora": "hub weights and data, a GPU",
    "python train.py +experiment=zephyr_7b_dpo_qlora model.path=runs/dsft_qlora/model": "a QLoRA dSFT export, a GPU",
    "python train.py -m +experiment=loss_study seed=0,1,2": (
        "27 jobs on `zephyr demo`'s outputs; ci-size study: tests/integration/test_loss_study.py"
    ),
}
if importlib.util.find_spec("optuna") is None or importlib.util.find_spec("hydra_plugins.hydra_optuna_sweeper") is None:
    SKIPPED["python train.py -m +experiment=dpo_toy +sweep=optuna"] = "hydra-optuna-sweeper is not installed"


def readme_commands(text: str) -> list[str]:
    """The ``python train.py`` / ``zephyr`` commands of the ``bash`` blocks, in order, once each, spaces collapsed."""
    out = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        for line in re.sub(r"\\\n", " ", block).splitlines():
            cmd = " ".join(re.split(r"\s#", line, maxsplit=1)[0].split())
            if cmd.startswith(("python train.py", "zephyr ")) and cmd not in out:
                out.append(cmd)
    return out


def fresh_copy(dst: Path) -> Path:
    """The repository's files as a fresh clone (plus untracked, non-ignored files) has them, no runs/."""
    files = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split("\0")
    for f in filter(None, files):
        src = REPO / f
        if src.is_file():
            (dst / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst / f)
    return dst


def argv(cmd: str) -> list[str]:
    head, *rest = cmd.split()
    if head == "python":
        return [sys.executable, *rest]
    return [sys.executable, "-c", "from zephyr.cli import main; main()", *rest]


def test_readme_command_tables_cover_every_command():
    commands = readme_commands((REPO / "README.md").read_text())
    assert "python train.py -m +experiment=dpo_beta" in commands
    unknown = [c for c in commands if c not in RUN and c not in SKIPPED]
    assert not unknown, f"README commands in neither RUN nor SKIPPED of {__file__}: {unknown}"
    stale = [c for c in [*RUN, *SKIPPED] if c not in commands]
    assert not stale, f"no longer in README (drop them from the tables): {stale}"


@pytest.mark.slow
def test_readme_commands_run_as_written(tmp_path):
    from zephyr.toy.teacher import sft_dialogues

    repo = fresh_copy(tmp_path / "zephyr")
    assert not (repo / "runs").exists()
    (repo / "chats.jsonl").write_text("".join(json.dumps(r) + "\n" for r in sft_dialogues(40, 0)))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ZEPHYR_", "WANDB_NAME", "WANDB_RUN_GROUP"))}
    env.update(PYTHONPATH=str(repo), PYTHONWARNINGS="ignore", HF_HUB_OFFLINE="1", WANDB_MODE="offline")
    ran, timings = [], {}
    for cmd in readme_commands((REPO / "README.md").read_text()):
        if cmd in SKIPPED:
            continue
        started = time.perf_counter()
        proc = subprocess.run([*argv(cmd), *RUN[cmd]], cwd=repo, env=env, capture_output=True, text=True, timeout=300)
        timings[cmd] = round(time.perf_counter() - started, 1)
        assert proc.returncode == 0, f"`{cmd}` failed ({proc.returncode}):\n{proc.stderr[-3000:]}"
        assert "Traceback" not in proc.stderr, f"`{cmd}`:\n{proc.stderr[-3000:]}"
        ran.append(cmd)
    assert len(ran) >= 13, ran

    runs = repo / "runs"
    assert (runs / "dsft" / "model" / "config.json").is_file()
    assert json.loads((runs / "dsft" / "metrics.json").read_text())["global_step"] == 3  # resumed 2 -> 3
    assert len(list((runs / "dsft").glob("20*-*"))) >= 3  # `python train.py` runs in runs/dsft/<time>/
    assert {p.name for p in (runs / "multirun").iterdir()} >= {"dpo_beta", "dpo_lr", "dpo_toy"}
    sweeps = {}
    for task, n in [("dpo_beta", 5), ("dpo_lr", 4), ("dpo_toy", 9)]:
        sizes = sweeps[task] = {}
        for summary in (runs / "multirun" / task).glob("*/summary.csv"):
            with summary.open() as f:
                rows = list(csv.DictReader(f))
            assert all(r["status"] == "ok" for r in rows), (summary, rows)
            sizes[len(rows)] = summary
        assert n in sizes, f"no {n}-job summary.csv under runs/multirun/{task}: {sizes}"
    beta_sweep = sweeps["dpo_beta"][5].parent
    names = [run_record(next((beta_sweep / str(j) / "wandb").glob("offline-run-*"))).display_name for j in range(5)]
    assert names == ["beta=0.01", "beta=0.05", "beta=0.1", "beta=0.3", "beta=0.5"]
    for f in ("train_sft.jsonl", "test_sft.jsonl", "train_prefs.jsonl", "test_prefs.jsonl"):
        assert (runs / "data" / f).stat().st_size > 0, f
    assert not (
        REPO / "runs" / "multirun" / "dpo_lr" / sweeps["dpo_lr"][4].parent.name
    ).exists()  # wrote into the copy only
    print(json.dumps(timings, indent=1))
