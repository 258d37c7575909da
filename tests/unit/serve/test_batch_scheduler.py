"""``BatchScheduler``: batched answers equal solo ``Generator.stream`` answers token for token, per-sequence limits,
sequences joining a running batch, error isolation, cancellation and shutdown."""

from __future__ import annotations

import time

import pytest
import torch

from tests.conftest import TINY_CONFIG
from zephyr.generation import BatchScheduler, Generator, StreamState

WORDS = (1, 9, 3, 14, 5, 2, 11, 7)  # 8 prompts of different lengths


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """One torch thread: on this shared 2-core machine more threads only spin against each other."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def generator(tokenizer):
    from zephyr.models.mistral import build_model

    return Generator(build_model(config=TINY_CONFIG, init_seed=0).eval(), tokenizer, model_id="tiny")


@pytest.fixture(scope="module")
def prompts(generator):
    return [generator.prompt_ids([{"role": "user", "content": "sea " * k + "?"}]) for k in WORDS]


def solo(generator, prompt, **kw) -> tuple[StreamState, str]:
    st = StreamState()
    deltas = "".join(generator.stream(prompt, state=st, **kw))
    return st, deltas


def collect(scheduler, prompt, **kw):
    events = []
    handle = scheduler.submit(prompt, on_event=lambda kind, value: events.append((kind, value)), **kw)
    return handle, events


def test_greedy_batch_of_8_equals_solo_token_ids(generator, prompts):
    assert len({len(p) for p in prompts}) == 8  # left padding really differs per row
    ref = [solo(generator, p, max_tokens=16)[0] for p in prompts]
    sched = BatchScheduler(generator, max_batch_size=8, window_ms=50)
    try:
        runs = [collect(sched, p, max_tokens=16) for p in prompts]
        states = [h.wait(60) for h, _ in runs]
    finally:
        sched.close()
    assert sched.max_rows_seen == 8 and sched.steps == 15  # one batch: 1 token from prefill + 15 batched steps
    for r, s, (_, events) in zip(ref, states, runs):
        assert s.token_ids == r.token_ids and len(s.token_ids) == 16
        assert (s.text, s.completion_tokens, s.finish_reason) == (r.text, 16, "length")
        assert "".join(v for k, v in events if k == "delta") == s.text  # streamed deltas add up to the text
        assert [k for k, _ in events][-1] == "finish" and sum(k == "finish" for k, _ in events) == 1


def test_mixed_options_and_late_joiners_equal_solo(generator, prompts):
    """Sampled (seeded) and greedy rows with different max_tokens and stop strings, arriving while a batch runs."""
    stop = solo(generator, prompts[2], max_tokens=20)[0].text[5:8]
    opts = [
        {"max_tokens": 4 + 3 * i, "temperature": 0.9 if i % 2 else 0.0, "top_p": 0.8, "seed": 100 + i}
        for i in range(len(prompts))
    ]
    opts[2] = {"max_tokens": 20, "stop": [stop]}
    ref = [solo(generator, p, **o)[0] for p, o in zip(prompts, opts)]
    sched = BatchScheduler(generator, max_batch_size=8, window_ms=0)
    try:
        handles = []
        for p, o in zip(prompts, opts):
            handles.append(sched.submit(p, **o))
            time.sleep(0.02)  # later ones join a batch that is already decoding
        states = [h.wait(60) for h in handles]
    finally:
        sched.close()
    assert sched.max_rows_seen >= 3
    for r, s, o in zip(ref, states, opts):
        assert (s.token_ids, s.text, s.finish_reason) == (r.token_ids, r.text, r.finish_reason)
        assert s.completion_tokens == r.completion_tokens <= o["max_tokens"]
    assert states[2].finish_reason == "stop" and stop not in states[2].text


def test_a_failing_sequence_ends_alone(generator, prompts):
    ref = [solo(generator, p, max_tokens=8)[0] for p in prompts[:3]]
    sched = BatchScheduler(generator, max_batch_size=8, window_ms=50)
    try:
        bad, bad_events = collect(sched, [1, 10**7], max_tokens=8)  # token id outside the vocabulary
        good = [sched.submit(p, max_tokens=8) for p in prompts[:3]]
        with pytest.raises(IndexError):
            bad.wait(60)
        assert [k for k, _ in bad_events] == ["error"]
        assert [h.wait(60).token_ids for h in good] == [r.token_ids for r in ref]
        # the scheduler keeps serving afterwards
        assert sched.submit(prompts[0], max_tokens=8).wait(60).token_ids == ref[0].token_ids
    finally:
        sched.close()


def test_cancel_and_shutdown(generator, prompts):
    sched = BatchScheduler(generator, max_batch_size=2, window_ms=0)
    long_a = sched.submit(prompts[0], max_tokens=2000)
    long_b = sched.submit(prompts[1], max_tokens=2000)
    queued = sched.submit(prompts[2], max_tokens=4)  # no free slot: waits in the queue
    deadline = time.time() + 30
    while sched.steps < 2:
        assert time.time() < deadline
        time.sleep(0.01)
    long_a.cancel()
    with pytest.raises(RuntimeError, match="cancelled"):
        long_a.wait(30)
    assert queued.wait(30).completion_tokens == 4  # took the freed slot
    sched.close()
    with pytest.raises(RuntimeError, match="shutting down"):
        long_b.wait(5)
    assert not sched._thread.is_alive()
    late = sched.submit(prompts[0], max_tokens=4)
    with pytest.raises(RuntimeError, match="shutting down"):
        late.wait(1)


def test_max_batch_size_must_be_positive(generator):
    with pytest.raises(ValueError, match="max_batch_size must be >= 1, got 0"):
        BatchScheduler(generator, max_batch_size=0)
