"""LoRA / QLoRA through ``train.py``: dSFT trains only adapters, exports merged + adapter, dDPO starts from the merge.

One tiny random-init Mistral is saved as an HF checkpoint (the base every run here starts from); the runs are
module-scoped so the dSFT run is trained once and the dDPO run starts from its merged export.
"""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import TINY_CONFIG, write_jsonl
from tests.integration.helpers_train import run_train

pytestmark = pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing.*:FutureWarning")

LORA = ["adapter=lora", "adapter.r=4", "adapter.alpha=8"]
PAIRS = [
    ("What is 2 + 3?", "2 + 3 = 5.", "2 + 3 = 6."),
    ("Reverse the list 1, 2, 3.", "3, 2, 1.", "1, 2, 3."),
    ("How many letters are in 'cat'?", "'cat' has 3 letters.", "'cat' has 4 letters."),
    ("What is 10 - 4?", "10 - 4 = 6.", "10 - 4 = 7."),
]


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory):
    from zephyr.models.export import export_hf
    from zephyr.models.mistral import build_model
    from zephyr.tokenizer import load_tokenizer

    return export_hf(build_model(config=TINY_CONFIG, init_seed=0), load_tokenizer(), tmp_path_factory.mktemp("b") / "m")


@pytest.fixture(scope="module")
def sft_run(base_dir, tmp_path_factory):
    run = tmp_path_factory.mktemp("sft")
    proc = run_train(
        *LORA,
        f"model.path={base_dir}",
        f"paths.root_dir={run}",
        f"paths.output_dir={run}/run",
        "data.toy.n=64",
        "data.eval_size=8",
        "trainer.max_steps=3",
    )
    return run / "run", proc.stdout + proc.stderr


def _logits(model, ids):
    with torch.no_grad():
        return model.eval()(input_ids=ids).logits


def test_lora_dsft_trains_only_adapters_and_exports_merged_and_adapter(base_dir, sft_run):
    from peft import AutoPeftModelForCausalLM
    from transformers import AutoModelForCausalLM

    run, log = sft_run
    assert "parameters: 8,192 trainable / 4,178,240 total (0.196 %)" in log
    base = load_file(base_dir / "model.safetensors")
    state = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)["state_dict"]
    prefix = "model.base_model.model."
    for key, value in base.items():  # every base weight bit-identical after training
        lora_key = f"{prefix}{key[: -len('.weight')]}.base_layer.weight"
        assert torch.equal(state[lora_key] if lora_key in state else state[prefix + key], value), key
    lora_b = [v for k, v in state.items() if "lora_B" in k]
    assert len(lora_b) == 14 and all(v.abs().sum() > 0 for v in lora_b)  # 7 linears x 2 layers trained
    adapter_cfg = json.loads((run / "adapter" / "adapter_config.json").read_text())
    assert adapter_cfg["base_model_name_or_path"] == str(base_dir.resolve()) and adapter_cfg["r"] == 4
    ids = torch.randint(0, 32000, (2, 10), generator=torch.Generator().manual_seed(0))
    peft_logits = _logits(AutoPeftModelForCausalLM.from_pretrained(str(run / "adapter")), ids)
    merged = AutoModelForCausalLM.from_pretrained(str(run / "model"))
    assert "lora" not in " ".join(n for n, _ in merged.named_parameters())
    torch.testing.assert_close(_logits(merged, ids), peft_logits, atol=1e-5, rtol=1e-5)
    assert (peft_logits - _logits(AutoModelForCausalLM.from_pretrained(str(base_dir)), ids)).abs().max() > 0
    for d in ("model", "adapter"):
        assert "prompt_format" in json.loads((run / d / "zephyr_export.json").read_text())


def test_zephyr_export_adapter_only_matches_the_runs_adapter(sft_run, tmp_path, capsys):
    from zephyr.cli import main

    run, _ = sft_run
    ckpt = run / "checkpoints" / "last.ckpt"
    assert main(["export", str(ckpt), "--out", str(tmp_path / "a"), "--adapter-only"]) == 0
    assert main(["export", str(ckpt), "--out", str(tmp_path / "m")]) == 0
    want, got = (
        load_file(run / "adapter" / "adapter_model.safetensors"),
        load_file(tmp_path / "a" / "adapter_model.safetensors"),
    )
    assert sorted(got) == sorted(want) and all(torch.equal(got[k], want[k]) for k in want)
    want, got = load_file(run / "model" / "model.safetensors"), load_file(tmp_path / "m" / "model.safetensors")
    assert sorted(got) == sorted(want) and all(torch.allclose(got[k], want[k], atol=1e-6) for k in want)
    assert json.loads((tmp_path / "a" / "zephyr_export.json").read_text())["prompt_format"]
    base_cfg = str(run / ".hydra" / "config.yaml")
    plain = run.parent / "plain.yaml"  # the same run config without adapters: --adapter-only is refused
    plain.write_text(open(base_cfg).read().replace("name: lora", "name: none"))
    assert main(["export", str(ckpt), "--out", str(tmp_path / "x"), "--adapter-only", "--config", str(plain)]) == 2
    assert "--adapter-only: the run of" in capsys.readouterr().err


def test_lora_ddpo_starts_from_the_merged_export_with_fresh_adapters(sft_run, tmp_path):
    sft, _ = sft_run
    rows = [
        {
            "prompt": q,
            "chosen": [{"role": "user", "content": q}, {"role": "assistant", "content": c}],
            "rejected": [{"role": "user", "content": q}, {"role": "assistant", "content": r}],
        }
        for q, c, r in PAIRS * 4
    ]
    data = write_jsonl(tmp_path / "pairs.jsonl", rows)
    run = tmp_path / "dpo"
    proc = run_train(
        "+experiment=dpo_toy",
        *LORA,
        f"model.path={sft}/model",
        "data=local_prefs",
        f"data.path={data}",
        "data.eval_size=4",
        "data.batch_size=4",
        "data.max_length=128",
        "data.max_prompt_length=64",
        "trainer.max_steps=3",
        f"paths.root_dir={tmp_path}",
        f"paths.output_dir={run}",
    )
    assert "parameters: 8,192 trainable" in proc.stdout + proc.stderr
    merged = load_file(sft / "model" / "model.safetensors")
    state = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)["state_dict"]
    prefix = "model.base_model.model."
    for key, value in merged.items():  # the dSFT merge is the frozen base of the dDPO adapters
        lora_key = f"{prefix}{key[: -len('.weight')]}.base_layer.weight"
        assert torch.equal(state[lora_key] if lora_key in state else state[prefix + key], value), key
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["global_step"] == 3 and torch.isfinite(torch.tensor(metrics["train/loss"]))
    cfg = json.loads((run / "adapter" / "adapter_config.json").read_text())
    assert cfg["base_model_name_or_path"] == str((sft / "model").resolve())
    sft_a, dpo_a = (
        load_file(sft / "adapter" / "adapter_model.safetensors"),
        load_file(run / "adapter" / "adapter_model.safetensors"),
    )
    assert sorted(sft_a) == sorted(dpo_a) and not any(torch.equal(sft_a[k], dpo_a[k]) for k in sft_a if "lora_A" in k)


def test_bad_adapter_input_is_one_line_before_training(sft_run, tmp_path, compose):
    from zephyr.errors import ConfigError
    from zephyr.run import train

    proc = run_train("adapter=lora", "adapter.r=0", f"paths.root_dir={tmp_path}", check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1] == (
        "train.py: error: adapter.r=0 must be a positive integer (the LoRA rank, e.g. 16)"
    )
    sft, _ = sft_run
    cases = [
        (
            [f"model.path={sft}/adapter"],
            f"model.path={sft}/adapter is a LoRA adapter (adapter_config.json, no config.json), "
            f"not a full model: start from model.path={sft}/model (the base with these adapters merged in)",
        ),
        (
            ["adapter=lora", "adapter.target_modules=[q_proj,attn]", "data.toy.n=16", "logger=none"],
            "adapter.target_modules: 'attn' is not a linear module of MistralForCausalLM; its linear "
            "modules are: down_proj, gate_proj, k_proj, lm_head, o_proj, q_proj, up_proj, v_proj",
        ),
    ]
    for overrides, line in cases:
        with pytest.raises(ConfigError) as e:
            train(compose(*overrides))
        assert str(e.value) == line
        assert not (tmp_path / "run" / "checkpoints").exists()


def test_qlora_dsft_on_cpu_exports_a_plain_merged_model(base_dir, tmp_path):
    pytest.importorskip("bitsandbytes")
    from transformers import AutoModelForCausalLM

    run = tmp_path / "q"
    proc = run_train(
        "adapter=qlora",
        "adapter.r=4",
        f"model.path={base_dir}",
        f"paths.root_dir={tmp_path}",
        f"paths.output_dir={run}",
        "data.toy.n=32",
        "data.eval_size=4",
        "trainer.max_steps=2",
    )
    assert "parameters: 8,192 trainable / 4,178,240 total (0.196 %)" in proc.stdout + proc.stderr
    state = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)["state_dict"]
    assert state["model.base_model.model.model.layers.0.self_attn.q_proj.base_layer.weight"].dtype == torch.uint8
    merged = AutoModelForCausalLM.from_pretrained(str(run / "model"))
    assert merged.model.layers[0].self_attn.q_proj.weight.shape == (64, 64)  # unquantized, plain transformers
    assert (run / "adapter" / "adapter_model.safetensors").is_file()
