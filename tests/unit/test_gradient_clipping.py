"""``trainer.gradient_clip_val`` where Lightning's own route refuses: fused AdamW under bf16-mixed, and FSDP1.

Both crashed every GPU run at its first step (seen on an H200: ``strategy=auto`` and ``strategy=fsdp``, the
recipe's default ``gradient_clip_val: 1.0``); the bf16 case is reproduced here on the CPU.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from pytorch_lightning.plugins.precision import MixedPrecision
from pytorch_lightning.strategies import FSDPStrategy, SingleDeviceStrategy

from zephyr.modules.sft import SFTModule

pytestmark = pytest.mark.unit


def _module_with_grads(trainer, *, fused: bool):
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(16, 16), torch.nn.Linear(16, 4))
    module = SFTModule(net, optimizer=torch.optim.AdamW)
    module._trainer = trainer
    net(torch.randn(8, 16)).pow(2).sum().mul(100).backward()
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3, fused=fused)
    return module, opt, list(net.parameters())


def _bf16_trainer():
    plugin = MixedPrecision("bf16-mixed", "cpu")
    return SimpleNamespace(
        strategy=SingleDeviceStrategy("cpu"),
        precision_plugin=plugin,
        gradient_clip_val=None,
        gradient_clip_algorithm=None,
    )


def _norm(params) -> float:
    return float(torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in params])))


def test_fused_adamw_under_bf16_mixed_is_clipped_to_the_norm():
    trainer = _bf16_trainer()
    module, opt, params = _module_with_grads(trainer, fused=True)
    assert _norm(params) > 10
    with pytest.raises(RuntimeError, match="does not allow for gradient clipping"):  # Lightning's own route
        module.clip_gradients(opt, 0.5, "norm")
    module.configure_gradient_clipping(opt, 0.5, "norm")
    assert _norm(params) == pytest.approx(0.5, rel=1e-4)


def test_unfused_and_value_clipping_still_go_through_lightning():
    trainer = _bf16_trainer()
    module, opt, params = _module_with_grads(trainer, fused=False)
    module.configure_gradient_clipping(opt, 0.5, "norm")
    assert _norm(params) == pytest.approx(0.5, rel=1e-4)
    module, opt, params = _module_with_grads(trainer, fused=False)
    module.configure_gradient_clipping(opt, 1e-3, "value")
    assert max(float(p.grad.abs().max()) for p in params) == pytest.approx(1e-3)


def test_fsdp1_clips_through_the_wrapped_root():
    calls = []
    root = SimpleNamespace(clip_grad_norm_=calls.append)
    trainer = SimpleNamespace(strategy=FSDPStrategy(), model=root, precision_plugin=None)
    module, opt, params = _module_with_grads(trainer, fused=False)
    before = _norm(params)
    module.configure_gradient_clipping(opt, 1.0, "norm")
    assert calls == [1.0] and _norm(params) == before  # the root's total norm over every shard, not a local one
