"""The reference log-prob cache filled by 2 DDP processes (gloo, CPU): each rank runs half the reference
forwards, and the merged cache file equals the one-process fill bit for bit (every tensor, the key)."""

from __future__ import annotations

import json
import sys

import pytest
import torch
from safetensors import safe_open

from tests.conftest import TINY_OVERRIDES
from tests.integration.helpers_scale import REPO, run
from tests.unit.dpo.helpers_dpo import pref_rows, write_jsonl

pytestmark = pytest.mark.slow


def read_cache(folder) -> tuple[dict[str, dict[str, torch.Tensor]], dict[str, dict[str, str]]]:
    """``({file name: tensors}, {file name: metadata})`` of every cache entry in ``folder``."""
    tensors, meta = {}, {}
    for p in sorted(folder.glob("ref_logps-*.safetensors")):
        with safe_open(str(p), framework="pt") as f:
            tensors[p.name] = {k: f.get_tensor(k) for k in f.keys()}
            meta[p.name] = f.metadata()
    return tensors, meta


def test_two_ranks_fill_half_each_and_merge_to_the_one_process_cache(tmp_path):
    data = write_jsonl(tmp_path / "prefs.jsonl", pref_rows(40))  # 32 train pairs (8 batches), 8 eval (2)
    base = [sys.executable, str(REPO / "train.py"), *TINY_OVERRIDES, "objective=dpo", "data=local_prefs"]
    base += [f"data.path={data}", "data.eval_size=8", "data.batch_size=4", "data.max_length=96"]
    base += ["data.max_prompt_length=48", "objective.reference.batch_size=4", "trainer.max_steps=1"]
    base += ["logger=none", "callbacks.model_checkpoint=null", "export=false", "final_eval=false"]
    base += ["trainer.enable_progress_bar=false", f"paths.root_dir={tmp_path}"]
    one = run([*base, f"paths.output_dir={tmp_path / 'one'}", f"objective.reference.cache_dir={tmp_path / 'c1'}"])
    assert one.returncode == 0, one.stderr[-3000:]
    two = run(
        [
            *base,
            f"paths.output_dir={tmp_path / 'two'}",
            f"objective.reference.cache_dir={tmp_path / 'c2'}",
            "strategy=ddp",
            "hardware.devices=2",
        ]
    )
    out = two.stdout + two.stderr
    assert two.returncode == 0, out[-3000:]

    single, single_meta = read_cache(tmp_path / "c1")
    merged, merged_meta = read_cache(tmp_path / "c2")
    assert len(single) == 2 and sorted(single) == sorted(merged)  # train and eval, the same keys -> file names
    for name, tensors in single.items():
        assert sorted(tensors) == sorted(merged[name]) == ["chosen", "rejected"]
        for k, t in tensors.items():
            assert torch.equal(t, merged[name][k]), (name, k)  # bit for bit
        assert merged_meta[name]["key"] == single_meta[name]["key"]
        assert "shards" not in single_meta[name]
    shards = sorted(sorted(json.loads(m["shards"]).items()) for m in merged_meta.values())
    assert shards == [[("0", 4), ("1", 4)], [("0", 16), ("1", 16)]]  # eval 8 pairs, train 32: half each
    for rank in (0, 1):  # each rank's own log line (train: 4 of the 8 batches)
        assert f"reference log-probs (train) rank {rank}/2: ran 4 of 8 batches (16 pairs)" in out, out[-3000:]
    assert not list((tmp_path / "c2").glob("*.pt"))  # the shards are gone once merged
