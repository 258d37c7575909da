"""The OpenAI-compatible app through fastapi's TestClient: shapes, errors, auth, limits, SSE streaming."""

from __future__ import annotations

import json

import pytest
from fastapi.testclient import TestClient

from tests.conftest import TINY_CONFIG
from zephyr.generation import Generator
from zephyr.serve.app import create_app

MSGS = [{"role": "user", "content": "Hello there"}]


@pytest.fixture(scope="module")
def generator(tokenizer):
    from zephyr.models.mistral import build_model

    return Generator(build_model(config=TINY_CONFIG, init_seed=0).eval(), tokenizer, model_id="tiny")


@pytest.fixture(scope="module")
def client(generator):
    return TestClient(create_app(generator=generator, max_tokens_limit=64, max_body_bytes=4000, max_n=3))


def chat(client, **body):
    return client.post("/v1/chat/completions", json={"model": "tiny", "messages": MSGS, **body})


def test_health_and_models(client):
    assert client.get("/health").json() == {"status": "ok", "model": "tiny"}
    models = client.get("/v1/models").json()
    assert models["object"] == "list" and [m["id"] for m in models["data"]] == ["tiny"]
    assert client.get("/v1/models/tiny").json()["id"] == "tiny"
    r = client.get("/v1/models/other")
    assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"


def test_non_streaming_greedy_matches_generator(client, generator):
    r = chat(client, temperature=0, max_tokens=12)
    assert r.status_code == 200
    body = r.json()
    assert body["object"] == "chat.completion" and body["model"] == "tiny"
    (choice,) = body["choices"]
    expected = generator.complete(MSGS, temperature=0, max_tokens=12)[0]
    assert choice["message"] == {"role": "assistant", "content": expected.text}
    assert choice["finish_reason"] == expected.finish_reason == "length"
    n_prompt = len(generator.prompt_ids(MSGS))
    assert body["usage"] == {"prompt_tokens": n_prompt, "completion_tokens": 12, "total_tokens": n_prompt + 12}


def test_seeded_sampling_is_reproducible_and_n_choices_differ(client):
    a = chat(client, temperature=1.0, top_p=0.9, max_tokens=10, seed=7, n=2).json()
    b = chat(client, temperature=1.0, top_p=0.9, max_tokens=10, seed=7, n=2).json()
    texts = [c["message"]["content"] for c in a["choices"]]
    assert texts == [c["message"]["content"] for c in b["choices"]]
    assert [c["index"] for c in a["choices"]] == [0, 1]
    assert texts[0] != texts[1]
    assert a["usage"]["completion_tokens"] == 20


def test_stop_string_cuts_output(client, generator):
    full = generator.complete(MSGS, temperature=0, max_tokens=20)[0].text
    stop = full[6:9]
    assert stop and stop in full
    r = chat(client, temperature=0, max_tokens=20, stop=[stop]).json()
    (choice,) = r["choices"]
    assert choice["message"]["content"] == full[: full.index(stop)]
    assert choice["finish_reason"] == "stop"


def _sse_events(response):
    events = []
    for line in response.iter_lines():
        if line.startswith("data: "):
            events.append(line[len("data: ") :])
    return events


def test_streaming_sse_format_and_equality(client):
    plain = chat(client, temperature=0, max_tokens=12).json()["choices"][0]["message"]["content"]
    body = {"model": "tiny", "messages": MSGS, "temperature": 0, "max_tokens": 12, "stream": True}
    body["stream_options"] = {"include_usage": True}
    with client.stream("POST", "/v1/chat/completions", json=body) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        events = _sse_events(r)
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert len({c["id"] for c in chunks}) == 1
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    assert text == plain
    finish = [c["choices"][0]["finish_reason"] for c in chunks if c["choices"] and c["choices"][0]["finish_reason"]]
    assert finish == ["length"]
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 12


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"messages": []}, "messages"),
        ({"messages": [{"role": "robot", "content": "x"}]}, "messages.0.role"),
        ({"messages": MSGS, "temperature": 3}, "temperature"),
        ({"messages": MSGS, "max_tokens": 0}, "max_tokens"),
        ({"messages": MSGS, "max_tokens": 65}, "max_tokens"),  # over the server's limit
        ({"messages": MSGS, "n": 4}, "n"),
        ({"messages": MSGS, "stop": ["a", "b", "c", "d", "e"]}, "stop"),
    ],
)
def test_invalid_requests_get_openai_400(client, body, param):
    r = client.post("/v1/chat/completions", json=body)
    assert r.status_code == 400
    err = r.json()["error"]
    assert err["type"] == "invalid_request_error"
    assert err["param"] == param
    assert err["message"]


def test_malformed_json_and_oversized_body(client):
    r = client.post("/v1/chat/completions", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 400 and "not valid JSON" in r.json()["error"]["message"]
    big = {"messages": [{"role": "user", "content": "x" * 5000}]}
    r = client.post("/v1/chat/completions", json=big)
    assert r.status_code == 413 and r.json()["error"]["code"] == "too_large"


def test_unknown_route_is_openai_shaped(client):
    r = client.get("/v1/nothing")
    assert r.status_code == 404 and r.json()["error"]["type"] == "not_found_error"


def test_api_key_required_when_set(generator):
    c = TestClient(create_app(generator=generator, api_key="sk-right"))
    for headers in ({}, {"Authorization": "Bearer sk-wrong"}, {"Authorization": "Basic sk-right"}):
        r = c.get("/v1/models", headers=headers)
        assert r.status_code == 401
        assert r.json()["error"] == {
            "message": "Incorrect API key provided.",
            "type": "invalid_request_error",
            "param": None,
            "code": "invalid_api_key",
        }
    assert c.get("/v1/models", headers={"Authorization": "Bearer sk-right"}).status_code == 200
    assert c.get("/health").status_code == 200  # health stays open for probes
