"""LoRA / QLoRA adapters (``zephyr.models.adapters``): counts, frozen base, merge, exports, bad input, presets."""

from __future__ import annotations

import json

import pytest
import torch

from tests.conftest import TINY_CONFIG
from zephyr.errors import ConfigError
from zephyr.models.adapters import (
    apply_adapter,
    check_adapter,
    decoder_linear_names,
    describe_parameters,
    merged_model,
    parameter_counts,
    trainable_state,
)
from zephyr.models.mistral import build_model

LORA = {"name": "lora", "r": 4, "alpha": 8, "dropout": 0.0, "target_modules": None, "modules_to_save": None}
H, FF, L = TINY_CONFIG["hidden_size"], TINY_CONFIG["intermediate_size"], TINY_CONFIG["num_hidden_layers"]
KV = H // TINY_CONFIG["num_attention_heads"] * TINY_CONFIG["num_key_value_heads"]  # k/v projection width


def _base():
    return build_model(config=TINY_CONFIG, init_seed=0)


def _ids():
    return torch.randint(0, TINY_CONFIG["vocab_size"], (2, 12), generator=torch.Generator().manual_seed(1))


def _perturb(model):
    """Give every LoRA B a non-zero value (fresh adapters are exact no-ops), as training would."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05, generator=torch.Generator().manual_seed(hash(name) % 1000))


def test_default_targets_are_every_decoder_linear_and_not_the_head():
    want = ["down_proj", "gate_proj", "k_proj", "o_proj", "q_proj", "up_proj", "v_proj"]
    assert decoder_linear_names(_base()) == want


def test_trainable_count_equals_hand_count():
    r = LORA["r"]
    # LoRA on a (in -> out) linear adds A (r x in) and B (out x r): r * (in + out) per layer
    per_layer = r * ((H + H) + (H + KV) + (H + KV) + (H + H) + 2 * (H + FF) + (FF + H))
    model = apply_adapter(_base(), LORA)
    trainable, total = parameter_counts(model)
    base_total = sum(p.numel() for p in _base().parameters())
    assert trainable == per_layer * L == 8_192
    assert total == base_total + trainable
    assert describe_parameters(model) == "parameters: 8,192 trainable / 4,178,240 total (0.196 %)"
    # an explicit list: q and v only
    model = apply_adapter(_base(), {**LORA, "target_modules": ["q_proj", "v_proj"]})
    assert parameter_counts(model)[0] == r * ((H + H) + (H + KV)) * L
    # modules_to_save trains a full copy of the head
    model = apply_adapter(_base(), {**LORA, "target_modules": ["q_proj"], "modules_to_save": ["lm_head"]})
    assert parameter_counts(model)[0] == r * (H + H) * L + TINY_CONFIG["vocab_size"] * H


def test_only_adapters_train_and_base_stays_bit_identical():
    base_state = {k: v.clone() for k, v in _base().state_dict().items()}
    model = apply_adapter(_base(), LORA)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    ids = _ids()
    for _ in range(3):
        model(input_ids=ids, labels=ids).loss.backward()
        opt.step()
        opt.zero_grad()
    assert all(("lora_" in n) == p.requires_grad for n, p in model.named_parameters())
    inner = model.get_base_model().state_dict()
    for key, value in base_state.items():
        name = key.replace(".weight", ".base_layer.weight") if f"{key[:-7]}.base_layer.weight" in inner else key
        assert torch.equal(inner[name], value), key
    assert any(v.abs().sum() > 0 for k, v in trainable_state(model).items() if "lora_B" in k)


def test_adapters_disabled_forward_equals_base_and_merge_equals_peft_logits():
    ids = _ids()
    with torch.no_grad():
        base_logits = _base().eval()(input_ids=ids).logits
        model = apply_adapter(_base(), LORA).eval()
        _perturb(model)
        peft_logits = model(input_ids=ids).logits
        with model.disable_adapter():
            torch.testing.assert_close(model(input_ids=ids).logits, base_logits, atol=0, rtol=0)
        assert (peft_logits - base_logits).abs().max() > 1e-3  # the adapters do change the output
        merged = merged_model(_base(), LORA, trainable_state(model)).eval()
        assert type(merged).__name__ == "MistralForCausalLM"
        torch.testing.assert_close(merged(input_ids=ids).logits, peft_logits, atol=1e-5, rtol=1e-5)


PEFT_LOAD_WARNING = "ignore:.*is_gradient_checkpointing.*:FutureWarning"  # peft reads a deprecated alias


@pytest.mark.filterwarnings(PEFT_LOAD_WARNING)
def test_adapter_export_loads_with_auto_peft_and_records_prompt_format(tmp_path, tokenizer):
    from peft import AutoPeftModelForCausalLM

    from zephyr.models.export import export_adapter_run, load_prompt_format

    base_dir = tmp_path / "base"
    _base().save_pretrained(base_dir)
    model = apply_adapter(build_model(path=str(base_dir)), LORA).eval()
    _perturb(model)
    export_adapter_run(
        model,
        tokenizer,
        adapter=LORA,
        load_base=lambda: build_model(path=str(base_dir)),
        base=str(base_dir),
        adapter_dir=tmp_path / "adapter",
        model_dir=tmp_path / "model",
        prompt_format={"insert_empty_system": True},
    )
    assert {"adapter_config.json", "adapter_model.safetensors"} <= {p.name for p in (tmp_path / "adapter").iterdir()}
    cfg = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert cfg["base_model_name_or_path"] == str(base_dir.resolve()) and cfg["r"] == 4
    ids = _ids()
    with torch.no_grad():
        want = model(input_ids=ids).logits
        loaded = AutoPeftModelForCausalLM.from_pretrained(str(tmp_path / "adapter")).eval()
        torch.testing.assert_close(loaded(input_ids=ids).logits, want, atol=1e-5, rtol=1e-5)
        from transformers import AutoModelForCausalLM

        plain = AutoModelForCausalLM.from_pretrained(str(tmp_path / "model")).eval()
        torch.testing.assert_close(plain(input_ids=ids).logits, want, atol=1e-5, rtol=1e-5)
    for d in ("adapter", "model"):
        assert load_prompt_format(tmp_path / d) == {"insert_empty_system": True}


@pytest.mark.filterwarnings(PEFT_LOAD_WARNING)
def test_random_init_base_is_saved_beside_the_adapter(tmp_path, tokenizer):
    from peft import AutoPeftModelForCausalLM

    from zephyr.models.export import export_adapter

    model = apply_adapter(_base(), LORA).eval()
    _perturb(model)
    export_adapter(model, tokenizer, tmp_path / "adapter", base=None, base_model=_base())
    cfg = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert cfg["base_model_name_or_path"] == str((tmp_path / "adapter" / "base").resolve())
    ids = _ids()
    with torch.no_grad():
        loaded = AutoPeftModelForCausalLM.from_pretrained(str(tmp_path / "adapter")).eval()
        torch.testing.assert_close(loaded(input_ids=ids).logits, model(input_ids=ids).logits, atol=1e-5, rtol=1e-5)


def test_unknown_target_module_lists_the_linear_modules():
    with pytest.raises(ConfigError) as e:
        apply_adapter(_base(), {**LORA, "target_modules": ["q_proj", "qkv"]})
    assert str(e.value) == (
        "adapter.target_modules: 'qkv' is not a linear module of MistralForCausalLM; its linear modules are: "
        "down_proj, gate_proj, k_proj, lm_head, o_proj, q_proj, up_proj, v_proj"
    )
    with pytest.raises(ConfigError, match="adapter.modules_to_save: 'head' is not a module"):
        apply_adapter(_base(), {**LORA, "modules_to_save": ["head"]})


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("adapter.r=0", "adapter.r=0 must be a positive integer"),
        ("adapter.r=-8", "adapter.r=-8 must be a positive integer"),
        ("adapter.alpha=0", "adapter.alpha=0 must be a positive number"),
        ("adapter.dropout=1.0", "adapter.dropout=1.0 must be in [0, 1)"),
        ("strategy=fsdp", "adapter=lora with strategy=fsdp is not supported"),
    ],
)
def test_bad_adapter_values_are_refused(compose, override, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("(", r"\(").replace(")", r"\)")):
        check_adapter(compose("adapter=lora", override))


def test_qlora_needs_a_pretrained_checkpoint_and_bitsandbytes(compose, monkeypatch):
    with pytest.raises(ConfigError, match=r"^adapter=qlora needs a pretrained model.path=DIR"):
        check_adapter(compose("adapter=qlora"))
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "bitsandbytes" else real(n, *a))
    with pytest.raises(ConfigError, match=r"^adapter=qlora needs bitsandbytes .*pip install -e '\.\[qlora\]'$"):
        check_adapter(compose("adapter=qlora", "model.path=/tmp/x"))


def test_adapter_directory_as_model_path_offers_the_merged_export(compose, tmp_path):
    from zephyr.run import check_model_path

    run = tmp_path / "lora_run"
    (run / "adapter").mkdir(parents=True)
    (run / "adapter" / "adapter_config.json").write_text("{}")
    with pytest.raises(ConfigError, match="the run's merged export <run>/model"):
        check_model_path(compose(f"model.path={run}/adapter"))
    (run / "model").mkdir()
    (run / "model" / "config.json").write_text("{}")
    with pytest.raises(ConfigError) as e:
        check_model_path(compose(f"model.path={run}/adapter"))
    assert str(e.value) == (
        f"model.path={run}/adapter is a LoRA adapter (adapter_config.json, no config.json), not a full model: "
        f"start from model.path={run}/model (the base with these adapters merged in)"
    )


def test_qlora_base_is_4bit_nf4_and_trains_lora_on_cpu(tmp_path, compose):
    """bitsandbytes 0.50 runs Linear4bit forward and backward on CPU: QLoRA is tested here, not only on GPU."""
    pytest.importorskip("bitsandbytes")
    from zephyr.models.adapters import model_kwargs

    base_dir = tmp_path / "base"
    _base().save_pretrained(base_dir)
    cfg = compose("adapter=qlora", f"model.path={base_dir}")
    check_adapter(cfg)
    assert model_kwargs(cfg)["quantization_config"] == {
        "quant_method": "bitsandbytes",
        "load_in_4bit": True,
        "bnb_4bit_quant_type": "nf4",
        "bnb_4bit_use_double_quant": True,
        "bnb_4bit_compute_dtype": "bfloat16",
    }
    from zephyr.run import build

    model = apply_adapter(build(cfg.model, **model_kwargs(cfg)), {**LORA, "name": "qlora"})
    q = model.get_base_model().config.quantization_config
    assert (q.load_in_4bit, q.bnb_4bit_use_double_quant, q.bnb_4bit_compute_dtype) == (True, True, torch.bfloat16)
    layer = model.get_base_model().model.layers[0].self_attn.q_proj.base_layer
    assert type(layer).__name__ == "Linear4bit" and layer.weight.quant_type == "nf4"
    assert model.get_base_model().is_activation_checkpointing
    ids = _ids()
    loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    grads = {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
    assert grads and all(g is not None for g in grads.values()) and all("lora_" in n for n in grads)
    trainable, total = parameter_counts(model)
    assert trainable == 8_192 and total == sum(p.numel() for p in _base().parameters()) + trainable


def test_lora_sweep_composes_one_job_per_rank(compose):
    """``python train.py -m +experiment=dpo_beta adapter=lora adapter.r=8,64``: two jobs, each a LoRA dDPO config."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    cli = ["+experiment=dpo_beta", "adapter=lora", "adapter.r=8,64"]
    jobs = BasicSweeper.split_arguments(OverridesParser.create().parse_overrides(cli), max_batch_size=None)[0]
    assert jobs == [[*cli[:2], "adapter.r=8"], [*cli[:2], "adapter.r=64"]]
    for job, r in zip(jobs, (8, 64)):
        cfg = compose(*job)
        assert (cfg.adapter.name, cfg.adapter.r, cfg.adapter.alpha, cfg.adapter.target_modules) == ("lora", r, 16, None)
        assert cfg.objective._target_ == "zephyr.modules.dpo.DPOModule" and cfg.task_name == "dpo_beta"
        check_adapter(cfg)
    assert compose().adapter.name == "none"  # the default: full fine-tuning
    assert compose("adapter=qlora").adapter.quantization == {
        "quant_type": "nf4",
        "double_quant": True,
        "compute_dtype": "bfloat16",
    }


ALL_LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def _pinned(cfg, hardware_devices: int) -> dict:
    from zephyr.scale.plan import launch_plan

    plan = launch_plan(cfg, check=False)  # derives the accumulation from the global batch (GPU presets on a CPU)
    assert int(cfg.hardware.devices) * int(cfg.hardware.get("num_nodes", 1)) == hardware_devices
    return {
        "model": cfg.model.path,
        "lr": cfg.objective.optimizer.lr,
        "optimizer": cfg.objective.optimizer._target_,
        "schedule": cfg.objective.scheduler.name,
        "warmup": cfg.objective.scheduler.warmup_ratio,
        "epochs": cfg.trainer.max_epochs,
        "max_steps": cfg.trainer.max_steps,
        "batch": cfg.data.batch_size,
        "accumulation": plan.accumulate,
        "global_batch": plan.global_batch_size,
        "max_length": cfg.data.max_length,
        "precision": cfg.hardware.precision,
        "gradient_checkpointing": cfg.model.gradient_checkpointing,
    }


def test_sft_qlora_preset_has_the_handbook_values(compose):
    cfg = compose("+experiment=zephyr_7b_sft_qlora")
    assert (cfg.adapter.name, cfg.adapter.r, cfg.adapter.alpha, cfg.adapter.dropout) == ("qlora", 16, 16, 0.05)
    assert list(cfg.adapter.target_modules) == ALL_LINEAR
    assert cfg.adapter.quantization == {"quant_type": "nf4", "double_quant": True, "compute_dtype": "bfloat16"}
    assert cfg.model.dtype == "bfloat16" and cfg.objective._target_ == "zephyr.modules.sft.SFTModule"
    assert _pinned(cfg, 1) == {
        "model": "mistralai/Mistral-7B-v0.1",
        "lr": 2e-4,
        "optimizer": "torch.optim.AdamW",
        "schedule": "cosine",
        "warmup": 0.1,
        "epochs": 1,
        "max_steps": -1,
        "batch": 4,
        "accumulation": 2,
        "global_batch": 8,
        "max_length": 2048,
        "precision": "bf16-mixed",
        "gradient_checkpointing": True,
    }


def test_dpo_qlora_preset_has_the_handbook_values(compose, tmp_path):
    cfg = compose("+experiment=zephyr_7b_dpo_qlora")
    assert (cfg.adapter.name, cfg.adapter.r, cfg.adapter.alpha, cfg.adapter.dropout) == ("qlora", 16, 16, 0.05)
    assert list(cfg.adapter.target_modules) == ALL_LINEAR
    assert (cfg.objective.beta, cfg.objective.loss_type, cfg.data.max_prompt_length) == (0.01, "sigmoid", 512)
    assert _pinned(cfg, 1) == {
        "model": f"{tmp_path}/runs/dsft/model",  # the merged dSFT export
        "lr": 5e-6,
        "optimizer": "torch.optim.AdamW",  # the closest to the handbook's paged AdamW 32-bit (noted in the file)
        "schedule": "cosine",
        "warmup": 0.1,
        "epochs": 1,
        "max_steps": -1,
        "batch": 4,
        "accumulation": 1,
        "global_batch": 4,
        "max_length": 1024,
        "precision": "bf16-mixed",
        "gradient_checkpointing": True,
    }


def test_handbook_full_dpo_preset_beside_the_papers(compose):
    from pathlib import Path

    cfg = compose("+experiment=zephyr_7b_dpo_handbook", "model.path=/ckpt/zephyr-7b-sft-full")
    assert (cfg.adapter.name, cfg.objective.beta, cfg.data.max_prompt_length, cfg.objective.optimizer.weight_decay) == (
        "none",
        0.01,
        512,
        0.0,
    )
    assert cfg.strategy.name == "deepspeed" and int(cfg.strategy.stage) == 3
    assert _pinned(cfg, 8) == {
        "model": "/ckpt/zephyr-7b-sft-full",
        "lr": 5e-7,
        "optimizer": "torch.optim.AdamW",
        "schedule": "cosine",
        "warmup": 0.1,
        "epochs": 1,
        "max_steps": -1,
        "batch": 8,
        "accumulation": 2,
        "global_batch": 128,
        "max_length": 1024,
        "precision": "bf16-mixed",
        "gradient_checkpointing": True,
    }
    text = (Path(__file__).resolve().parents[3] / "conf/experiment/zephyr_7b_dpo_handbook.yaml").read_text()
    assert "HuggingFaceH4/zephyr-7b-beta was trained with the PAPER's settings" in text
    # on one GPU the same global batch comes from accumulation
    cfg = compose("+experiment=zephyr_7b_dpo_handbook", "hardware=gpu1", "strategy=auto")
    assert _pinned(cfg, 1)["accumulation"] == 16
