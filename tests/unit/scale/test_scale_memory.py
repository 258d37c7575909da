"""Memory estimate: parameter count from a config, ZeRO-paper state bytes per strategy, the printed table."""

from __future__ import annotations

import io

import pytest
from rich.console import Console

from zephyr.scale.memory import (
    GB,
    activation_bytes,
    count_parameters,
    estimate,
    estimates_for_config,
    print_memory_estimate,
)

MISTRAL_7B = dict(
    vocab_size=32000,
    hidden_size=4096,
    intermediate_size=14336,
    num_hidden_layers=32,
    num_attention_heads=32,
    num_key_value_heads=8,
    tie_word_embeddings=False,
)
P = 7_241_732_096


def test_mistral_7b_parameter_count():
    # 2 x 32000 x 4096 (embeddings + head) + 32 x 218,112,000 per layer + 4096 final norm
    assert count_parameters(MISTRAL_7B) == 2 * 32000 * 4096 + 32 * 218_112_000 + 4096 == P


def test_count_matches_a_real_tiny_model(tiny_model):
    from tests.conftest import TINY_CONFIG

    assert count_parameters(TINY_CONFIG) == sum(p.numel() for p in tiny_model.parameters())


def test_state_bytes_follow_the_zero_paper():
    """ZeRO (arXiv 1910.02054): 2 + 2 + 12 bytes per parameter; stage 2 shards 14, stage 3 all 16."""
    kw = dict(n_params=P, world_size=16, weight_bytes=4, activations=0.0, precision="bf16-mixed", layer_params=10)
    s3 = estimate("deepspeed_stage_3", **kw)
    assert (s3.params, s3.grads, s3.optimizer) == (2 * P / 16, 2 * P / 16, 12 * P / 16)
    assert s3.total == pytest.approx(P)  # 16 bytes / 16 ranks
    s2 = estimate("deepspeed_stage_2", **kw)
    assert s2.params == 2 * P and s2.grads + s2.optimizer == pytest.approx(14 * P / 16)
    off = estimate("deepspeed_stage_3_offload", **kw)
    assert off.host == pytest.approx(P) and off.params == 2 * 10 * 2 and off.optimizer == 0
    ddp = estimate("ddp", **kw)
    assert ddp.total == 16 * P  # fp32 weights, grads, two Adam states on every device
    fsdp = estimate("fsdp", **kw)
    assert fsdp.total == pytest.approx(P)
    assert estimate("fsdp", **{**kw, "weight_bytes": 2}).total == pytest.approx(P / 2)  # bf16 weights: 8 B/param
    with pytest.raises(ValueError, match="unknown strategy 'zero4'"):
        estimate("zero4", **kw)


def test_activation_formula_by_hand():
    # b=1, s=8, h=4, L=2: sbh = 32; checkpointing: 2 layers x 2 x 32 + 34 x 32 = 1216 bytes (16-bit)
    # loss: chunk 1 x V 10 x 4 bytes x 2 = 80
    got = activation_bytes(
        micro_batch_size=1,
        seq_len=8,
        hidden_size=4,
        num_layers=2,
        vocab_size=10,
        gradient_checkpointing=True,
        chunked_loss=True,
        loss_chunk_size=1,
    )
    assert got == 1216 + 80
    full = activation_bytes(
        micro_batch_size=1,
        seq_len=8,
        hidden_size=4,
        num_layers=2,
        vocab_size=10,
        gradient_checkpointing=False,
        chunked_loss=False,
    )
    assert full == 2 * 34 * 32 + 8 * 10 * 8


def test_paper_preset_on_a100x16(compose):
    cfg = compose("+experiment=zephyr_7b_sft", "hardware=a100x16", "strategy=deepspeed_stage_3")
    rows, facts = estimates_for_config(cfg)
    by = {r.strategy: r for r in rows}
    assert facts["n_params"] == P and facts["world_size"] == 16 and facts["micro_batch_size"] == 16
    assert by["deepspeed_stage_3"].params + by["deepspeed_stage_3"].grads + by["deepspeed_stage_3"].optimizer == (
        pytest.approx(P)
    )
    assert by["ddp"].total > 80 * GB  # a full fp32 replica + Adam does not fit an A100
    assert by["deepspeed_stage_3"].total < 0.9 * 80 * GB
    out = io.StringIO()
    print_memory_estimate(cfg, Console(file=out, width=140))
    text = out.getvalue()
    assert "7.24 B params, 16 device(s)" in text
    assert "deepspeed_stage_3 *" in text  # the configured strategy is starred
    assert "fits" in text and " no " in text and " yes " in text


def test_dpo_doubles_rows_and_live_reference_adds_weights(compose):
    cfg = compose("objective=dpo", "objective.reference.mode=live", "data.batch_size=2")
    rows, facts = estimates_for_config(cfg)
    assert facts["micro_batch_size"] == 4 and facts["reference"] == "live"
    sft_rows, _ = estimates_for_config(compose("data.batch_size=2"))
    n = facts["n_params"]
    assert rows[1].activations - sft_rows[1].activations > n * 4 * 0.99  # fp32 reference weights included
