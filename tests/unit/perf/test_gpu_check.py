"""The GPU check kit without a GPU: every config composes with the ~1B shape, the FLOP/s table, the MFU arithmetic."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch

from bench import gpu_check
from bench.gpu_check import CASES, GPU, ONE_B, StepMeter, case_overrides, matmul_parameters, peak_bf16_flops, summarize

pytestmark = pytest.mark.unit


def test_dry_run_composes_every_case_with_a_1b_model():
    checked = gpu_check.dry_run()
    assert list(checked) == [
        "sft_auto",
        "dpo_auto",
        "sft_fsdp",
        "dpo_fsdp",
        "sft_deepspeed_stage_3",
        "dpo_deepspeed_stage_3",
        "sft_qlora",
        "dpo_qlora",
    ]
    for name, c in checked.items():
        # 18 layers x (attention 12,582,912 + SwiGLU 34,603,008 + norms 4,096) + embedding and head 2 x 65,536,000
        # + final norm 2,048
        assert c["n_params"] == 18 * 47_190_016 + 131_072_000 + 2048 == 980_494_336, name
        assert c["n_matmul_params"] == 980_494_336 - 32000 * 2048
        assert c["world_size"] == 1 and c["precision"] == "bf16-mixed"
        assert c["sharded"] == (c["strategy"] != "auto"), name
        assert c["objective"] == name.split("_")[0]
        assert c["adapter"] == ("qlora" if name.endswith("qlora") else "none"), name
    assert (checked["sft_auto"]["micro_batch_size"], checked["sft_auto"]["max_length"]) == (4, 2048)
    assert (checked["dpo_auto"]["micro_batch_size"], checked["dpo_auto"]["max_length"]) == (8, 1024)


def test_matmul_parameters_leave_out_only_the_input_embedding():
    from zephyr.scale.memory import meta_model

    config = {"vocab_size": 32000, "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2}
    config |= {"num_attention_heads": 4, "num_key_value_heads": 2, "tie_word_embeddings": False}
    model = meta_model(config)
    weights = sum(p.numel() for n, p in model.named_parameters() if "embed_tokens" not in n)
    assert matmul_parameters(config) == weights


@pytest.mark.parametrize(
    ("device", "label", "flops"),
    [
        ("NVIDIA H200", "H200 SXM", 989.4e12),
        ("NVIDIA H100 80GB HBM3", "H100 SXM", 989.4e12),
        ("NVIDIA H100 PCIe", "H100 PCIe", 756e12),
        ("NVIDIA A100-SXM4-80GB", "A100", 312e12),
        ("NVIDIA A10G", "A10G", 125e12),
        ("NVIDIA L4", "L4", 121e12),
        ("NVIDIA L40S", "L40S", 362.05e12),
        ("NVIDIA GeForce RTX 4090", "RTX 4090", 165.2e12),
    ],
)
def test_peak_table_knows_the_common_gpus(device, label, flops):
    assert peak_bf16_flops(device) == (label, flops)


def test_unknown_gpu_has_no_peak():
    assert peak_bf16_flops("Tesla T4") is None


def test_summarize_by_hand():
    meter = {"step_s": [1.0, 1.0], "tokens": [100, 300], "row_tokens": [80, 240], "peak_gpu_mem_bytes": 2e9}
    r = summarize(meter, n_matmul=1_000_000, peak_flops=1e12)
    assert r["tokens_per_s"] == 200.0 and r["s_per_step"] == 1.0 and r["tokens_per_step"] == 200.0
    assert r["model_flops_per_s"] == pytest.approx(6 * 1e6 * 320 / 2)  # 6 N x row tokens / time
    assert r["mfu"] == pytest.approx(9.6e-4) and r["peak_gpu_mem_gb"] == 2.0
    assert summarize({**meter, "peak_gpu_mem_bytes": None}, n_matmul=1, peak_flops=None)["mfu"] is None
    with pytest.raises(RuntimeError, match="no timed step"):
        summarize({**meter, "step_s": [], "tokens": [], "row_tokens": []}, n_matmul=1, peak_flops=1.0)


def test_case_overrides_reuse_train_py_with_the_meter(tmp_path):
    case = next(c for c in CASES if c.name == "dpo_deepspeed_stage_3")
    dpo = case_overrides(case, GPU, tmp_path, attn="sdpa")
    for want in ("strategy=deepspeed_stage_3", "hardware=gpu1", "objective=dpo", "model.attn_implementation=sdpa"):
        assert want in dpo
    assert f"objective.reference.cache_dir={tmp_path / 'ref_cache'}" in dpo
    assert f"+callbacks.gpu_meter.out={tmp_path / 'meter.json'}" in dpo and "export=false" in dpo
    assert f"model.config.num_hidden_layers={ONE_B['num_hidden_layers']}" in dpo
    assert f"trainer.max_steps={GPU.warmup + GPU.steps}" in dpo


def test_adapter_cases_train_on_the_saved_base_not_a_random_init(tmp_path):
    qlora = next(c for c in CASES if c.name == "dpo_qlora")
    assert (qlora.objective, qlora.strategy, qlora.adapter) == ("dpo", "auto", "qlora")
    ov = case_overrides(qlora, GPU, tmp_path, attn="sdpa", base=tmp_path / "base")
    assert "adapter=qlora" in ov and f"model.path={tmp_path / 'base'}" in ov and "strategy=auto" in ov
    assert not any(o.startswith("model.config.") for o in ov)  # the shape comes from the checkpoint
    with pytest.raises(ValueError, match="dpo_qlora: an adapter case needs the saved base checkpoint"):
        case_overrides(qlora, GPU, tmp_path, attn="sdpa")


def test_write_base_saves_the_mode_shape_with_the_embedded_tokenizer(tmp_path):
    from transformers import AutoConfig, AutoTokenizer

    from bench.gpu_check import CPU, write_base

    out = write_base(CPU, tmp_path / "base")
    cfg = AutoConfig.from_pretrained(out)
    assert (cfg.hidden_size, cfg.num_hidden_layers, cfg.intermediate_size) == tuple(
        CPU.model[k] for k in ("hidden_size", "num_hidden_layers", "intermediate_size")
    )
    assert cfg.dtype == torch.bfloat16 and AutoTokenizer.from_pretrained(out).vocab_size == 32000


def test_step_meter_drops_the_warmup_and_writes_its_record(tmp_path):
    meter = StepMeter(str(tmp_path / "m.json"), warmup=1)
    trainer = SimpleNamespace(is_global_zero=True)
    meter.on_train_start(trainer, None)
    for n in (10, 20, 30):
        meter.on_train_batch_end(trainer, None, None, {"num_tokens": torch.tensor(n)}, 0)
    meter.on_train_batch_end(trainer, None, None, {"num_tokens": torch.tensor(8), "num_row_tokens": torch.tensor(5)}, 0)
    meter.on_train_end(trainer, None)
    rec = json.loads((tmp_path / "m.json").read_text())
    assert rec["tokens"] == [20, 30, 8] and rec["row_tokens"] == [20, 30, 5] and len(rec["step_s"]) == 3
    assert rec["peak_rss_mb"] > 0 and rec["peak_gpu_mem_bytes"] is None


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_the_gpu_kit_refuses_a_machine_without_cuda_in_one_line(capsys):
    assert gpu_check.main([]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "bench/gpu_check.py: error: no CUDA device here; use --dry-run or --cpu-smoke on this machine"


def test_unknown_case_is_refused(capsys):
    assert gpu_check.main(["--cases", "sft_auto,sft_tpu"]) == 2
    assert "--cases sft_tpu: not a case (sft_auto, dpo_auto," in capsys.readouterr().err


def test_make_gpu_check_runs_the_kit():
    from tests.conftest import REPO

    text = (REPO / "Makefile").read_text()
    assert "\ngpu-check: install ## " in text and "\n\t$(PY) -m bench.gpu_check\n" in text
