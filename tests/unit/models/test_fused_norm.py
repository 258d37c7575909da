"""The fused RMSNorm (``zephyr.models.fused_norm``): the family's forward bit for bit, the same gradients, one
saved ``(tokens, hidden)`` tensor fewer per norm, and the module's own forward wherever the norm is not plain."""

from __future__ import annotations

import copy

import pytest
import torch
from torch.testing import assert_close

from tests.unit.models.helpers_fused import DIMS
from tests.unit.models.helpers_fused import FAMILIES as BASE_FAMILIES
from tests.unit.models.helpers_fused import loss_and_grads as _loss_and_grads
from zephyr.models.fused_norm import _RMSNormFn, fuse_rmsnorm, fused_rmsnorm_count
from zephyr.models.mistral import build_model

pytestmark = pytest.mark.unit

FAMILIES = {
    **BASE_FAMILIES,
    "qwen3": dict(model_type="qwen3", vocab_size=128, head_dim=8, **DIMS),  # + q_norm / k_norm per layer
    "phi3": dict(model_type="phi3", vocab_size=128, pad_token_id=0, **DIMS),
}
NORMS = {"qwen3": 4 * DIMS["num_hidden_layers"] + 1}  # others: 2 per layer + the final norm


def _model(family: str, fused: bool):
    return build_model(config=FAMILIES[family], init_seed=0, fused_rmsnorm=fused)


def test_function_gradcheck_in_float64_and_the_forward_formula():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 5, dtype=torch.float64, generator=g, requires_grad=True)
    w = torch.randn(5, dtype=torch.float64, generator=g, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: _RMSNormFn.apply(a, b, 1e-5), (x, w))
    expected = w * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-5))
    assert torch.equal(_RMSNormFn.apply(x, w, 1e-5), expected)


def test_gradients_against_the_formula_worked_by_hand():
    """``∂x = r·(g⊙w) − x·r³/H·⟨g⊙w, x⟩`` and ``∂w = Σ g⊙x·r`` on one row, in float64."""
    x = torch.tensor([[1.0, -2.0, 3.0]], dtype=torch.float64, requires_grad=True)
    w = torch.tensor([0.5, 2.0, -1.0], dtype=torch.float64, requires_grad=True)
    g = torch.tensor([[1.0, 1.0, 2.0]], dtype=torch.float64)
    _RMSNormFn.apply(x, w, 0.0).backward(g)
    r = (14.0 / 3.0) ** -0.5
    gy = g * w
    assert_close(x.grad, r * gy - x.detach() * r**3 / 3 * (gy * x.detach()).sum())
    assert_close(w.grad, (g * x.detach() * r).sum(0))


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_fused_model_equals_the_unfused_model_exact_loss_and_every_gradient(family):
    ids = torch.randint(0, 128, (2, 17), generator=torch.Generator().manual_seed(1))
    fused, plain = _model(family, True), _model(family, False)
    norms = NORMS.get(family, 2 * DIMS["num_hidden_layers"] + 1)
    assert fused_rmsnorm_count(fused) == norms and fused_rmsnorm_count(plain) == 0
    loss, grads = _loss_and_grads(fused, ids)
    loss0, grads0 = _loss_and_grads(plain, ids)
    assert torch.equal(loss, loss0)  # the same forward ops in the same order: bit for bit
    assert grads.keys() == grads0.keys()
    for name, g in grads0.items():
        assert_close(grads[name], g, rtol=1e-5, atol=1e-6, msg=lambda m, name=name: f"{name}: {m}")


def test_gemma_norms_are_not_taken():
    """Gemma's norm scales by ``1 + weight``: not the Llama formula, so it keeps its own forward."""
    model = build_model(config=dict(model_type="gemma", vocab_size=128, head_dim=8, **DIMS), init_seed=0)
    assert fused_rmsnorm_count(model) == 0


def _saved_unique_bytes(model, ids) -> int:
    """Bytes of the distinct storages autograd saves for backward (a tensor saved twice counts once)."""
    seen: dict[int, int] = {}

    def pack(t):
        seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(input_ids=ids, labels=ids).loss.backward()
    return sum(seen.values())


def test_fused_saves_one_hidden_sized_activation_fewer_per_norm():
    ids = torch.randint(0, 128, (2, 17), generator=torch.Generator().manual_seed(2))
    saved = _saved_unique_bytes(_model("llama", True), ids)
    saved0 = _saved_unique_bytes(_model("llama", False), ids)
    per_norm = 2 * 17 * DIMS["hidden_size"] * 4  # the normalised x · rsqrt, fp32
    assert saved0 - saved == per_norm * (2 * DIMS["num_hidden_layers"] + 1)


def _calls(monkeypatch) -> list[int]:
    calls: list[int] = []
    apply = _RMSNormFn.apply
    monkeypatch.setattr(_RMSNormFn, "apply", lambda *a: calls.append(1) or apply(*a))
    return calls


@pytest.mark.parametrize("case", ["no_grad", "autocast", "bf16", "hook"])
def test_norms_that_are_not_plain_take_their_own_forward(monkeypatch, case):
    ids = torch.randint(0, 128, (1, 9))
    model = _model("llama", True)
    if case == "bf16":
        model = model.to(torch.bfloat16)
    seen = []
    if case == "hook":  # a hook on the final norm only: the other norms stay fused
        model.model.norm.register_forward_hook(lambda m, i, o: seen.append(o.shape))
    calls = _calls(monkeypatch)
    with torch.set_grad_enabled(case != "no_grad"), torch.autocast("cpu", enabled=case == "autocast"):
        out = model(input_ids=ids).logits
    assert len(calls) == (2 * DIMS["num_hidden_layers"] if case == "hook" else 0)
    assert torch.isfinite(out.float()).all()
    if case == "hook":
        assert seen == [torch.Size([1, 9, DIMS["hidden_size"]])]


def test_fuse_rmsnorm_undo_and_deepcopy():
    model = _model("mistral", True)
    twin = copy.deepcopy(model)
    norms = 2 * DIMS["num_hidden_layers"] + 1
    assert fused_rmsnorm_count(twin) == norms
    assert twin.model.norm.forward.__self__ is twin.model.norm  # bound to the copy
    assert fuse_rmsnorm(model, enabled=False) == 0
    assert "forward" not in vars(model.model.norm)  # the class's own forward again
    assert fuse_rmsnorm(model) == norms and fuse_rmsnorm(model) == norms  # idempotent


@pytest.mark.parametrize("liger", [False, True])
def test_training_build_keeps_the_fused_norm_unless_liger_kernels_replace_it(compose, liger):
    from zephyr.run import prepare_policy

    assert compose().model.fused_rmsnorm is False  # opt-in
    cfg = compose(f"trainer.liger_kernel={str(liger).lower()}", "model.fused_rmsnorm=true")
    assert cfg.model.fused_rmsnorm is True
    model = prepare_policy(_model("mistral", True), adapter={"name": "none"}, cfg=cfg)
    assert fused_rmsnorm_count(model) == (0 if liger else 2 * DIMS["num_hidden_layers"] + 1)
