"""dDPO with LoRA adapters: the reference is the policy with its adapters off, no copy, keyed by the base weights.

A tiny Mistral wrapped by ``peft.get_peft_model`` (r=4 on q/v): the reference log-probs equal the unwrapped base
model's, live mode builds no second copy of any parameter, the cache fill loads nothing, and the cache key's
weights part is the base fingerprint (the same as the plain model's, so full and LoRA runs share a cache).
"""

from __future__ import annotations

import gc
from functools import partial

import pytest
import pytorch_lightning as pl
import torch

from tests.conftest import TINY_CONFIG
from tests.unit.dpo.helpers_dpo import make_datamodule, pref_rows, write_jsonl
from zephyr.modules.pair_forward import pair_logps
from zephyr.modules.reference import Reference, state_dict_fingerprint

peft = pytest.importorskip("peft")
pytestmark = [
    # peft reads transformers' deprecated alias (not ours to fix; zephyr.models.adapters silences it the same way)
    pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing.*:FutureWarning"),
]


@pytest.fixture(scope="module")
def tok():
    from zephyr.tokenizer import load_tokenizer

    return load_tokenizer()


@pytest.fixture
def dm(tok, tmp_path):
    return make_datamodule(tok, write_jsonl(tmp_path / "prefs.jsonl", pref_rows(8)), eval_size=2)


def lora_policy(batch):
    """``(peft model, base log-probs of batch before wrapping, base fingerprint)``; the adapters change outputs."""
    from zephyr.models.mistral import build_model

    base = build_model(config=TINY_CONFIG, init_seed=0).eval()
    with torch.no_grad():
        want = pair_logps(base, batch).logps
    fingerprint = state_dict_fingerprint(base)
    model = peft.get_peft_model(base, peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    with torch.no_grad():  # lora_B starts at 0 (adapters = identity); move it so "adapters off" is observable
        torch.manual_seed(1)
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0.0, 0.5)
    return model, want, fingerprint


def dpo(model, **reference):
    from zephyr.modules.dpo import DPOModule

    # no model= for the reference: building a copy would raise, so passing proves none is built
    return DPOModule(
        model,
        partial(torch.optim.AdamW, lr=1e-2),
        {"name": "constant", "warmup_ratio": 0.0},
        reference=partial(Reference, batch_size=4, **reference),
    )


def parameters_alive() -> tuple[int, int]:
    """``(tensors, elements)`` of every ``nn.Parameter`` alive in the process (a reference copy would add some)."""
    gc.collect()
    params = [o for o in gc.get_objects() if type(o) is torch.nn.Parameter]
    return len(params), sum(p.numel() for p in params)


def test_live_reference_is_the_base_with_adapters_off_and_no_copy(dm):
    batch = dm.collate(dm.train_items[:4])
    model, base_logps, _ = lora_policy(batch)
    model.train()
    before_ptrs = {p.data_ptr() for p in model.parameters()}
    before = parameters_alive()
    module = dpo(model, mode="live")
    module.prepare_reference(dm)
    assert parameters_alive() == before  # zero extra parameter tensors
    ref = module.reference.model
    assert ref.model is model and not module.reference.model_loaded
    assert {p.data_ptr() for p in ref.model.parameters()} == before_ptrs
    chosen, rejected = module.reference.logps(batch, "train")
    torch.testing.assert_close(torch.cat([chosen, rejected]), base_logps, atol=1e-6, rtol=1e-6)
    with torch.no_grad():
        adapted = pair_logps(model.eval(), batch).logps
    assert (adapted - base_logps).abs().max() > 1e-2  # the adapters are on for the policy
    model.train()
    module.reference.logps(batch, "train")
    assert model.training  # the policy's mode is restored after the reference forward
    assert any(p.requires_grad for p in model.parameters())  # and it is not frozen


def test_lora_dpo_trains_adapters_only_and_the_reference_stays_the_base(dm):
    model, _, _ = lora_policy(dm.collate(dm.train_items[:4]))
    base = {n: p.detach().clone() for n, p in model.named_parameters() if "lora_" not in n}
    module = dpo(model, mode="live")
    trainer = pl.Trainer(
        max_steps=2,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
        accelerator="cpu",
    )
    trainer.fit(module, datamodule=dm)
    assert module.reference_forwards == 2 and not module.reference.model_loaded
    assert all(torch.equal(p, base[n]) for n, p in model.named_parameters() if "lora_" not in n)
    batch = dm.collate(dm.train_items[:4])
    from zephyr.models.mistral import build_model

    fresh = build_model(config=TINY_CONFIG, init_seed=0).eval()
    with torch.no_grad():
        want = pair_logps(fresh, batch).logps
    chosen, rejected = module.reference.logps(batch, "train")
    torch.testing.assert_close(torch.cat([chosen, rejected]), want, atol=1e-6, rtol=1e-6)


def test_cache_fill_uses_the_policy_and_is_keyed_by_the_base_weights(dm, tmp_path):
    batch = dm.collate(dm.train_items)
    model, base_logps, base_fp = lora_policy(batch)
    module = dpo(model, mode="cache", cache_dir=str(tmp_path / "cache"))
    assert module.reference.key_parts("train", dm)["weights"] == base_fp == state_dict_fingerprint(model)
    before = parameters_alive()
    module.prepare_reference(dm)
    assert parameters_alive() == before and not module.reference.model_loaded
    assert module.reference_forwards == 2 + 1  # 6 train pairs / 4 -> 2 batches, 1 eval batch
    n = len(dm.train_items)
    table = module.reference.tables["train"]
    torch.testing.assert_close(torch.cat([table["chosen"], table["rejected"]]), base_logps[: 2 * n], atol=1e-6, rtol=0)
    assert len(list((tmp_path / "cache").glob("ref_logps-*.safetensors"))) == 2
