"""Packed conversations do not see each other: their logits equal the unpacked logits."""

import torch

from zephyr.data.collate import collate_rows
from zephyr.data.sft import pack_best_fit, tokenize_conversation
from zephyr.modules.sft import SFTModule

CONVS = [
    [{"role": "user", "content": "What is 12 + 30?"}, {"role": "assistant", "content": "12 + 30 = 42."}],
    [{"role": "user", "content": "Sort 3, 1, 2."}, {"role": "assistant", "content": "1, 2, 3."}],
    [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello! How can I help?"}],
]


def _logits(model, batch):
    return model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False).logits


def test_packed_logits_equal_unpacked_logits(tokenizer, tiny_model):
    examples = [tokenize_conversation(tokenizer, c) for c in CONVS]
    seqs = [(e.input_ids, e.labels) for e in examples]
    packed = collate_rows([seqs], pad_id=2, pad_to_multiple_of=8)
    with torch.no_grad():
        packed_logits = _logits(tiny_model, packed)[0]
        at = 0
        for ids, _ in seqs:
            alone = collate_rows([[(ids, ids)]], pad_id=2, pad_to_multiple_of=1)
            torch.testing.assert_close(
                packed_logits[at : at + len(ids)], _logits(tiny_model, alone)[0], atol=1e-5, rtol=1e-5
            )
            at += len(ids)


def test_padding_tail_does_not_change_real_tokens(tokenizer, tiny_model):
    e = tokenize_conversation(tokenizer, CONVS[0])
    short = collate_rows([[(e.input_ids, e.labels)]], pad_id=2, pad_to_multiple_of=1)
    padded = collate_rows([[(e.input_ids, e.labels)]], pad_id=2, pad_to_multiple_of=64)
    with torch.no_grad():
        torch.testing.assert_close(
            _logits(tiny_model, padded)[0, : len(e)], _logits(tiny_model, short)[0], atol=1e-5, rtol=1e-5
        )


def test_packed_loss_equals_token_weighted_unpacked_loss(tokenizer, tiny_model):
    examples = [tokenize_conversation(tokenizer, c) for c in CONVS]
    bins = pack_best_fit([len(e) for e in examples], 256)
    assert len(bins) == 1
    module = SFTModule(tiny_model, optimizer=torch.optim.AdamW)
    packed = collate_rows([[(e.input_ids, e.labels) for e in examples]], pad_id=2)
    loose = collate_rows([[(e.input_ids, e.labels)] for e in examples], pad_id=2)
    with torch.no_grad():
        lp, n_p = module.loss(packed)[:2]
        ll, n_l = module.loss(loose)[:2]
    assert int(n_p) == int(n_l) > 0
    torch.testing.assert_close(lp, ll, atol=1e-5, rtol=1e-5)


def test_chunked_loss_equals_full_logits_loss(tokenizer, tiny_model):
    examples = [tokenize_conversation(tokenizer, c) for c in CONVS]
    batch = collate_rows([[(e.input_ids, e.labels)] for e in examples], pad_id=2)
    chunked = SFTModule(tiny_model, optimizer=torch.optim.AdamW, chunked_loss=True, loss_chunk_size=5)
    plain = SFTModule(tiny_model, optimizer=torch.optim.AdamW, chunked_loss=False)
    a, _ = chunked.loss(batch)[:2]
    a.backward()
    grad_a = tiny_model.lm_head.weight.grad.clone()
    tiny_model.zero_grad()
    b, _ = plain.loss(batch)[:2]
    b.backward()
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(grad_a, tiny_model.lm_head.weight.grad, atol=1e-6, rtol=1e-4)
