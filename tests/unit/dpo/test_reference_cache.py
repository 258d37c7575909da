"""Reference log-prob cache: a hit runs zero reference forwards and gives the same loss; every key part invalidates."""

from __future__ import annotations

import threading

import pytest
import torch

from tests.unit.dpo.helpers_dpo import export_tiny, make_datamodule, make_module, pref_row, pref_rows, write_jsonl
from zephyr.modules.reference import RefLogpsCache, cache_key, checkpoint_fingerprint, state_dict_fingerprint


@pytest.fixture(scope="module")
def tok():
    from zephyr.tokenizer import load_tokenizer

    return load_tokenizer()


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return export_tiny(tmp_path_factory.mktemp("dsft") / "model")


@pytest.fixture
def data(tmp_path):
    return write_jsonl(tmp_path / "prefs.jsonl", pref_rows(8))


def test_cold_fills_then_warm_skips_the_reference_entirely(ckpt, tok, data, tmp_path):
    dm = make_datamodule(tok, data, eval_size=2)
    cold, cold_loads = make_module(ckpt, tok, dm, cache_dir=tmp_path / "cache")
    cold.prepare_reference(dm)
    assert cold_loads[0] == 1 and cold.reference_forwards == 2 + 1  # 6 train pairs / 4 -> 2 batches, 1 eval batch
    assert len(list((tmp_path / "cache").glob("ref_logps-*.safetensors"))) == 2  # train and eval
    batch = dm.collate(dm.train_items[:4])
    with torch.no_grad():
        cold.model.get_output_embeddings().weight.mul_(1.3)  # a policy that moved: the loss is not log 2
        cold_loss, cold_m = cold.compute(batch, "train")

    warm, warm_loads = make_module(ckpt, tok, dm, cache_dir=tmp_path / "cache")
    warm.prepare_reference(dm)
    assert warm_loads[0] == 0 and not warm.reference.model_loaded and warm.reference.model is None
    with torch.no_grad():
        warm.model.get_output_embeddings().weight.mul_(1.3)
        warm_loss, warm_m = warm.compute(batch, "train")
        warm.compute(dm.collate(dm.eval_items), "eval")
    assert warm.reference_forwards == 0
    assert warm_loss.item() == cold_loss.item()
    assert warm_m["rewards/chosen"].item() == cold_m["rewards/chosen"].item()

    live, _ = make_module(ckpt, tok, dm, mode="live")
    live.prepare_reference(dm)
    with torch.no_grad():
        live.model.get_output_embeddings().weight.mul_(1.3)
        live_loss, _ = live.compute(batch, "train")
    assert live_loss.item() == pytest.approx(cold_loss.item(), abs=1e-6)  # cached = live reference values


def key_for(ckpt, tok, dm, **kwargs) -> str:
    """The train-split cache key of a DPOModule built like :func:`make_module` over the pairs ``dm``."""
    return cache_key(make_module(ckpt, tok, dm, **kwargs)[0].reference.key_parts("train", dm))


def test_every_key_part_invalidates(ckpt, tok, data, tmp_path):
    base_dm = make_datamodule(tok, data)
    base = key_for(ckpt, tok, base_dm)
    assert base == key_for(ckpt, tok, make_datamodule(tok, data))  # deterministic

    other_ckpt = export_tiny(tmp_path / "other", seed=1)
    changed = {
        "weights": key_for(other_ckpt, tok, base_dm),
        "data": key_for(
            ckpt,
            tok,
            make_datamodule(
                tok, write_jsonl(tmp_path / "other.jsonl", pref_rows(7) + [pref_row("Add 1 and 1.", "2.", "3.")])
            ),
        ),
        "max_length": key_for(ckpt, tok, make_datamodule(tok, data, max_length=96)),
        "max_prompt_length": key_for(ckpt, tok, make_datamodule(tok, data, max_prompt_length=48)),
        "averaging (ipo)": key_for(ckpt, tok, base_dm, loss_type="ipo"),
    }
    from zephyr.tokenizer import load_tokenizer

    tok2 = load_tokenizer()
    tok2.chat_template = tok2.chat_template.replace("<|assistant|>", "<|bot|>")
    same_pairs = make_datamodule(tok, data)
    same_pairs.tokenizer = tok2  # the tokenizer alone changes (the tokenised pairs stay the same)
    changed["tokenizer"] = key_for(ckpt, tok2, same_pairs)
    for part, key in changed.items():
        assert key != base, f"changing {part} kept the cache key"
    assert len(set(changed.values())) == len(changed)
    # same-shape beta/lr changes (a sweep) share the cache
    assert key_for(ckpt, tok, base_dm, beta=0.5) == base


def test_weight_change_means_recompute(ckpt, tok, data, tmp_path):
    dm = make_datamodule(tok, data)
    first, _ = make_module(ckpt, tok, dm, cache_dir=tmp_path / "c")
    first.prepare_reference(dm)
    other, loads = make_module(export_tiny(tmp_path / "other", seed=2), tok, dm, cache_dir=tmp_path / "c")
    other.prepare_reference(dm)
    assert loads[0] == 1 and other.reference_forwards > 0
    assert not torch.equal(first.reference.tables["train"]["chosen"], other.reference.tables["train"]["chosen"])


def test_cache_file_with_wrong_key_or_garbage_is_a_miss(tmp_path):
    cache = RefLogpsCache(tmp_path)
    t = {"chosen": torch.tensor([-1.0, -2.0]), "rejected": torch.tensor([-3.0, -4.0])}
    key = "a" * 64
    cache.save(key, t, {"why": "test"})
    assert torch.equal(cache.load(key)["rejected"], t["rejected"])
    other = "a" * 32 + "b" * 32  # same file name (first 32 hex digits), different key
    assert cache.load(other) is None
    cache.path(key).write_bytes(b"not a safetensors file")
    assert cache.load(key) is None


def test_concurrent_writers_leave_one_complete_file(tmp_path):
    cache = RefLogpsCache(tmp_path)
    key = "c" * 64
    t = {"chosen": torch.arange(10000.0), "rejected": -torch.arange(10000.0)}
    threads = [threading.Thread(target=cache.save, args=(key, t, {})) for _ in range(6)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert torch.equal(cache.load(key)["chosen"], t["chosen"])
    assert [p.name for p in tmp_path.iterdir()] == [cache.path(key).name]  # no temp files left behind


def test_checkpoint_fingerprint_is_memoised_and_tracks_file_changes(tmp_path):
    ckpt = export_tiny(tmp_path / "m")
    memo = tmp_path / "memo"
    fp = checkpoint_fingerprint(ckpt, memo_dir=memo)
    assert (memo / "fingerprints.json").is_file() and checkpoint_fingerprint(ckpt, memo_dir=memo) == fp
    export_tiny(tmp_path / "m", seed=5)  # rewritten weights: new size/mtime stamp, new hash
    assert checkpoint_fingerprint(ckpt, memo_dir=memo) != fp


def test_state_dict_fingerprint_sees_one_changed_weight():
    from tests.unit.dpo.helpers_dpo import TINY
    from zephyr.models.mistral import build_model

    m = build_model(config=TINY, init_seed=0)
    fp = state_dict_fingerprint(m)
    assert state_dict_fingerprint(build_model(config=TINY, init_seed=0)) == fp
    with torch.no_grad():
        m.model.norm.weight[0] += 1e-3
    assert state_dict_fingerprint(m) != fp
