"""Prefix-shared DPO rows give the same log-probs and gradients as the concatenated layout (within 1e-5).

Pairs of different prompt/completion lengths (one completion of a single token, one batch with padding) go
through a tiny random Mistral twice: as ``collate_pairs`` rows (2B rows, position ids restarting) scored by
``pair_logps``, and as ``collate_pairs_prefix_shared`` rows (B rows, 4-D mask) scored by the same
``pair_logps`` (its prefix-shared branch, ``prefix_shared_logps``).
"""

import pytest
import torch
from torch.testing import assert_close
from transformers import MistralConfig, MistralForCausalLM

from tests.conftest import TINY_CONFIG
from zephyr.data.collate import collate_pairs, collate_pairs_prefix_shared, segment_mask
from zephyr.modules.pair_forward import pair_logps

pytestmark = pytest.mark.unit

ITEMS = [
    {"prompt": [1, 5, 9, 11, 40], "chosen": [7, 8, 9, 2], "rejected": [3, 2], "index": 0},
    {"prompt": [1, 300], "chosen": [17], "rejected": [18, 19, 20, 21, 22, 2], "index": 1},
    {"prompt": [1, 44, 45, 46, 47, 48, 49], "chosen": [50, 51, 2], "rejected": [52, 2], "index": 2},
]


@pytest.fixture(scope="module")
def model():
    cfg = MistralConfig(**{**TINY_CONFIG, "vocab_size": 512, "max_position_embeddings": 256})
    cfg._attn_implementation = "sdpa"
    torch.manual_seed(0)
    return MistralForCausalLM(cfg).float().eval()


def test_layout_of_one_pair():
    b = collate_pairs_prefix_shared([ITEMS[0]], pad_id=0, pad_to_multiple_of=1)
    # row: prompt(5) chosen(4) rejected(2)
    assert b["input_ids"][0].tolist() == [1, 5, 9, 11, 40, 7, 8, 9, 2, 3, 2]
    assert b["position_ids"][0].tolist() == [0, 1, 2, 3, 4, 5, 6, 7, 8, 5, 6]
    assert b["chosen_targets"][0].tolist() == [-100, -100, -100, -100, 7, 8, 9, 2, -100, -100, -100]
    assert b["rejected_targets"][0].tolist() == [-100, -100, -100, -100, 3, -100, -100, -100, -100, 2, -100]
    mask = b["attention_mask"][0, 0]
    assert mask[9].tolist() == [True] * 5 + [False] * 4 + [True, False]  # rejected[0]: prompt + itself
    assert mask[6].tolist() == [True] * 7 + [False] * 4  # chosen[1]: prompt + chosen[:2]
    assert int(b["num_tokens"]) == 11 and int(b["num_pair_tokens"]) == 16


def test_padding_rows_attend_only_to_padding():
    segments = torch.tensor([[0, 1, 2, 3, 3]])
    mask = segment_mask(segments)[0, 0]
    assert mask[3].tolist() == [False, False, False, True, False]
    assert mask[4].tolist() == [False, False, False, True, True]


@pytest.mark.parametrize("average", [False, True])
def test_logps_equal_concatenated_layout(model, average):
    plain = pair_logps(model, collate_pairs(ITEMS, pad_id=0), average=average)
    shared = pair_logps(model, collate_pairs_prefix_shared(ITEMS, pad_id=0), average=average)
    assert_close(shared.logps, plain.logps, atol=1e-5, rtol=0)
    assert shared.token_counts.tolist() == plain.token_counts.tolist() == [4, 1, 3, 2, 6, 2]
    assert_close(shared.logits_sum, plain.logits_sum, atol=1e-3, rtol=1e-5)


def test_gradients_equal_concatenated_layout(model):
    weights = torch.tensor([1.0, -2.0, 0.5, 3.0, -1.0, 0.25])  # a DPO-like signed combination of the logps

    def grads(fn):
        model.zero_grad()
        (fn().logps * weights).sum().backward()
        return {n: p.grad.clone() for n, p in model.named_parameters()}

    g_plain = grads(lambda: pair_logps(model, collate_pairs(ITEMS, pad_id=0)))
    g_shared = grads(lambda: pair_logps(model, collate_pairs_prefix_shared(ITEMS, pad_id=0)))
    for name, g in g_plain.items():
        assert_close(g_shared[name], g, atol=1e-5, rtol=1e-4, msg=lambda m, name=name: f"{name}: {m}")


def test_empty_prompt_is_refused():
    with pytest.raises(ValueError, match="pair 0 \\(index 7\\) has an empty prompt"):
        collate_pairs_prefix_shared([{"prompt": [], "chosen": [1], "rejected": [2], "index": 7}], pad_id=0)
