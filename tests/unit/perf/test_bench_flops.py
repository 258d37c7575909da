"""bench/flops.py's model FLOP counts against a hand count for a tiny config, and the realistic shape's head share.

Tiny config: hidden 4, intermediate 6, 2 heads / 1 KV head (head dim 2), vocabulary 10, 2 layers. One block's
linears: q 4·4 + k 4·2 + v 4·2 + o 4·4 + gate/up/down 3·4·6 = 120 weights, so the body is 240 and the head 40.
"""

import pytest

from bench.common import REALISTIC_MODEL_CONFIG, SHAPES
from bench.flops import dpo_step_flops, model_flops, sft_step_flops
from bench.run import parse_args, utilisation

pytestmark = pytest.mark.unit

CFG = {
    "hidden_size": 4,
    "intermediate_size": 6,
    "num_attention_heads": 2,
    "num_key_value_heads": 1,
    "num_hidden_layers": 2,
    "vocab_size": 10,
}


def test_matmul_weights_by_hand():
    m = model_flops(CFG)
    assert (m.body_matmul, m.head_matmul, m.attn_dim, m.layers) == (240, 40, 4, 2)
    assert m.head_share == pytest.approx(40 / 280)


def test_sft_step_by_hand():
    # two packed conversations of 3 and 2 tokens: 6·280·5 linear + 12·L·d_attn·(3·4/2 + 2·3/2) causal attention
    assert sft_step_flops(model_flops(CFG), [3, 2]) == 6 * 280 * 5 + 12 * 2 * 4 * (6 + 3) == 9264


def test_lora_sft_step_by_hand():
    # r=1 on q (4 -> 4) and v (4 -> 2): (8 + 6) per layer = 28 adapter weights; the frozen 280 need no weight grad
    m = model_flops(CFG, {"r": 1, "target_modules": ["q_proj", "v_proj"]})
    assert m.lora_matmul == 28
    assert sft_step_flops(m, [3, 2]) == 4 * 280 * 5 + 6 * 28 * 5 + 864 == 7304


def test_dpo_step_by_hand():
    # prompt 2, chosen 1, rejected 3: 6 tokens once, head at the 4 completion positions; attended pairs:
    # prompt 3, chosen 1·2 + 1 = 3, rejected 3·2 + 6 = 12 -> 18
    policy = 6 * 240 * 6 + 6 * 40 * 4 + 12 * 2 * 4 * 18
    reference = 2 * (240 * 6 + 40 * 4) + 4 * 2 * 4 * 18
    assert dpo_step_flops(model_flops(CFG), [(2, 1, 3)]) == policy + reference == 15104


def test_unknown_lora_target_is_named():
    with pytest.raises(ValueError, match="'lm_head'"):
        model_flops(CFG, {"r": 4, "target_modules": ["lm_head"]})


def test_realistic_shape_head_is_at_most_30_percent():
    m = model_flops(REALISTIC_MODEL_CONFIG)
    assert REALISTIC_MODEL_CONFIG["model_type"] == "llama" and REALISTIC_MODEL_CONFIG["tie_word_embeddings"]
    assert (m.hidden, m.attn_dim, m.head_matmul) == (576, 576, 576 * 49152)
    assert m.head_share == pytest.approx(2 / 7) and m.head_share <= 0.30  # 20 layers
    full = model_flops({**REALISTIC_MODEL_CONFIG, "num_hidden_layers": 30})
    assert full.head_share == pytest.approx(0.2105, abs=1e-4)


def test_utilisation_is_a_fraction_of_the_peak():
    assert utilisation(90e9, 180.0) == pytest.approx(0.5)
    assert utilisation(None, 180.0) is None and utilisation(1e9, None) is None


def test_realistic_shape_defaults_and_bad_names():
    args = parse_args(["--shape", "realistic"])
    assert (args.max_length, args.steps, args.repeats) == (1024, 2, 1)  # ~20 min on 2 cores
    assert parse_args([]).repeats == 3 and parse_args(["--shape", "realistic", "--repeats", "3"]).repeats == 3
    assert args.only == ["sft", "dpo", "sft_lora", "dpo_lora"]
    assert SHAPES["realistic"]["results"] == "latest_realistic.json"
    assert (SHAPES["realistic"]["prompt_tokens"], SHAPES["realistic"]["completion_tokens"]) == (150, 250)
    assert parse_args([]).only == ["sft", "dpo", "sweep", "sft_lora", "dpo_lora"]
    with pytest.raises(SystemExit):
        parse_args(["--ablation", "nope"])
    assert parse_args(["--ablation", "compile", "--ablation", "bf16_autocast"]).ablation == ["compile", "bf16_autocast"]
