"""The bench's ablation variants keep the numbers they claim: bf16 autocast close to fp32, activation checkpointing,
the fused head and ``torch.compile`` of the decoder layers equal to eager fp32, length grouping a reordering of the
same pairs.

Each runs the DPO pair forward of :mod:`zephyr.modules.pair_forward` on a tiny random Mistral (the path the bench
times); the compile test (marked slow: inductor's first build) is skipped where inductor cannot build here.
"""

import warnings

import pytest
import torch
from torch.testing import assert_close

from bench.bench_dpo import LengthGroupedBatchSampler
from bench.common import build_policy
from bench.run import ABLATION_VARIANTS
from tests.conftest import TINY_CONFIG
from zephyr.data.collate import ResumableBatchSampler, collate_pairs_prefix_shared
from zephyr.modules.pair_forward import pair_logps

pytestmark = pytest.mark.unit

ITEMS = [
    {"prompt": [1, 5, 9, 11, 40], "chosen": [7, 8, 9, 2], "rejected": [3, 2], "index": 0},
    {"prompt": [1, 300], "chosen": [17], "rejected": [18, 19, 20, 21, 22, 2], "index": 1},
]


def _model(gradient_checkpointing: bool = False):
    """The bench's own build (:func:`bench.common.build_policy`: fp32, SDPA, seeded) of a tiny Mistral."""
    with warnings.catch_warnings():  # transformers deprecates the gradient_checkpointing_enable alias zephyr calls
        warnings.simplefilter("ignore", FutureWarning)
        return build_policy(
            {**TINY_CONFIG, "vocab_size": 512, "max_position_embeddings": 256},
            seed=0,
            gradient_checkpointing=gradient_checkpointing,
        )


def _logps_and_grads(model, autocast: bool = False):
    model.zero_grad()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        logps = pair_logps(model, collate_pairs_prefix_shared(ITEMS, pad_id=0)).logps
    (logps * torch.tensor([1.0, -2.0, 0.5, 3.0])).sum().backward()
    return logps.detach().float(), {n: p.grad.clone() for n, p in model.named_parameters()}


def test_variants_name_their_settings():
    assert ABLATION_VARIANTS["bf16_autocast"]["setting"] == {"precision": "bf16-mixed"}
    assert ABLATION_VARIANTS["length_grouped"]["kinds"] == ("dpo",)
    assert ABLATION_VARIANTS["no_fused_head"]["setting"] == {"fused_head": False}
    assert set(ABLATION_VARIANTS) == {
        "bf16_autocast",
        "compile",
        "length_grouped",
        "activation_checkpointing",
        "no_fused_head",
        "no_fused_mlp",
        "no_segment_attention",
        "fused_rmsnorm",
        "system_allocator",
    }
    assert ABLATION_VARIANTS["system_allocator"]["setting"] == {"host_allocator": "system"}
    assert ABLATION_VARIANTS["no_segment_attention"] == {"kinds": ("sft",), "setting": {"segment_attention": False}}


def test_the_bench_policies_segment_attention_is_zephyrs_alone(monkeypatch):
    from bench.common import TINY_MODEL_CONFIG, build_policy, zephyr_policy
    from zephyr.models.segment_attention import uses_segment_attention
    from zephyr.scale import host_memory

    monkeypatch.setitem(host_memory._APPLIED, "mode", host_memory._APPLIED["mode"])  # restored after the test
    p = {"model_config": TINY_MODEL_CONFIG, "host_allocator": "system"}  # glibc's defaults: no mallopt here
    assert not uses_segment_attention(build_policy(TINY_MODEL_CONFIG))  # TRL's model: transformers' SDPA
    assert uses_segment_attention(zephyr_policy(p))
    assert not uses_segment_attention(zephyr_policy({**p, "segment_attention": False}))  # no_segment_attention


def test_fused_head_equal_logps_and_grads_to_the_checkpointed_head(monkeypatch):
    """The whole model's step through the fused head (the default) equals it with the fused route off."""
    from zephyr.objectives import logprobs

    calls = []
    apply = logprobs._HeadLogps.apply
    monkeypatch.setattr(logprobs._HeadLogps, "apply", lambda *a: calls.append(1) or apply(*a))
    fused, g_fused = _logps_and_grads(_model())
    assert len(calls) == 1  # chosen and rejected targets of the prefix-shared rows in one projection
    with logprobs.use_fused_head(False):
        plain, g_plain = _logps_and_grads(_model())
    assert len(calls) == 1
    assert_close(fused, plain, atol=1e-5, rtol=1e-6)
    for name, g in g_plain.items():
        assert_close(g_fused[name], g, atol=1e-6, rtol=1e-5, msg=lambda m, name=name: f"{name}: {m}")


def test_bf16_autocast_logps_within_tolerance():
    ref, _ = _logps_and_grads(_model())
    low, _ = _logps_and_grads(_model(), autocast=True)
    assert not torch.equal(low, ref)  # bf16 really ran
    assert_close(low, ref, rtol=2e-2, atol=0.1)  # sums of ~6 log-probs of ~-6.2 each


def test_activation_checkpointing_equal_logps_and_grads():
    ref, g_ref = _logps_and_grads(_model())
    ckpt, g_ckpt = _logps_and_grads(_model(gradient_checkpointing=True))
    assert_close(ckpt, ref, atol=1e-6, rtol=0)
    for name, g in g_ref.items():
        assert_close(g_ckpt[name], g, atol=1e-6, rtol=1e-5, msg=lambda m, name=name: f"{name}: {m}")


@pytest.mark.slow  # inductor's first compile: ~80 s on 2 busy cores, over the unit budget
def test_compiled_decoder_layers_equal_eager():
    ref, g_ref = _logps_and_grads(_model())
    model = _model()
    for layer in model.model.layers:
        layer.compile()
    try:
        with warnings.catch_warnings():  # dynamo's internal warnings, which this suite's filters turn into errors
            warnings.simplefilter("ignore")
            got, g_got = _logps_and_grads(model)
    except Exception as e:  # inductor needs a C++ compiler; the bench's compile ablation would fail the same way
        pytest.skip(f"torch.compile unavailable here: {type(e).__name__}: {str(e).splitlines()[0][:120]}")
    assert_close(got, ref, atol=1e-5, rtol=0)
    for name, g in g_ref.items():
        assert_close(g_got[name], g, atol=1e-5, rtol=1e-4, msg=lambda m, name=name: f"{name}: {m}")


def test_length_grouped_batches_are_the_same_items_sorted_within_groups():
    lengths = [5, 50, 7, 30, 9, 11, 40, 3, 22, 8]
    inner = ResumableBatchSampler(len(lengths), 2, shuffle=True, seed=3)
    plain = list(iter(ResumableBatchSampler(len(lengths), 2, shuffle=True, seed=3)))
    grouped = list(iter(LengthGroupedBatchSampler(inner, lengths, group=3)))
    assert [len(b) for b in grouped] == [len(b) for b in plain]
    assert sorted(i for b in grouped for i in b) == list(range(10))  # every item once
    for g in range(0, len(plain), 3):  # same items per group of 3 batches, longest first
        flat = [i for b in grouped[g : g + 3] for i in b]
        assert sorted(flat) == sorted(i for b in plain[g : g + 3] for i in b)
        assert [lengths[i] for i in flat] == sorted((lengths[i] for i in flat), reverse=True)
    assert len(LengthGroupedBatchSampler(inner, lengths)) == 5
