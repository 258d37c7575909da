"""Memory estimate: parameter count from a config, ZeRO-paper state bytes per strategy, the printed table."""

from __future__ import annotations

import io

import pytest
from rich.console import Console

from zephyr.scale.memory import (
    GB,
    activation_bytes,
    count_parameters,
    estimate,
    estimates_for_config,
    print_memory_estimate,
)

MISTRAL_7B = dict(
    vocab_size=32000,
    hidden_size=4096,
    intermediate_size=14336,
    num_hidden_layers=32,
    num_attention_heads=32,
    num_key_value_heads=8,
    tie_word_embeddings=False,
)
P = 7_241_732_096


def test_mistral_7b_parameter_count():
    # 2 x 32000 x 4096 (embeddings + head) + 32 x 218,112,000 per layer + 4096 final norm
    assert count_parameters(MISTRAL_7B) == 2 * 32000 * 4096 + 32 * 218_112_000 + 4096 == P


def test_count_matches_a_real_tiny_model(tiny_model):
    from tests.conftest import TINY_CONFIG

    assert count_parameters(TINY_CONFIG) == sum(p.numel() for p in tiny_model.parameters())


def test_state_bytes_follow_the_zero_paper():
    """ZeRO (arXiv 1910.02054): 2 + 2 + 12 bytes per parameter; stage 2 shards 14, stage 3 all 16."""
    kw = dict(n_params=P, world_size=16, weight_bytes=4, activations=0.0, precision="bf16-mixed", layer_params=10)
    s3 = estimate("deepspeed_stage_3", **kw)
    assert (s3.params, s3.grads, s3.optimizer) == (2 * P / 16, 2 * P / 16, 12 * P / 16)
    assert s3.total == pytest.approx(P)  # 16 bytes / 16 ranks
    s2 = estimate("deepspeed_stage_2", **kw)
    assert s2.params == 2 * P and s2.grads + s2.optimizer == pytest.approx(14 * P / 16)
    off = estimate("deepspeed_stage_3_offload", **kw)
    assert off.host == pytest.approx(P) and off.params == 2 * 10 * 2 and off.optimizer == 0
    ddp = estimate("ddp", **kw)
    assert ddp.total == 16 * P  # fp32 weights, grads, two Adam states on every device
    fsdp = estimate("fsdp", **kw)
    assert fsdp.total == pytest.approx(P)
    assert estimate("fsdp", **{**kw, "weight_bytes": 2}).total == pytest.approx(P / 2)  # bf16 weights: 8 B/param
    with pytest.raises(ValueError, match="unknown strategy 'zero4'"):
        estimate("zero4", **kw)


def test_activation_formula_by_hand():
    # b=1, s=8, h=4, L=2: sbh = 32; checkpointing: 2 layers x 2 x 32 + 34 x 32 = 1216 bytes (16-bit)
    # loss: chunk 1 x V 10 x 4 bytes x 2 = 80
    got = activation_bytes(
        micro_batch_size=1,
        seq_len=8,
        hidden_size=4,
        num_layers=2,
        vocab_size=10,
        gradient_checkpointing=True,
        chunked_loss=True,
        loss_chunk_size=1,
    )
    assert got == 1216 + 80
    full = activation_bytes(
        micro_batch_size=1,
        seq_len=8,
        hidden_size=4,
        num_layers=2,
        vocab_size=10,
        gradient_checkpointing=False,
        chunked_loss=False,
    )
    assert full == 2 * 34 * 32 + 8 * 10 * 8


def test_paper_preset_on_a100x16(compose):
    cfg = compose("+experiment=zephyr_7b_sft", "hardware=a100x16", "strategy=deepspeed_stage_3")
    rows, facts = estimates_for_config(cfg)
    by = {r.strategy: r for r in rows}
    assert facts["n_params"] == P and facts["world_size"] == 16 and facts["micro_batch_size"] == 16
    assert by["deepspeed_stage_3"].params + by["deepspeed_stage_3"].grads + by["deepspeed_stage_3"].optimizer == (
        pytest.approx(P)
    )
    assert by["ddp"].total > 80 * GB  # a full fp32 replica + Adam does not fit an A100
    assert by["deepspeed_stage_3"].total < 0.9 * 80 * GB
    out = io.StringIO()
    print_memory_estimate(cfg, Console(file=out, width=140))
    text = out.getvalue()
    assert "7.24 B params, 16 device(s)" in text
    assert "deepspeed_stage_3 *" in text  # the configured strategy is starred
    assert "fits" in text and " no " in text and " yes " in text


def test_dpo_doubles_rows_and_live_reference_adds_weights(compose):
    cfg = compose("objective=dpo", "objective.reference.mode=live", "data.batch_size=2")
    rows, facts = estimates_for_config(cfg)
    assert facts["micro_batch_size"] == 4 and facts["reference"] == "live"
    sft_rows, _ = estimates_for_config(compose("data.batch_size=2"))
    n = facts["n_params"]
    assert rows[1].activations - sft_rows[1].activations > n * 4 * 0.99  # fp32 reference weights included


def test_peak_memory_records_each_phase_of_the_first_step(tmp_path):
    """PeakMemory writes, per phase of the first step, the RSS and the high-water mark over the setup RSS.

    In a fresh process: inside a long pytest run, garbage of earlier tests freed after the ``setup`` reading
    would hide the 64 MiB below the baseline.
    """
    import json
    import subprocess
    import sys

    code = """
import sys
from types import SimpleNamespace
import torch
from zephyr.scale.memory import PeakMemory
cb = PeakMemory()
trainer = SimpleNamespace(global_rank=0, world_size=1, default_root_dir=sys.argv[1], global_step=0)
cb.setup(trainer, None, "fit")
cb.on_train_start(trainer, None)
block = torch.ones(64 * 2**20 // 4)  # 64 MiB touched between the build and the first backward
cb.on_before_backward(trainer, None, None)
del block
cb.on_after_backward(trainer, None)
cb.on_before_optimizer_step(trainer, None, None)
cb.on_train_batch_end(trainer, None, None, None, 0)  # global_step 0: no optimizer step yet
trainer.global_step = 1
cb.on_train_batch_end(trainer, None, None, None, 1)
cb.on_fit_end(trainer, None)
"""
    subprocess.run([sys.executable, "-c", code, str(tmp_path)], check=True, timeout=120)
    report = json.loads((tmp_path / "memory_rank0.json").read_text())
    phases = report["phases"]
    assert list(phases) == ["model_ready", "forward", "backward", "before_optimizer_step", "after_first_optimizer_step"]
    assert phases["forward"]["peak_delta_bytes"] >= 60 * 2**20 > phases["model_ready"]["peak_delta_bytes"]
    assert phases["backward"]["rss_delta_bytes"] < phases["forward"]["rss_delta_bytes"] - 30 * 2**20  # freed
    # the kernel's RSS counters are synced lazily (per-thread caches): equal to within a MiB
    assert report["delta_bytes"] >= phases["forward"]["peak_delta_bytes"] - 2**20


def test_return_freed_host_memory_unmaps_freed_buffers():
    """With the fixed mmap threshold freed 4 MiB blocks leave RSS; with glibc's dynamic one (raised by freeing a
    16 MiB block first) they stay resident in the heap. In a subprocess: the setting is process-wide."""
    import subprocess
    import sys

    code = """
import sys, torch
from zephyr.scale.host_memory import return_freed_host_memory
def rss_kib():
    return next(int(x.split()[1]) for x in open("/proc/self/status") if x.startswith("VmRSS:"))
if sys.argv[1] == "fixed":
    assert return_freed_host_memory()
big = torch.ones(16 * 2**18); del big  # freeing a mmapped 16 MiB block raises glibc's dynamic threshold to it
kept = []
before = rss_kib()
for _ in range(16):
    kept.append(torch.ones(2**20))  # 4 MiB each, 64 MiB in all
kept = [kept[i] for i in range(0, 16, 2)]  # free every other block: holes below the heap top
print((rss_kib() - before) // 1024)
"""
    mib = {}
    for mode in ("fixed", "default"):
        proc = subprocess.run([sys.executable, "-c", code, mode], capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, proc.stderr[-2000:]
        mib[mode] = int(proc.stdout.split()[-1])
    assert mib["fixed"] <= 40 and mib["default"] >= 56, mib  # 32 MiB still held vs all 64 MiB
