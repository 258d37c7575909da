"""``zephyr serve`` batches concurrent requests: 8 clients at once (streamed and not, different prompt lengths and
max_tokens) get the solo answers token for token, decoded in shared steps; shutdown ends the scheduler thread."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch
import uvicorn
from openai import OpenAI

from tests.conftest import TINY_CONFIG, free_port
from zephyr.generation import Generator, StreamState
from zephyr.serve.app import create_app


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)  # the shared 2-core machine: more threads only spin against each other
    yield
    torch.set_num_threads(n)


def test_concurrent_requests_share_batches_and_equal_solo(tokenizer):
    from zephyr.models.mistral import build_model

    gen = Generator(build_model(config=TINY_CONFIG, init_seed=0).eval(), tokenizer, model_id="tiny")
    convs = [[{"role": "user", "content": "wave " * (1 + 3 * i) + "?"}] for i in range(8)]
    budgets = [12 + i for i in range(8)]
    solo = []
    for c, m in zip(convs, budgets):
        st = StreamState()
        for _ in gen.stream(gen.prompt_ids(c), max_tokens=m, state=st):
            pass
        solo.append(st.text)
    app = create_app(generator=gen, max_batch_size=8, batch_window_ms=200, max_tokens_limit=64)
    port = free_port()
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.time() + 30
    while not srv.started:
        assert time.time() < deadline, "server did not start"
        time.sleep(0.05)
    client = OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="none", max_retries=0)

    def ask(i: int) -> str:
        kw = dict(model="tiny", messages=convs[i], temperature=0, max_tokens=budgets[i])
        if i % 2:  # odd requests stream: one chunk per text delta
            parts = [c.choices[0].delta.content or "" for c in client.chat.completions.create(**kw, stream=True)]
            assert sum(bool(p) for p in parts) > 1
            return "".join(parts)
        r = client.chat.completions.create(**kw)
        assert r.usage.completion_tokens == budgets[i] or r.choices[0].finish_reason == "stop"
        return r.choices[0].message.content

    try:
        with ThreadPoolExecutor(8) as pool:
            got = list(pool.map(ask, range(8)))
        scheduler = app.state.scheduler
        assert got == solo
        assert scheduler.max_rows_seen >= 4  # requests really were decoded together
        assert scheduler.steps < sum(budgets) - 8  # far fewer forward steps than one request at a time
    finally:
        srv.should_exit = True
        thread.join(timeout=20)
    assert not thread.is_alive()
    assert not app.state.scheduler._thread.is_alive()  # the lifespan shutdown stopped the scheduler
