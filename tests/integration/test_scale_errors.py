"""``train.py`` refuses what cannot run before loading a model, with one line naming the keys (exit 2)."""

from __future__ import annotations

from tests.integration.helpers_scale import train


def _last_line(proc) -> str:
    return proc.stderr.strip().splitlines()[-1]


def test_deepspeed_on_cpu_is_refused_with_one_line(tmp_path):
    proc = train(tmp_path, "strategy=deepspeed_stage_3", check=False)
    assert proc.returncode == 2
    line = _last_line(proc)
    assert line.startswith("train.py: error: strategy=deepspeed_stage_3 needs CUDA GPUs but hardware.accelerator=cpu")
    assert "deepspeed_cpu_check" in line
    assert not (tmp_path / "model").exists()


def test_indivisible_global_batch_is_refused(tmp_path):
    proc = train(tmp_path, "trainer.global_batch_size=10", "hardware.devices=2", check=False)
    assert proc.returncode == 2
    assert _last_line(proc) == (
        "train.py: error: trainer.global_batch_size=10 is not divisible by data.batch_size=4 x 2 devices = 8; "
        "set data.batch_size to one of [1, 5]"
    )
