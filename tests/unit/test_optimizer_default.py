"""The optimizer default: torch's fused Adam/AdamW where the parameters are plain tensors, as HF's Trainer does.

Fused and the per-tensor loop give the same update (to float rounding); the config can pin either.
"""

from __future__ import annotations

from functools import partial

import pytest
import torch

from zephyr.modules.base import make_optimizer


def params():
    torch.manual_seed(0)
    return [torch.nn.Parameter(torch.randn(64, 32)), torch.nn.Parameter(torch.randn(32))]


def test_adamw_left_open_is_fused_on_plain_runs_only():
    factory = partial(torch.optim.AdamW, lr=1e-3, weight_decay=0.0)
    assert make_optimizer(factory, params(), plain=True).defaults["fused"] is True
    assert not make_optimizer(factory, params(), plain=False).defaults["fused"]  # FSDP / DeepSpeed keep theirs


@pytest.mark.parametrize("pinned", [{"fused": False}, {"foreach": True}])
def test_the_configs_choice_wins(pinned):
    opt = make_optimizer(partial(torch.optim.AdamW, lr=1e-3, **pinned), params(), plain=True)
    assert not opt.defaults["fused"]


def test_other_optimizers_are_built_as_configured():
    opt = make_optimizer(partial(torch.optim.SGD, lr=0.1), params(), plain=True)
    assert isinstance(opt, torch.optim.SGD) and "fused" not in {k for k, v in opt.defaults.items() if v}


def test_fused_steps_match_the_per_tensor_loop():
    results = []
    for fused in (True, False):
        ps = params()
        opt = make_optimizer(partial(torch.optim.AdamW, lr=1e-2, weight_decay=0.1, fused=fused), ps, plain=True)
        for step in range(5):
            opt.zero_grad()
            loss = sum(((p - step) ** 2).sum() for p in ps)
            loss.backward()
            opt.step()
        results.append(ps)
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)
