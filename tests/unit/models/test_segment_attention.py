"""Packed rows attended one sequence at a time give the masked SDPA's numbers, forward and backward.

``model.segment_attention`` (default on) routes packed dSFT batches through per-run causal SDPA calls; the
same model without the run lengths (or with the option off) is transformers' masked SDPA over whole rows.
"""

from __future__ import annotations

import json

import pytest
import torch

from zephyr.models import segment_attention as seg
from zephyr.models.mistral import build_model

pytestmark = pytest.mark.unit

LLAMA_GQA = {
    "model_type": "llama",
    "vocab_size": 128,
    "hidden_size": 64,
    "intermediate_size": 96,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
}


def packed_batch(runs: list[list[int]], vocab: int = 128, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    T = sum(runs[0])
    ids = torch.randint(0, vocab, (len(runs), T), generator=g)
    pos = torch.stack([torch.cat([torch.arange(n) for n in row]) for row in runs])
    return ids, pos


def test_segment_lengths_follow_the_position_restarts():
    _, pos = packed_batch([[3, 4, 1], [8]])
    assert seg.segment_lengths(pos) == ((3, 4, 1), (8,))
    # a run continuing past a restart point is still one run only while positions step by 1
    assert seg.segment_lengths(torch.tensor([[0, 1, 2, 0, 1, 5, 6]])) == ((3, 2, 2),)
    with pytest.raises(ValueError, match=r"position_ids must be \(B, T\)"):
        seg.segment_lengths(torch.arange(4))


@pytest.mark.parametrize(
    "config",
    [LLAMA_GQA, {**LLAMA_GQA, "model_type": "qwen2"}, {**LLAMA_GQA, "model_type": None, "num_key_value_heads": 4}],
    ids=["llama-gqa", "qwen2-gqa", "mistral-mha"],
)
def test_hidden_states_and_gradients_match_the_masked_rows(config):
    config = {k: v for k, v in config.items() if v is not None}
    plain = build_model(config=config, init_seed=0, segment_attention=False)
    split = build_model(config=config, init_seed=0)
    assert plain.config._attn_implementation == "sdpa" and split.config._attn_implementation == seg.NAME
    ids, pos = packed_batch([[5, 9, 2, 8], [24], [1, 1, 22]])
    lengths = seg.segment_lengths(pos)
    a = plain.model(input_ids=ids, position_ids=pos, use_cache=False).last_hidden_state
    b = split.model(input_ids=ids, position_ids=pos, use_cache=False, **{seg.KEYWORD: lengths}).last_hidden_state
    torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5)
    a.square().mean().backward()
    b.square().mean().backward()
    for (name, p), q in zip(plain.named_parameters(), split.parameters()):
        torch.testing.assert_close(q.grad, p.grad, rtol=1e-4, atol=1e-6, msg=name)


def test_a_call_without_run_lengths_is_plain_sdpa():
    plain = build_model(config=LLAMA_GQA, init_seed=0, segment_attention=False)
    split = build_model(config=LLAMA_GQA, init_seed=0)
    ids, pos = packed_batch([[6, 10]])
    with torch.no_grad():
        a = plain(input_ids=ids, position_ids=pos).logits
        b = split(input_ids=ids, position_ids=pos).logits
        torch.testing.assert_close(b, a, rtol=0, atol=0)  # the same SDPA call
        prompt = {"input_ids": ids[:, :5], "attention_mask": torch.ones(1, 5, dtype=torch.long)}
        out = split.generate(**prompt, max_new_tokens=4, do_sample=False)
        ref = plain.generate(**prompt, max_new_tokens=4, do_sample=False)
    assert torch.equal(out, ref)  # generation (KV cache, q_len 1) is untouched


def test_other_attention_implementations_are_left_alone():
    eager = build_model(config=LLAMA_GQA, init_seed=0, attn_implementation="eager")
    assert eager.config._attn_implementation == "eager" and not seg.uses_segment_attention(eager)


def test_the_sft_module_passes_run_lengths_and_matches_the_masked_loss():
    from zephyr.modules.sft import SFTModule

    ids, pos = packed_batch([[7, 9, 8], [12, 12]])
    labels = ids.clone()
    labels[:, ::5] = -100
    batch = {"input_ids": ids, "position_ids": pos, "labels": labels}
    losses = []
    calls = []
    for on in (False, True):
        model = build_model(config=LLAMA_GQA, init_seed=0, segment_attention=on)
        module = SFTModule(model, optimizer=torch.optim.AdamW)
        attn = module.model.model.layers[0].self_attn
        hook = attn.register_forward_pre_hook(lambda m, a, kw: calls.append(seg.KEYWORD in kw), with_kwargs=True)
        losses.append(module.loss(batch)[0])
        hook.remove()
    assert calls == [False, True]
    torch.testing.assert_close(losses[1], losses[0], rtol=1e-6, atol=1e-6)


def test_the_export_config_names_no_attention_implementation(tmp_path):
    from zephyr.models.export import export_hf
    from zephyr.tokenizer import load_tokenizer

    out = export_hf(build_model(config=LLAMA_GQA, init_seed=0), load_tokenizer(), tmp_path / "m")
    assert not [k for k in json.loads((out / "config.json").read_text()) if "attn_implementation" in k]


def test_trainer_compile_turns_it_off():
    from omegaconf import OmegaConf

    from zephyr.scale.plan import compile_model

    model = build_model(config=LLAMA_GQA, init_seed=0)
    assert seg.uses_segment_attention(model)
    compile_model(model, OmegaConf.create({"trainer": {"compile": False}}))
    assert seg.uses_segment_attention(model)
    compile_model(model, OmegaConf.create({"trainer": {"compile": True}}))  # compiles lazily: no build here
    assert model.config._attn_implementation == "sdpa" and not seg.drop_segment_attention(model)
