"""What the fused-block tests share: tiny dims per family, and one loss + every gradient of a model."""

from __future__ import annotations

import torch

DIMS = dict(hidden_size=32, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2)
FAMILIES = {
    "mistral": dict(vocab_size=128, **DIMS),
    "llama": dict(model_type="llama", vocab_size=128, **DIMS),
    "qwen2": dict(model_type="qwen2", vocab_size=128, **DIMS),
}


def loss_and_grads(model: torch.nn.Module, ids: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The LM loss of ``ids`` on themselves and a copy of every parameter's gradient."""
    model.zero_grad()
    out = model(input_ids=ids, labels=ids)
    out.loss.backward()
    return out.loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
