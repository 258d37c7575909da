"""KTOModule: the loss against hand-built inputs, the reference cache (warm = zero forwards) and live mode, configs."""

from __future__ import annotations

from functools import partial
from pathlib import Path

import pytest
import torch

from tests.conftest import write_jsonl
from tests.unit.dpo.helpers_dpo import export_tiny, pref_rows
from zephyr.feedback.kto import unpair


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from zephyr.data.kto import KTODataModule
    from zephyr.tokenizer import load_tokenizer

    tmp = tmp_path_factory.mktemp("kto")
    ckpt = export_tiny(tmp / "dsft")
    path = write_jsonl(tmp / "kto.jsonl", unpair(pref_rows(6))[:-1])  # 6 desirable, 5 undesirable rows
    dm = KTODataModule(
        load_tokenizer(), path=str(path), eval_size=2, batch_size=4, max_length=128, max_prompt_length=64, seed=0
    )
    dm.setup("fit")
    return ckpt, dm


def make_module(ckpt: Path, *, mode="cache", **kwargs):
    from zephyr.models.mistral import build_model
    from zephyr.modules.kto import KTOModule
    from zephyr.modules.reference import Reference

    loads = [0]

    def load():
        loads[0] += 1
        return build_model(str(ckpt))

    reference = partial(Reference, mode=mode, batch_size=4, model=load, model_path=str(ckpt), root_dir=ckpt.parent)
    module = KTOModule(
        build_model(str(ckpt)), partial(torch.optim.AdamW, lr=1e-3), {"name": "constant", "warmup_ratio": 0.0},
        reference=reference, **kwargs,
    )  # fmt: skip
    return module, loads


def test_reference_cache_covers_completions_and_kl_pairs_and_a_warm_cache_runs_nothing(world):
    ckpt, dm = world
    first, loads = make_module(ckpt)
    first.prepare_reference(dm)
    assert loads[0] == 1 and first.reference_forwards == 3 + 1  # 9 train rows / 4 + 2 eval rows / 4
    table = first.reference.tables["train"]
    assert table["chosen"].shape == table["rejected"].shape == (len(dm.train_items),)
    second, loads = make_module(ckpt)
    second.prepare_reference(dm)
    assert loads[0] == 0 and second.reference_forwards == 0 and second.reference.model is None
    assert torch.equal(second.reference.tables["train"]["rejected"], table["rejected"])
    # the cached values are the live reference's: completions, and each row's mismatched KL completion
    live, _ = make_module(ckpt, mode="live")
    live.prepare_reference(dm)
    batch = dm.collate(dm.train_items[:4])
    ref, ref_kl = live.reference.logps(batch, "train")
    assert live.reference_forwards == 1
    torch.testing.assert_close(ref, table["chosen"][:4], atol=1e-4, rtol=0)
    torch.testing.assert_close(ref_kl, table["rejected"][:4], atol=1e-4, rtol=0)
    assert not torch.allclose(ref, ref_kl)  # the KL completions are other rows' completions


def test_loss_and_trl_metrics_match_kto_loss_on_the_same_log_probs(world):
    from zephyr.modules.pair_forward import pair_logps
    from zephyr.objectives.kto import kto_loss

    ckpt, dm = world
    module, _ = make_module(ckpt, beta=0.5, desirable_weight=2.0, undesirable_weight=1.0)
    module.prepare_reference(dm)
    batch = dm.collate(dm.train_items[:4])
    loss, metrics = module.compute(batch, "train")
    label = batch["label"]
    n_d = int(label.sum())
    assert 0 < n_d < 4
    # step 0: policy = reference, so every row loses 1 - sigmoid(0) = 0.5, times its weight
    assert loss.item() == pytest.approx((2.0 * 0.5 * n_d + 0.5 * (4 - n_d)) / 4, abs=1e-5)
    assert metrics["kl"][0].item() == pytest.approx(0.0, abs=1e-5)
    assert metrics["rewards/chosen"][1] == n_d and metrics["rewards/rejected"][1] == 4 - n_d
    assert set(metrics) == {
        "loss", "kl", "rewards/chosen", "rewards/rejected", "rewards/margins",
        "logps/chosen", "logps/rejected", "logits/chosen", "logits/rejected",
    }  # fmt: skip
    # after a step the policy has moved: the module's loss is kto_loss on its own forward and the cached reference
    opt = torch.optim.SGD(module.model.parameters(), lr=0.5)
    loss.backward()
    opt.step()
    loss, metrics = module.compute(batch, "train")
    with torch.no_grad():
        out = pair_logps(module.model, batch)
    table = module.reference.tables["train"]
    idx = batch["index"]
    ref, ref_kl = table["chosen"][idx], table["rejected"][idx]
    want = kto_loss(
        out.logps[:4][label], out.logps[:4][~label], ref[label], ref[~label], beta=0.5,
        policy_kl_logps=out.logps[4:], ref_kl_logps=ref_kl, desirable_weight=2.0,
    )  # fmt: skip
    assert loss.item() == pytest.approx(want.losses.mean().item(), abs=1e-5)
    assert metrics["kl"][0].item() == pytest.approx(want.kl.item(), abs=1e-5) and want.kl.item() >= 0
    assert metrics["rewards/chosen"][0].item() == pytest.approx(want.chosen_rewards.mean().item(), abs=1e-5)
    assert metrics["rewards/chosen"][0].item() != pytest.approx(0.0, abs=1e-4)


def test_bad_objective_values_are_refused(world):
    ckpt, _ = world
    for kwargs, key in (({"desirable_weight": 0.0}, "desirable_weight"), ({"loss_type": "sigmoid"}, "loss_type")):
        with pytest.raises(ValueError, match=f"objective.{key}="):
            make_module(ckpt, **kwargs)


def test_objective_kto_brings_kto_data_and_a_mismatch_is_refused(compose):
    from zephyr.errors import ConfigError
    from zephyr.run import check_objective_data

    cfg = compose("objective=kto")
    assert cfg.data._target_ == "zephyr.data.kto.KTODataModule"
    assert cfg.data.toy._target_ == "zephyr.toy.pairs.unpaired_rows"
    check_objective_data(cfg)
    assert compose("objective=kto", "data=local_kto", "data.path=x.jsonl").data.path == "x.jsonl"
    assert compose("objective=kto", "data=kto_mix").data.name == "trl-lib/kto-mix-14k"
    with pytest.raises(ConfigError, match="KTOModule trains on unpaired rows .* use data=toy_kto"):
        check_objective_data(compose("objective=kto", "data=toy_prefs"))
    with pytest.raises(ConfigError, match="DPOModule trains on preference rows .* use data=toy_prefs"):
        check_objective_data(compose("objective=dpo", "data=toy_kto"))
