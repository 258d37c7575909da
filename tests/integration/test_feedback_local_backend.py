"""The local-checkpoint backend on the tiny Mistral: chat template, left-padded batches, seeds, stop, pool use."""

import json

import pytest
import torch
from transformers import MistralConfig, MistralForCausalLM

from tests.conftest import TINY_CONFIG
from zephyr.feedback.backends import LocalCheckpointBackend, build_pool
from zephyr.feedback.complete import FeedbackConfig, collect_feedback, load_prompts
from zephyr.tokenizer import load_tokenizer, save_tokenizer
from zephyr.toy.judge import VerifierJudge

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    torch.manual_seed(0)
    cfg = MistralConfig(**TINY_CONFIG)
    path = tmp_path_factory.mktemp("tiny")
    MistralForCausalLM(cfg).save_pretrained(path)
    save_tokenizer(load_tokenizer(), path)
    return path


def test_batched_greedy_matches_one_by_one(ckpt):
    b = LocalCheckpointBackend(str(ckpt), batch_size=3)
    convs = [
        [{"role": "user", "content": "What is 2 + 2?"}],
        [{"role": "user", "content": "Sort these numbers from smallest to largest: 5, 3, 9, 1, 7, 2."}],
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
        [{"role": "user", "content": "Reverse the list [1, 2]."}],
    ]
    batched = b.chat_batch(convs, temperature=0.0, max_tokens=6)
    single = [b.chat(c, temperature=0.0, max_tokens=6) for c in convs]
    assert [r.texts for r in batched] == [r.texts for r in single]
    assert all(r.completion_tokens <= 6 and r.finish_reasons[0] in ("stop", "length") for r in batched)
    assert batched[0].prompt_tokens < batched[1].prompt_tokens  # padding is not counted
    assert b.name == ckpt.name


def test_sampling_seed_n_and_stop(ckpt):
    b = LocalCheckpointBackend(str(ckpt), name="tiny")
    msgs = [{"role": "user", "content": "Tell me a story."}]
    r1 = b.chat(msgs, temperature=1.0, max_tokens=8, n=3, seed=5)
    r2 = b.chat(msgs, temperature=1.0, max_tokens=8, n=3, seed=5)
    assert len(r1.texts) == 3 and r1.texts == r2.texts and r1.model == "tiny"
    assert len(set(r1.texts)) > 1  # three different samples
    assert len(r1.texts[0]) >= 6
    stop = r1.texts[0][3:6]
    cut = b.chat(msgs, temperature=1.0, max_tokens=8, n=3, seed=5, stop=[stop])
    assert cut.texts[0] == r1.texts[0][: r1.texts[0].index(stop)].strip() and cut.finish_reasons[0] == "stop"


def test_local_checkpoint_joins_the_toy_pool(ckpt, tmp_path):
    pool = build_pool({"type": "toy_pool", "seed": 0})[:3] + [LocalCheckpointBackend(str(ckpt), name="tiny-dsft")]
    prompts = load_prompts({"source": "toy_tasks", "n": 6, "seed": 3})
    cfg = FeedbackConfig.from_config(
        models_per_prompt=None, progress=False, completion_gen={"temperature": 0.0, "max_tokens": 8}
    )
    summary = collect_feedback(prompts, pool, VerifierJudge(), tmp_path, cfg)
    assert summary["complete"], summary
    rows = [json.loads(x) for x in (tmp_path / "ultrafeedback.jsonl").read_text().splitlines()]
    tiny = [c for r in rows for c in r["completions"] if c["model"] == "tiny-dsft"]
    assert len(tiny) == 6
    # a random tiny model cannot answer: the verifier never rates it truthful, and it is never the best
    assert all(c["annotations"]["truthfulness"]["Rating"] != "5" for c in tiny)
    best = [max(r["completions"], key=lambda c: c["fine-grained_score"])["model"] for r in rows]
    assert "tiny-dsft" not in best


def test_backend_runs_the_shared_generator(ckpt):
    b = LocalCheckpointBackend(str(ckpt), batch_size=2)
    convs = [[{"role": "user", "content": "Hi"}], [{"role": "user", "content": "Name three colours, please."}]]
    ids = b.generator.prompt_ids(convs[0])
    assert ids[0] == 1  # BOS: the Zephyr template writes none, the tokenizer adds it
    resp = b.chat_batch(convs, temperature=0.0, max_tokens=5)
    direct = b.generator.generate_batch(convs, temperature=0.0, max_tokens=5)
    assert [r.texts[0] for r in resp] == [c.text.strip() for c in direct]
    assert resp[0].prompt_tokens == len(ids)
    state = torch.get_rng_state()
    b.chat(convs[0], temperature=1.0, max_tokens=3, seed=3)
    assert torch.equal(torch.get_rng_state(), state)  # a seeded call leaves the global RNG as it was
