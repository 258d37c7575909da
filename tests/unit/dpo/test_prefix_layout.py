"""The prefix-shared DPO layout (``data.layout=prefix_shared``) against the concatenated one, through DPOModule.

Same pairs, same weights: the loss, every logged metric and every gradient must agree (1e-5 abs / 1e-4 rel),
reference log-probs cached in one layout are reused by the other (the cache key leaves the layout out on
purpose, see :mod:`zephyr.modules.reference`), and FlashAttention-2 falls back to ``concat``.
"""

from __future__ import annotations

import logging

import pytest
import torch

from tests.unit.dpo.helpers_dpo import export_tiny, make_datamodule, make_module, pref_rows, write_jsonl
from zephyr.modules.pair_forward import pair_logps
from zephyr.tokenizer import load_tokenizer

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer()


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return export_tiny(tmp_path_factory.mktemp("dsft") / "model")


@pytest.fixture
def data(tmp_path):
    return write_jsonl(tmp_path / "prefs.jsonl", pref_rows(8))


def _step(ckpt, tok, data, layout, **kwargs):
    """One DPO training step (live reference, policy moved off it): loss, metrics, gradients by name."""
    dm = make_datamodule(tok, data, layout=layout)
    module, _ = make_module(ckpt, tok, dm, mode="live", beta=0.5, **kwargs)
    module.prepare_reference(dm)
    with torch.no_grad():  # identical perturbation in both layouts, so rewards and margins are not zero
        torch.manual_seed(0)
        for p in module.model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    batch = dm.collate(dm.train_items[:4])
    loss, metrics = module.compute(batch, "train")
    loss.backward()
    grads = {n: p.grad.detach().clone() for n, p in module.model.named_parameters() if p.grad is not None}
    return loss.detach(), metrics, grads, batch


@pytest.mark.parametrize(
    "kwargs", [{"loss_type": "sigmoid"}, {"loss_type": "ipo"}, {"loss_type": "sigmoid", "rpo_alpha": 1.0}]
)
def test_training_step_identical_in_both_layouts(ckpt, tok, data, kwargs):
    loss_c, m_c, g_c, batch_c = _step(ckpt, tok, data, "concat", **kwargs)
    loss_p, m_p, g_p, batch_p = _step(ckpt, tok, data, "prefix_shared", **kwargs)
    assert batch_c["input_ids"].shape[0] == 8 and batch_p["input_ids"].shape[0] == 4  # 2B rows vs B rows
    assert "chosen_targets" in batch_p and "labels" not in batch_p
    torch.testing.assert_close(loss_p, loss_c, atol=1e-5, rtol=1e-4)
    assert set(m_p) == set(m_c)
    for name in m_c:
        torch.testing.assert_close(m_p[name], m_c[name], atol=1e-5, rtol=1e-4, msg=name)
    assert abs(m_c["rewards/margins"].item()) > 1e-3  # the comparison is not between zeros
    assert set(g_p) == set(g_c) and len(g_c) > 10
    for name in g_c:
        assert g_c[name].abs().max() > 0 or name.endswith("norm.weight"), name
        torch.testing.assert_close(g_p[name], g_c[name], atol=1e-5, rtol=1e-4, msg=name)


def test_num_tokens_counts_pair_tokens_in_both_layouts(tok, data):
    dm_c = make_datamodule(tok, data, layout="concat")
    dm_p = make_datamodule(tok, data, layout="prefix_shared")
    items = dm_c.train_items[:3]
    batch_c, batch_p = dm_c.collate(items), dm_p.collate(items)
    want = sum(2 * len(it["prompt"]) + len(it["chosen"]) + len(it["rejected"]) for it in items)
    assert int(batch_c["num_tokens"]) == want == int(batch_p["num_tokens"])
    rows = sum(len(it["prompt"]) + len(it["chosen"]) + len(it["rejected"]) for it in items)
    assert int(batch_p["num_row_tokens"]) == rows < want
    assert batch_p["attention_mask"].shape == (3, 1, batch_p["input_ids"].shape[1], batch_p["input_ids"].shape[1])


@pytest.mark.parametrize("fill,use", [("concat", "prefix_shared"), ("prefix_shared", "concat")])
def test_reference_cache_reused_across_layouts(ckpt, tok, data, tmp_path, fill, use):
    cache = tmp_path / "ref_cache"
    dm_fill = make_datamodule(tok, data, layout=fill)
    filler, loads = make_module(ckpt, tok, dm_fill, cache_dir=cache)
    filler.prepare_reference(dm_fill)
    assert loads[0] == 1 and len(list(cache.glob("ref_logps-*.safetensors"))) == 1

    dm_use = make_datamodule(tok, data, layout=use)
    user, loads = make_module(ckpt, tok, dm_use, cache_dir=cache)
    user.prepare_reference(dm_use)
    assert loads[0] == 0 and user.reference.model is None  # cache hit: no reference model built
    torch.testing.assert_close(user.reference.tables["train"]["chosen"], filler.reference.tables["train"]["chosen"])

    # the cached values are what the other layout computes itself (so reusing them is sound)
    model = user.model.eval()
    batch = dm_use.collate(dm_use.train_items)
    with torch.no_grad():
        own = pair_logps(model, batch).logps
    n = len(dm_use.train_items)
    torch.testing.assert_close(own[:n], filler.reference.tables["train"]["chosen"], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(own[n:], filler.reference.tables["train"]["rejected"], atol=1e-5, rtol=1e-5)


def test_flash_attention_falls_back_to_concat(ckpt, tok, data, caplog):
    dm = make_datamodule(tok, data, layout="prefix_shared")
    from functools import partial

    from zephyr.models.mistral import build_model
    from zephyr.modules.dpo import DPOModule
    from zephyr.modules.reference import Reference

    model = build_model(str(ckpt))
    model.config._attn_implementation = "flash_attention_2"  # what resolve_attn_implementation gives on a GPU
    module = DPOModule(
        model,
        partial(torch.optim.AdamW, lr=1e-3),
        reference=partial(Reference, mode="live", model=lambda: build_model(str(ckpt))),
    )
    with caplog.at_level(logging.WARNING, logger="zephyr.modules.pair_forward"):
        module.prepare_reference(dm)  # the module switches the data's layout before any loader is built
    assert dm.layout == "concat" and "labels" in dm.collate(dm.train_items[:2])
    assert sum("flash_attention_2" in r.getMessage() for r in caplog.records) == 1

    shared = make_datamodule(tok, data, layout="prefix_shared")
    with pytest.raises(ValueError, match="data.layout=concat"):
        pair_logps(model, shared.collate(shared.train_items[:2]))


def test_unknown_layout_is_rejected(tok, data):
    with pytest.raises(ValueError, match="data.layout='rows' must be one of concat, prefix_shared"):
        make_datamodule(tok, data, layout="rows")
