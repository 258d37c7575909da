"""Model FLOPs of a training step (PaLM-appendix convention) and this machine's measured fp32 matmul peak.

Utilisation = model FLOP/s / measured peak. Model FLOPs count what the step must compute, the same for
zephyr and TRL on the same data whatever either does internally (so a side that computes more, or less, than
this moves only its time):

* Linear layers: ``2·N_matmul`` forward FLOPs per token, ``4·N_matmul`` backward (input and weight gradients),
  so ``6·N_matmul`` per trained token. ``N_matmul`` = the weights of every matmul of a decoder block (q, k, v,
  o, gate, up, down) × layers, plus the vocabulary head (``hidden × vocab``, tied or not); no embedding lookup,
  norms or activations. With LoRA the frozen base needs no weight gradient: ``4·N_matmul + 6·N_lora``, where
  ``N_lora = r·(in + out)`` per adapted linear.
* Attention: ``QKᵀ`` and ``AV`` are ``4·d_attn`` forward FLOPs per (query, key) pair per layer (``d_attn`` =
  heads × head dim), ×3 with the backward: PaLM's ``12·L·d_attn·T`` per token with ``T`` the keys a causal
  query actually attends (position ``i`` of a sequence sees ``i + 1``; packed rows restart per conversation).
* SFT: every non-pad token of the packed rows is trained (head included, as in PaLM).
* DPO: per pair, the policy forward + backward over ``prompt + chosen + rejected`` with the prompt once (the
  completions attend to it) and the head only at the completion positions (the only log-probs the loss reads),
  plus one reference forward (``2·`` instead of ``6·``) over the same: the reference log-probs are needed once
  per pair (TRL recomputes them each step, zephyr caches them; both are charged the same once).
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import Any

# the decoder linears LoRA adapts by default (every linear of a Llama/Mistral block)
DECODER_LINEARS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass(frozen=True)
class ModelFlops:
    """Matmul sizes of a Llama/Mistral-shaped model, from its config dict."""

    layers: int
    hidden: int
    attn_dim: int  # heads × head dim (queries)
    body_matmul: int  # matmul weights of all decoder blocks
    head_matmul: int  # hidden × vocab
    lora_matmul: int = 0  # LoRA A and B weights (0: full fine-tuning)

    @property
    def head_share(self) -> float:
        """The head's fraction of the linear-layer matmul FLOPs per token (all positions projected)."""
        return self.head_matmul / (self.body_matmul + self.head_matmul)


def linear_shapes(config: dict[str, Any]) -> dict[str, tuple[int, int]]:
    """``{name: (in, out)}`` of the linears of one decoder block."""
    h, inter = int(config["hidden_size"]), int(config["intermediate_size"])
    heads, kv = (
        int(config["num_attention_heads"]),
        int(config.get("num_key_value_heads") or config["num_attention_heads"]),
    )
    hd = int(config.get("head_dim") or h // heads)
    return {
        "q_proj": (h, heads * hd),
        "k_proj": (h, kv * hd),
        "v_proj": (h, kv * hd),
        "o_proj": (heads * hd, h),
        "gate_proj": (h, inter),
        "up_proj": (h, inter),
        "down_proj": (inter, h),
    }


def model_flops(config: dict[str, Any], lora: dict[str, Any] | None = None) -> ModelFlops:
    """The :class:`ModelFlops` of ``config``; ``lora`` (``r``, ``target_modules``) adds the adapters' weights."""
    shapes = linear_shapes(config)
    layers = int(config["num_hidden_layers"])
    lora_w = 0
    if lora:
        targets = lora.get("target_modules") or DECODER_LINEARS
        unknown = [t for t in targets if t not in shapes]
        if unknown:
            raise ValueError(f"LoRA target_modules {unknown} are not decoder linears ({', '.join(shapes)})")
        lora_w = layers * sum(int(lora["r"]) * (shapes[t][0] + shapes[t][1]) for t in targets)
    return ModelFlops(
        layers=layers,
        hidden=int(config["hidden_size"]),
        attn_dim=shapes["q_proj"][1],
        body_matmul=layers * sum(i * o for i, o in shapes.values()),
        head_matmul=int(config["hidden_size"]) * int(config["vocab_size"]),
        lora_matmul=lora_w,
    )


def _train_linear(m: ModelFlops, weights: int, tokens: int) -> float:
    """Forward + backward FLOPs of ``weights`` matmul weights over ``tokens`` (frozen weights under LoRA)."""
    per = 4 if m.lora_matmul else 6
    return float(per * weights * tokens)


def _causal_pairs(n: int) -> int:
    return n * (n + 1) // 2


def sft_step_flops(m: ModelFlops, seq_lengths: list[int]) -> float:
    """Model FLOPs of one SFT step over packed conversations of ``seq_lengths`` tokens (padding excluded)."""
    tokens = sum(seq_lengths)
    linear = _train_linear(m, m.body_matmul + m.head_matmul, tokens) + 6.0 * m.lora_matmul * tokens
    attention = 12.0 * m.layers * m.attn_dim * sum(_causal_pairs(s) for s in seq_lengths)
    return linear + attention


def dpo_step_flops(m: ModelFlops, pairs: list[tuple[int, int, int]]) -> float:
    """Model FLOPs of one DPO step over ``(prompt, chosen, rejected)`` token lengths: policy + one reference pass."""
    total = 0.0
    for p, c, r in pairs:
        tokens, completions = p + c + r, c + r
        attn_pairs = _causal_pairs(p) + c * p + _causal_pairs(c) + r * p + _causal_pairs(r)
        policy = (
            _train_linear(m, m.body_matmul, tokens)
            + _train_linear(m, m.head_matmul, completions)
            + 6.0 * m.lora_matmul * tokens
            + 12.0 * m.layers * m.attn_dim * attn_pairs
        )
        reference = (
            2.0 * (m.body_matmul * tokens + m.head_matmul * completions) + 4.0 * m.layers * m.attn_dim * attn_pairs
        )
        total += policy + reference
    return total


def matmul_peak_gflops(threads: int, *, n: int = 2048, repeats: int = 12) -> dict[str, Any]:
    """This machine's fp32 GEMM rate at ``threads`` torch threads: the best of ``repeats`` ``n×n @ n×n`` products.

    Returns:
        ``{"gflops": best, "median_gflops": ..., "n": n, "threads": threads}`` (``2·n³`` FLOPs per product).
    """
    import torch

    torch.set_num_threads(threads)
    g = torch.Generator().manual_seed(0)
    a = torch.randn(n, n, generator=g)
    b = torch.randn(n, n, generator=g)
    out = torch.empty(n, n)
    for _ in range(2):  # warm-up: thread pool, page faults
        torch.mm(a, b, out=out)
    rates = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        torch.mm(a, b, out=out)
        rates.append(2.0 * n**3 / (time.perf_counter() - t0) / 1e9)
    return {"gflops": max(rates), "median_gflops": statistics.median(rates), "n": n, "threads": threads}


def run_zephyr(p: dict[str, Any]) -> dict[str, Any]:
    """Worker entry (``peak:zephyr``): the matmul peak measured in a fresh process with the bench's threads."""
    return matmul_peak_gflops(int(p.get("threads", 2)), n=int(p.get("peak_n", 2048)))
