"""The same configs on CUDA through Lightning's own strategies: DeepSpeed ZeRO-3 and FSDP, bf16, FlashAttention-2.

Runs ``train.py`` on one GPU with a small Mistral (4 layers, hidden 256) for a few steps, for dSFT and dDPO,
and checks that training lowers the loss, the export is a plain HF checkpoint with the single-device file set,
and reports tokens/s (printed; figures go to the README, not into assertions).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SMALL = [
    "model.config.hidden_size=256",
    "model.config.intermediate_size=768",
    "model.config.num_hidden_layers=4",
    "model.config.num_attention_heads=8",
    "logger=none",
    "trainer.enable_progress_bar=false",
    "callbacks.model_checkpoint=null",
    "hardware=gpu1",
]
EXPORT_FILES = {
    "chat_template.jinja",
    "config.json",
    "generation_config.json",
    "model.safetensors",
    "tokenizer.json",
    "tokenizer_config.json",
    "zephyr_export.json",
}


def _train(out: Path, *overrides: str) -> dict:
    cmd = [sys.executable, str(REPO / "train.py"), *SMALL, f"paths.output_dir={out}", *overrides]
    proc = subprocess.run(
        cmd, cwd=REPO, env={**os.environ, "HYDRA_FULL_ERROR": "1"}, capture_output=True, text=True, timeout=900
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads((out / "metrics.json").read_text())


def _check_export(model_dir: Path) -> None:
    from transformers import pipeline

    assert {p.name for p in model_dir.iterdir()} == EXPORT_FILES
    assert json.loads((model_dir / "config.json").read_text())["architectures"] == ["MistralForCausalLM"]
    gen = pipeline("text-generation", model=str(model_dir), device=0)
    out = gen([{"role": "user", "content": "What is 2 + 3?"}], max_new_tokens=8, do_sample=False)
    assert isinstance(out[0]["generated_text"], list)


@pytest.fixture(scope="module")
def sft_export(tmp_path_factory):
    out = tmp_path_factory.mktemp("sft_auto")
    _train(out, "trainer.max_steps=30", "data.batch_size=8")
    return out / "model"


@pytest.mark.parametrize("strategy", ["deepspeed_stage_3", "fsdp"])
def test_sft_on_one_gpu(tmp_path, strategy):
    if strategy.startswith("deepspeed"):
        pytest.importorskip("deepspeed")
    m = _train(
        tmp_path,
        f"strategy={strategy}",
        "trainer.max_steps=20",
        "trainer.val_check_interval=10",
        "trainer.global_batch_size=16",
        "data.batch_size=8",
    )
    assert m["global_step"] == 20.0 and m["eval/loss"] < 10.0  # from ln(32000) = 10.37
    print(f"{strategy} dSFT: {m['train/tokens_per_sec']:.0f} tokens/s")
    _check_export(tmp_path / "model")


def test_dpo_on_one_gpu_with_zero3(tmp_path, sft_export):
    pytest.importorskip("deepspeed")
    m = _train(
        tmp_path,
        "+experiment=dpo_toy",
        f"model.path={sft_export}",
        "strategy=deepspeed_stage_3",
        "trainer.max_epochs=-1",
        "trainer.max_steps=10",
        "trainer.val_check_interval=5",
        f"objective.reference.cache_dir={tmp_path / 'ref_cache'}",
    )
    assert m["global_step"] == 10.0
    assert "eval/rewards/accuracies" in m or "eval/loss" in m
    _check_export(tmp_path / "model")


def test_flash_attention_is_used_when_installed():
    pytest.importorskip("flash_attn")
    from zephyr.models.mistral import resolve_attn_implementation

    assert resolve_attn_implementation("flash_attention_2") == "flash_attention_2"


def test_qlora_dsft_on_one_gpu_exports_a_plain_merged_model(tmp_path, sft_export):
    pytest.importorskip("bitsandbytes")
    m = _train(
        tmp_path,
        "adapter=qlora",
        f"model.path={sft_export}",
        "trainer.max_steps=10",
        "trainer.val_check_interval=5",
        "data.batch_size=8",
    )
    assert m["global_step"] == 10.0 and m["eval/loss"] < 10.0
    print(f"QLoRA dSFT: {m['train/tokens_per_sec']:.0f} tokens/s")
    assert (tmp_path / "adapter" / "adapter_model.safetensors").is_file()
    _check_export(tmp_path / "model")  # merged into the bf16 base: a plain checkpoint, no bitsandbytes needed
