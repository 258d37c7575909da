"""Completion log-probs: hand-worked values, masking, shapes, and the hidden-state route vs full logits."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch.testing import assert_close

from zephyr.objectives.logprobs import (
    completion_logits_sum,
    completion_logps,
    masked_logits_mean,
    token_logps_from_hidden,
)

pytestmark = pytest.mark.unit
IGNORE = -100


def _hand_batch():
    """Two rows, T=4, V=3.

    Row 0: every position's logits are log([1, 2, 5]) so p = [1/8, 2/8, 5/8]. labels = [9, 1, 2, IGNORE]
    (the first label is never scored: nothing predicts it), so after the shift position 0 predicts 1 and
    position 1 predicts 2: sum = log(2/8) + log(5/8) = log(10/64), mean = log(10/64)/2.
    Row 1: all labels ignored (a padding-only row): sum 0 and mean 0, not NaN.
    """
    logits = torch.log(torch.tensor([1.0, 2.0, 5.0])).expand(2, 4, 3).clone()
    labels = torch.tensor([[9, 1, 2, IGNORE], [IGNORE] * 4])
    return logits, labels


def test_completion_logps_hand_worked_sum_and_mean():
    logits, labels = _hand_batch()
    assert_close(completion_logps(logits, labels), torch.tensor([math.log(10 / 64), 0.0]))
    assert_close(completion_logps(logits, labels, average=True), torch.tensor([math.log(10 / 64) / 2, 0.0]))


def test_completion_logps_uniform_logits_give_minus_log_v_per_token():
    logits = torch.zeros(1, 5, 7)
    labels = torch.tensor([[IGNORE, IGNORE, 3, 4, 5]])  # 3 counted tokens after the shift
    assert_close(completion_logps(logits, labels), torch.tensor([-3 * math.log(7)]))


def test_completion_logps_matches_cross_entropy_and_is_fp32():
    torch.manual_seed(0)
    logits = torch.randn(3, 6, 11, dtype=torch.bfloat16)
    labels = torch.randint(0, 11, (3, 6))
    labels[0, :3] = IGNORE
    out = completion_logps(logits, labels)
    assert out.dtype == torch.float32
    ce = F.cross_entropy(logits[:, :-1].float().reshape(-1, 11), labels[:, 1:].reshape(-1), reduction="none")
    expected = -(ce.view(3, 5)).sum(-1)
    assert_close(out, expected)


def test_completion_logps_shape_mismatch_names_both_shapes():
    with pytest.raises(ValueError, match=r"logits \(2, 4, 3\).*labels \(2, 5\)"):
        completion_logps(torch.zeros(2, 4, 3), torch.zeros(2, 5, dtype=torch.long))
    with pytest.raises(ValueError, match="shapes do not match"):
        completion_logps(torch.zeros(2, 4), torch.zeros(2, 4, dtype=torch.long))


def test_completion_logps_gradient_is_softmax_minus_onehot():
    """d(log p_y)/d logits = onehot(y) - softmax; at logits log([1,2,5]) and y=2: [-1/8, -2/8, 3/8]."""
    logits, labels = _hand_batch()
    logits.requires_grad_(True)
    completion_logps(logits, labels).sum().backward()
    assert_close(logits.grad[0, 1], torch.tensor([-1 / 8, -2 / 8, 3 / 8]))
    assert_close(logits.grad[0, 2], torch.zeros(3))  # predicts an ignored label
    assert_close(logits.grad[1], torch.zeros(4, 3))  # padding-only row


def test_completion_logits_sum_is_trl_v012_masked_mean():
    torch.manual_seed(1)
    logits = torch.randn(2, 5, 4)
    labels = torch.tensor([[IGNORE, IGNORE, 1, 2, 3], [IGNORE, 0, 1, IGNORE, IGNORE]])
    sums = completion_logits_sum(logits, labels)
    counts = (labels[:, 1:] != IGNORE).sum(-1)
    trl = logits[:, :-1][labels[:, 1:] != IGNORE].mean()  # TRL v0.12 logits/chosen
    assert_close(masked_logits_mean(sums, counts, vocab_size=4), trl)
    assert_close(masked_logits_mean(torch.zeros(2), torch.zeros(2, dtype=torch.long), 4), torch.tensor(0.0))


def _random_case(seed=0, with_bias=False):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(3, 9, 16, generator=g, requires_grad=True)
    weight = (0.3 * torch.randn(50, 16, generator=g)).requires_grad_(True)
    bias = torch.randn(50, generator=g).requires_grad_(True) if with_bias else None
    labels = torch.randint(0, 50, (3, 9), generator=g)
    labels[0, :4] = IGNORE  # prompt
    labels[1, 6:] = IGNORE  # right padding
    labels[2, :] = IGNORE  # padding-only row
    return hidden, weight, bias, labels


@pytest.mark.parametrize("chunk_size", [1, 4, 1024])
@pytest.mark.parametrize("average", [False, True])
def test_hidden_route_equals_full_logits_values_and_gradients(chunk_size, average):
    hidden, weight, _, labels = _random_case()
    full = completion_logps(hidden @ weight.T, labels, average=average)
    g_hidden_full, g_weight_full = torch.autograd.grad((full * torch.tensor([1.0, -2.0, 3.0])).sum(), [hidden, weight])

    lean = token_logps_from_hidden(hidden, weight, labels, chunk_size=chunk_size, average=average)
    g_hidden, g_weight = torch.autograd.grad((lean.logps * torch.tensor([1.0, -2.0, 3.0])).sum(), [hidden, weight])

    assert_close(lean.logps, full, atol=1e-5, rtol=1e-5)
    assert_close(g_hidden, g_hidden_full, atol=1e-5, rtol=1e-5)
    assert_close(g_weight, g_weight_full, atol=1e-5, rtol=1e-5)
    assert lean.token_counts.tolist() == [5, 5, 0]
    assert lean.logps[2].item() == 0.0


def test_hidden_route_with_bias_and_logits_sum():
    hidden, weight, bias, labels = _random_case(seed=3, with_bias=True)
    logits = F.linear(hidden, weight, bias)
    lean = token_logps_from_hidden(hidden, weight, labels, lm_head_bias=bias, chunk_size=3)
    assert_close(lean.logps, completion_logps(logits, labels), atol=1e-5, rtol=1e-5)
    assert_close(lean.logits_sum, completion_logits_sum(logits, labels), atol=1e-4, rtol=1e-5)
    assert not lean.logits_sum.requires_grad
    (g_bias,) = torch.autograd.grad(lean.logps.sum(), [bias])
    (g_bias_full,) = torch.autograd.grad(completion_logps(logits, labels).sum(), [bias])
    assert_close(g_bias, g_bias_full, atol=1e-5, rtol=1e-5)


def test_hidden_route_no_grad_and_all_padding_batch():
    hidden, weight, _, labels = _random_case()
    with torch.no_grad():
        out = token_logps_from_hidden(hidden, weight, labels, chunk_size=2)
    assert not out.logps.requires_grad
    assert_close(out.logps, completion_logps(hidden @ weight.T, labels).detach(), atol=1e-5, rtol=1e-5)

    empty = torch.full_like(labels, IGNORE)
    out = token_logps_from_hidden(hidden, weight, empty)
    assert out.logps.tolist() == [0.0, 0.0, 0.0]
    out.logps.sum().backward()  # the graph stays connected; gradients are zero
    assert hidden.grad.abs().sum().item() == 0.0


def test_hidden_route_validates_shapes():
    hidden, weight, _, labels = _random_case()
    with pytest.raises(ValueError, match=r"lm_head_weight shape \(50, 8\)"):
        token_logps_from_hidden(hidden, weight[:, :8], labels)
    with pytest.raises(ValueError, match=r"hidden \(3, 9, 16\) vs labels \(3, 8\)"):
        token_logps_from_hidden(hidden, weight, labels[:, :8])
    with pytest.raises(ValueError, match="chunk_size"):
        token_logps_from_hidden(hidden, weight, labels, chunk_size=0)
