"""``iterate.generation.backend=vllm``: the in-process vLLM engine answers for the policy like the local backend.

On a tiny Mistral export (the real tokenizer, the Zephyr template): the engine renders the same prompt as
:class:`~zephyr.generation.LocalCheckpointBackend` (same prompt token count), honours ``n``, ``max_tokens``
and the seed, and its greedy answers start like the local backend's greedy answers on the same GPU. Skipped
without CUDA (tests/gpu/conftest.py) or without vLLM installed (``pip install -e '.[vllm]'``).
"""

from __future__ import annotations

import pytest
import torch
from transformers import MistralConfig, MistralForCausalLM

from tests.conftest import TINY_CONFIG
from zephyr.generation import LocalCheckpointBackend
from zephyr.models.export import export_hf
from zephyr.tokenizer import load_tokenizer

pytest.importorskip("vllm")

CONVS = [
    [{"role": "user", "content": "What is 2 + 2?"}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Sort 5, 3, 9."}],
]


@pytest.fixture(scope="module")
def export(tmp_path_factory):
    torch.manual_seed(0)
    model = MistralForCausalLM(MistralConfig(**TINY_CONFIG))
    return export_hf(model, load_tokenizer(), tmp_path_factory.mktemp("tiny") / "model", dtype="bfloat16")


def test_vllm_backend_answers_like_the_local_backend(export):
    from zephyr.iterate import VLLMBackend

    engine = VLLMBackend(export, "round1", gpu_memory_utilization=0.2)
    local = LocalCheckpointBackend(export, "round1", device="cuda", dtype="bfloat16")
    fast = engine.chat_batch(CONVS, temperature=0.0, max_tokens=8)
    slow = local.chat_batch(CONVS, temperature=0.0, max_tokens=8)
    assert [r.prompt_tokens for r in fast] == [r.prompt_tokens for r in slow]  # one prompt rendering
    assert all(r.model == "round1" and r.completion_tokens <= 8 for r in fast)
    # bf16 kernels differ (paged attention vs sdpa): the first greedy words agree, not necessarily every token
    for f, s in zip(fast, slow, strict=True):
        assert f.texts[0].split()[:1] == s.texts[0].split()[:1]
    sampled = engine.chat(CONVS[0], temperature=1.0, max_tokens=8, n=3, seed=7)
    assert len(sampled.texts) == 3 and sampled.completion_tokens <= 24
    assert engine.chat(CONVS[0], temperature=1.0, max_tokens=8, n=3, seed=7).texts == sampled.texts
