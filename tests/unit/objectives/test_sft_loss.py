"""SFT token-mean cross-entropy: hand-worked value, agreement with F.cross_entropy, hidden-state route, edges."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch.testing import assert_close

from zephyr.objectives.sft import sft_loss, sft_loss_from_hidden

pytestmark = pytest.mark.unit
IGNORE = -100


def test_sft_loss_hand_worked_pools_tokens_not_rows():
    """Row 0: logits log([1, 2, 5]) everywhere, 2 counted labels (ids 1, 2): −log(2/8) − log(5/8) = log(64/10).
    Row 1: uniform logits over V=3, 1 counted label: log 3. Token mean over the batch's 3 tokens:
    (log 6.4 + log 3) / 3 — not the mean of the two row means."""
    logits = torch.stack([torch.log(torch.tensor([1.0, 2.0, 5.0])).expand(4, 3), torch.zeros(4, 3)])
    labels = torch.tensor([[IGNORE, 1, 2, IGNORE], [IGNORE, IGNORE, IGNORE, 0]])
    loss, num_tokens = sft_loss(logits, labels)[:2]
    assert num_tokens.item() == 3
    assert_close(loss, torch.tensor((math.log(6.4) + math.log(3)) / 3))


def test_sft_loss_matches_cross_entropy():
    torch.manual_seed(0)
    logits = torch.randn(2, 7, 13, requires_grad=True)
    labels = torch.randint(0, 13, (2, 7))
    labels[0, :3] = IGNORE
    loss, _ = sft_loss(logits, labels)[:2]
    reference = F.cross_entropy(logits[:, :-1].reshape(-1, 13), labels[:, 1:].reshape(-1), ignore_index=IGNORE)
    assert_close(loss, reference)
    (g,) = torch.autograd.grad(loss, [logits])
    (g_ref,) = torch.autograd.grad(reference, [logits])
    assert_close(g, g_ref)


def test_sft_loss_all_ignored_is_zero_not_nan():
    logits = torch.randn(2, 4, 5, requires_grad=True)
    loss, num_tokens = sft_loss(logits, torch.full((2, 4), IGNORE))[:2]
    assert num_tokens.item() == 0 and loss.item() == 0.0
    loss.backward()
    assert logits.grad.abs().sum().item() == 0.0


def test_sft_loss_shape_error():
    with pytest.raises(ValueError, match=r"logits \(2, 4, 5\) vs labels \(2, 3\)"):
        sft_loss(torch.zeros(2, 4, 5), torch.zeros(2, 3, dtype=torch.long))


@pytest.mark.parametrize("chunk_size", [2, 1024])
def test_sft_loss_from_hidden_matches_full_logits(chunk_size):
    g = torch.Generator().manual_seed(2)
    hidden = torch.randn(2, 8, 12, generator=g, requires_grad=True)
    weight = (0.2 * torch.randn(40, 12, generator=g)).requires_grad_(True)
    labels = torch.randint(0, 40, (2, 8), generator=g)
    labels[1, 5:] = IGNORE
    full, n_full = sft_loss(hidden @ weight.T, labels)[:2]
    lean, n_lean = sft_loss_from_hidden(hidden, weight, labels, chunk_size=chunk_size)[:2]
    assert n_full.item() == n_lean.item() == 11
    assert_close(lean, full, atol=1e-5, rtol=1e-5)
    grads_full = torch.autograd.grad(full, [hidden, weight])
    grads_lean = torch.autograd.grad(lean, [hidden, weight])
    for a, b in zip(grads_lean, grads_full):
        assert_close(a, b, atol=1e-5, rtol=1e-5)
