"""The fused head route (``_HeadLogps``: hand backward, one reused block) gives the checkpointed route's numbers."""

import pytest
import torch
from torch.testing import assert_close

from zephyr.objectives import logprobs
from zephyr.objectives.logprobs import completion_logps, token_logps_from_hidden, use_fused_head

V, H = 97, 16


def _case(seed: int = 0, batch: int = 3, length: int = 11):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(batch, length, H, generator=g) * 2
    weight = torch.randn(V, H, generator=g) * 0.5
    labels = torch.randint(0, V, (batch, length), generator=g)
    labels[0, :4] = -100  # a prompt
    labels[1, 7:] = -100  # padding
    labels[2, :] = -100  # a row with nothing counted
    labels[1, 1:5] = (hidden[1, :4] @ weight.T).argmax(-1)  # top-1 hits, so top1_count is not all zeros
    return hidden, weight, labels


def _run(hidden, weight, labels, *, fused: bool, **opts):
    h = hidden.detach().clone().requires_grad_(hidden.requires_grad)
    w = weight.detach().clone().requires_grad_(weight.requires_grad)
    out = token_logps_from_hidden(h, w, labels, fused=fused, **opts)
    if h.requires_grad or w.requires_grad:
        (out.logps * torch.tensor([1.0, -2.0, 0.5])).sum().backward()
    return out, h.grad, w.grad


def _count_fused_calls(monkeypatch) -> list[int]:
    calls: list[int] = []
    apply = logprobs._HeadLogps.apply

    def counting(*args):
        calls.append(1)
        return apply(*args)

    monkeypatch.setattr(logprobs._HeadLogps, "apply", counting)
    return calls


@pytest.mark.parametrize("chunk_size", [1, 4, 5, 1024])
@pytest.mark.parametrize("average", [False, True])
def test_fused_values_gradients_and_stats_equal_the_checkpointed_route(monkeypatch, chunk_size, average):
    hidden, weight, labels = _case()
    hidden.requires_grad_(True)
    weight.requires_grad_(True)
    calls = _count_fused_calls(monkeypatch)
    fused, gh, gw = _run(hidden, weight, labels, fused=True, chunk_size=chunk_size, average=average, stats=True)
    assert calls, "an eligible fp32 head must take the fused route"
    plain, gh0, gw0 = _run(hidden, weight, labels, fused=False, chunk_size=chunk_size, average=average, stats=True)
    assert len(calls) == 1
    assert_close(fused.logps, plain.logps, rtol=1e-5, atol=1e-5)
    assert_close(fused.logits_sum, plain.logits_sum, rtol=1e-5, atol=1e-4)
    assert torch.equal(fused.token_counts, plain.token_counts)
    assert_close(gh, gh0, rtol=1e-5, atol=1e-6)
    assert_close(gw, gw0, rtol=1e-5, atol=1e-6)
    assert plain.stats.top1_count[1] >= 4
    for name in ("top1_count", "token_logps", "mask"):
        assert_close(getattr(fused.stats, name), getattr(plain.stats, name), rtol=1e-5, atol=1e-5)
    # entropy (−Σ p log p vs logsumexp − Σ p z) and log Σ p² are detached diagnostics: the same within fp32 rounding
    assert_close(fused.stats.entropy_sum, plain.stats.entropy_sum, rtol=1e-5, atol=1e-4)
    assert_close(fused.stats.log_sum_sq, plain.stats.log_sum_sq, rtol=1e-5, atol=1e-5)
    # and both are the full-logits definition
    assert_close(fused.logps, completion_logps(hidden.detach() @ weight.detach().T, labels, average=average))


def test_fused_gradients_are_softmax_minus_onehot_by_hand():
    hidden = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]], requires_grad=True)
    weight = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]], requires_grad=True)
    labels = torch.tensor([[-100, 2]])  # position 0 predicts token 2
    out = token_logps_from_hidden(hidden, weight, labels)
    z = torch.tensor([1.0, 0.0, 1.0])  # logits at position 0
    p = z.softmax(-1)
    assert_close(out.logps, (z[2] - z.logsumexp(-1)).reshape(1))
    out.logps.sum().backward()
    dz = torch.tensor([0.0, 0.0, 1.0]) - p
    assert_close(hidden.grad[0, 0], dz @ weight.detach())
    assert_close(hidden.grad[0, 1], torch.zeros(2))  # its label is past the end: not scored
    assert_close(weight.grad, torch.outer(dz, hidden.detach()[0, 0]))


def test_fused_batch_with_nothing_counted_gives_zero_gradients_of_the_right_shape():
    # the weight gradient starts as the first chunk's product (no zero fill); with no chunk at all it is zeros
    hidden, weight, _ = _case(seed=3)
    hidden.requires_grad_(True)
    weight.requires_grad_(True)
    labels = torch.full(hidden.shape[:2], -100)
    out, gh, gw = _run(hidden, weight, labels, fused=True)
    assert torch.equal(out.logps, torch.zeros(3))
    assert gw.shape == (V, H) and torch.equal(gw, torch.zeros(V, H))
    assert torch.equal(gh, torch.zeros_like(hidden))


@pytest.mark.parametrize("frozen", ["weight", "hidden"])
def test_fused_frozen_side_gets_no_gradient_and_the_other_the_same(frozen):
    hidden, weight, labels = _case(seed=1)
    hidden.requires_grad_(frozen != "hidden")
    weight.requires_grad_(frozen != "weight")
    _, gh, gw = _run(hidden, weight, labels, fused=True, chunk_size=4)
    _, gh0, gw0 = _run(hidden, weight, labels, fused=False, chunk_size=4)
    if frozen == "weight":
        assert gw is None and gw0 is None
        assert_close(gh, gh0, rtol=1e-5, atol=1e-6)
    else:
        assert gh is None and gh0 is None
        assert_close(gw, gw0, rtol=1e-5, atol=1e-6)


def test_fused_no_grad_equals_and_builds_no_graph():
    hidden, weight, labels = _case(seed=2)
    with torch.no_grad():
        fused = token_logps_from_hidden(hidden, weight, labels, chunk_size=3, stats=True)
        plain = token_logps_from_hidden(hidden, weight, labels, chunk_size=3, stats=True, fused=False)
    assert fused.logps.grad_fn is None
    assert_close(fused.logps, plain.logps, rtol=1e-5, atol=1e-5)


def test_reused_block_does_not_leak_between_calls_or_into_a_pending_backward():
    """Forward A, forward B (same buffer), backward A: A's gradient is A's own."""
    ha, wa, la = _case(seed=3)
    hb, wb, lb = _case(seed=4)
    ha.requires_grad_(True)
    wa.requires_grad_(True)
    out_a = token_logps_from_hidden(ha, wa, la, chunk_size=4)
    kept = out_a.logps.detach().clone()
    token_logps_from_hidden(hb * 3, wb, lb, chunk_size=4)
    out_a.logps.sum().backward()
    ref_a, gh0, gw0 = _run(
        ha.detach().requires_grad_(True), wa.detach().requires_grad_(True), la, fused=False, chunk_size=4
    )
    assert torch.equal(out_a.logps.detach(), kept)
    assert_close(kept, ref_a.logps, rtol=1e-5, atol=1e-5)
    # _run weights rows [1, -2, 0.5]; here every row has weight 1: compare with an unweighted backward
    h2, w2 = ha.detach().clone().requires_grad_(True), wa.detach().clone().requires_grad_(True)
    token_logps_from_hidden(h2, w2, la, chunk_size=4, fused=False).logps.sum().backward()
    assert_close(ha.grad, h2.grad, rtol=1e-5, atol=1e-6)
    assert_close(wa.grad, w2.grad, rtol=1e-5, atol=1e-6)


def test_linear_module_head_is_fused_and_its_weight_gets_the_gradient(monkeypatch):
    hidden, _, labels = _case(seed=5)
    head = torch.nn.Linear(H, V, bias=False)
    calls = _count_fused_calls(monkeypatch)
    token_logps_from_hidden(hidden, head, labels, chunk_size=4).logps.sum().backward()
    assert calls == [1]
    fused_grad = head.weight.grad.clone()
    head.weight.grad = None
    token_logps_from_hidden(hidden, head, labels, chunk_size=4, fused=False).logps.sum().backward()
    assert_close(fused_grad, head.weight.grad, rtol=1e-5, atol=1e-6)


def _hooked_head() -> torch.nn.Linear:
    head = torch.nn.Linear(H, V, bias=False)
    head.register_forward_hook(lambda module, args, out: out * 2)  # changes the logits: must not be bypassed
    return head


@pytest.mark.parametrize(
    "case",
    ["bias", "softcap", "bf16", "hooked_module", "linear_subclass", "autocast", "switched_off"],
)
def test_ineligible_heads_take_the_checkpointed_route_with_their_own_numbers(monkeypatch, case):
    hidden, weight, labels = _case(seed=6)
    head: torch.Tensor | torch.nn.Module = weight
    opts: dict = {"chunk_size": 4}
    if case == "bias":
        opts["lm_head_bias"] = torch.randn(V)
    elif case == "softcap":
        opts["softcap"] = 3.0
    elif case == "bf16":
        hidden, head = hidden.bfloat16(), weight.bfloat16()
    elif case == "hooked_module":
        head = _hooked_head()
    elif case == "linear_subclass":
        head = type("ShardedLinear", (torch.nn.Linear,), {})(H, V, bias=False)
    calls = _count_fused_calls(monkeypatch)
    with (
        torch.autocast("cpu", dtype=torch.bfloat16, enabled=case == "autocast"),
        use_fused_head(case != "switched_off"),
    ):
        out = token_logps_from_hidden(hidden, head, labels, **opts)
    assert calls == []
    if case == "hooked_module":  # the hook's doubled logits are what is scored
        doubled = 2 * torch.nn.functional.linear(hidden, head.weight).detach()
        assert_close(head(hidden).detach(), doubled)
        expected = completion_logps(doubled, labels)
        assert_close(out.logps, expected, rtol=1e-5, atol=1e-5)
    if case == "softcap":
        logits = torch.tanh(hidden @ weight.T / 3.0) * 3.0
        assert_close(out.logps, completion_logps(logits, labels), rtol=1e-5, atol=1e-5)


def test_use_fused_head_restores_the_previous_setting():
    assert logprobs._FUSED["enabled"] is True
    with use_fused_head(False):
        assert logprobs._FUSED["enabled"] is False
        with pytest.raises(RuntimeError), use_fused_head(True):
            assert logprobs._FUSED["enabled"] is True
            raise RuntimeError("inside")
        assert logprobs._FUSED["enabled"] is False
    assert logprobs._FUSED["enabled"] is True
