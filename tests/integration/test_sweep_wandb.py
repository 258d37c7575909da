"""A 2-point ``train.py -m`` sweep with the default (offline) W&B logger: each job's run record is named after
its own swept value and grouped by the experiment; the sweep lands in the default ``runs/multirun/...``."""

from __future__ import annotations

import os
import struct
import subprocess
from pathlib import Path

import pytest

from tests.integration.helpers_train import REPO, train_cmd
from tests.unit.dpo.helpers_dpo import export_tiny, pref_rows, write_jsonl

# W&B's offline ``run-*.wandb`` file: a 7-byte header (":W&B", magic, version), then LevelDB-log records in
# 32 KiB blocks (each block offset counts from the start of the file): crc32 (4), length (2, LE), type (1).
HEADER, BLOCK, RECORD_HEADER = 7, 32768, 7
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def wandb_records(path: Path) -> list:
    """Every ``Record`` protobuf in an offline ``.wandb`` file."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = path.read_bytes()
    assert data[:4] == b":W&B", path
    pos, pieces, records = HEADER, b"", []
    while pos + RECORD_HEADER <= len(data):
        left = BLOCK - pos % BLOCK
        if left < RECORD_HEADER:  # block trailer padding
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + RECORD_HEADER])
        if kind == 0 and length == 0:  # zero padding at the end of a block
            pos += left
            continue
        chunk = data[pos + RECORD_HEADER : pos + RECORD_HEADER + length]
        pos += RECORD_HEADER + length
        pieces = chunk if kind in (FULL, FIRST) else pieces + chunk
        if kind in (FULL, LAST):
            r = pb.Record()
            r.ParseFromString(pieces)
            records.append(r)
    return records


def run_record(run_dir: Path):
    (f,) = run_dir.glob("run-*.wandb")
    runs = [r.run for r in wandb_records(f) if r.WhichOneof("record_type") == "run"]
    assert runs, f"no run record in {f}"
    return runs[0]


@pytest.mark.slow
def test_each_sweep_job_has_its_own_wandb_name_and_the_sweep_uses_the_default_dir(tmp_path):
    ckpt = export_tiny(tmp_path / "dsft")
    data = write_jsonl(tmp_path / "prefs.jsonl", pref_rows(8))
    python, script, *tiny = train_cmd()
    cmd = [
        python,
        script,
        "-m",
        *(o if o != "logger=none" else "logger=wandb" for o in tiny),
        "+experiment=dpo_toy",
        f"model.path={ckpt}",
        "data=local_prefs",
        f"data.path={data}",
        "data.max_length=128",
        "data.max_prompt_length=64",
        "data.eval_size=0",
        "data.batch_size=4",
        "export=false",
        "trainer.max_steps=2",
        "objective.beta=0.1,0.5",
    ]
    env = {k: v for k, v in os.environ.items() if k not in ("WANDB_NAME", "WANDB_RUN_GROUP", "ZEPHYR_ROOT")}
    env.update(PYTHONWARNINGS="ignore", WANDB_MODE="offline")
    # run from an empty folder, no path overrides: the sweep dir is runs/multirun/<task>/<time> under it
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (sweep_dir,) = (tmp_path / "runs" / "multirun" / "dpo_toy").iterdir()
    assert (sweep_dir / "summary.csv").is_file()
    records = {}
    for job in ("0", "1"):
        (run_dir,) = (sweep_dir / job / "wandb").glob("offline-run-*")
        records[job] = run_record(run_dir)
    assert [records[j].display_name for j in ("0", "1")] == ["beta=0.1", "beta=0.5"]
    assert {r.run_group for r in records.values()} == {"dpo_toy"}
    assert {r.job_type for r in records.values()} == {"dpo_toy"}
    assert not (REPO / "runs" / "multirun" / "dpo_toy" / sweep_dir.name).exists()
