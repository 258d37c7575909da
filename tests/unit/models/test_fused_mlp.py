"""The fused SwiGLU MLP (``zephyr.models.fused_mlp``): the same values and gradients as the module's own forward,
two saved ``(tokens, intermediate)`` tensors fewer per layer, and the module's own forward wherever the block is
not plain (LoRA, bias, autocast, no grad)."""

from __future__ import annotations

import copy

import pytest
import torch
from torch.testing import assert_close

from tests.unit.models.helpers_fused import DIMS, FAMILIES
from tests.unit.models.helpers_fused import loss_and_grads as _loss_and_grads
from zephyr.models.fused_mlp import _SwiGLUDown, fuse_mlp, fused_mlp_count
from zephyr.models.mistral import build_model

pytestmark = pytest.mark.unit


def _model(family: str, fused: bool):
    return build_model(config=FAMILIES[family], init_seed=0, fused_mlp=fused)


def test_function_gradcheck_in_float64():
    g = torch.Generator().manual_seed(0)
    gate = torch.randn(2, 3, 5, dtype=torch.float64, generator=g, requires_grad=True)
    up = torch.randn(2, 3, 5, dtype=torch.float64, generator=g, requires_grad=True)
    weight = torch.randn(4, 5, dtype=torch.float64, generator=g, requires_grad=True)
    assert torch.autograd.gradcheck(_SwiGLUDown.apply, (gate, up, weight))
    expected = torch.nn.functional.linear(torch.nn.functional.silu(gate) * up, weight)
    assert_close(_SwiGLUDown.apply(gate, up, weight), expected)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_fused_model_equals_the_unfused_model_loss_and_every_gradient(family):
    ids = torch.randint(0, 128, (2, 17), generator=torch.Generator().manual_seed(1))
    fused, plain = _model(family, True), _model(family, False)
    assert fused_mlp_count(fused) == DIMS["num_hidden_layers"] and fused_mlp_count(plain) == 0
    loss, grads = _loss_and_grads(fused, ids)
    loss0, grads0 = _loss_and_grads(plain, ids)
    assert_close(loss, loss0, rtol=1e-6, atol=1e-6)
    assert grads.keys() == grads0.keys()
    for name, g in grads0.items():
        assert_close(grads[name], g, rtol=1e-5, atol=1e-6, msg=lambda m, name=name: f"{name}: {m}")


def _saved_bytes(model, ids) -> int:
    total = 0

    def pack(t):
        nonlocal total
        total += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(input_ids=ids, labels=ids).loss.backward()
    return total


def test_fused_saves_two_intermediate_activations_fewer_per_layer():
    ids = torch.randint(0, 128, (2, 17), generator=torch.Generator().manual_seed(2))
    saved = _saved_bytes(_model("llama", True), ids)
    saved0 = _saved_bytes(_model("llama", False), ids)
    per_layer = 2 * 17 * DIMS["intermediate_size"] * 4  # one fp32 (tokens, intermediate) tensor
    assert saved0 - saved == 2 * per_layer * DIMS["num_hidden_layers"]


def _calls(monkeypatch) -> list[int]:
    calls: list[int] = []
    apply = _SwiGLUDown.apply
    monkeypatch.setattr(_SwiGLUDown, "apply", lambda *a: calls.append(1) or apply(*a))
    return calls


@pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing.*:FutureWarning")  # peft reads a deprecated alias
@pytest.mark.parametrize("case", ["no_grad", "autocast", "bias", "lora"])
def test_blocks_that_are_not_plain_take_their_own_forward(monkeypatch, case):
    ids = torch.randint(0, 128, (1, 9))
    model = _model("llama", True)
    if case == "bias":
        mlp = model.model.layers[0].mlp
        mlp.down_proj.bias = torch.nn.Parameter(torch.ones(DIMS["hidden_size"]))
    if case == "lora":
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(r=2, target_modules=["gate_proj", "up_proj", "down_proj"]))
    calls = _calls(monkeypatch)
    with torch.set_grad_enabled(case != "no_grad"), torch.autocast("cpu", enabled=case == "autocast"):
        out = model(input_ids=ids).logits
    expected_calls = 1 if case == "bias" else 0  # the bias on layer 0 only: layer 1 stays fused
    assert len(calls) == expected_calls
    assert torch.isfinite(out).all()
    if case == "bias":  # the bias is applied (the module's own forward ran)
        fuse_mlp(model, enabled=False)
        assert_close(model(input_ids=ids).logits, out)


def test_fuse_mlp_undo_and_deepcopy():
    model = _model("mistral", True)
    twin = copy.deepcopy(model)
    assert fused_mlp_count(twin) == 2
    assert twin.model.layers[0].mlp.forward.__self__ is twin.model.layers[0].mlp  # bound to the copy
    assert fuse_mlp(model, enabled=False) == 0
    assert fuse_mlp(model) == 2 and fuse_mlp(model) == 2  # idempotent


@pytest.mark.parametrize("liger", [False, True])
def test_training_build_keeps_the_fused_mlp_unless_liger_kernels_replace_it(compose, liger):
    from zephyr.run import prepare_policy

    cfg = compose(f"trainer.liger_kernel={str(liger).lower()}")
    assert cfg.model.fused_mlp is True
    model = prepare_policy(_model("mistral", True), adapter={"name": "none"}, cfg=cfg)
    assert fused_mlp_count(model) == (0 if liger else DIMS["num_hidden_layers"])
