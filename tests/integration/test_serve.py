"""``zephyr serve`` on loopback with the official openai SDK; ``zephyr generate`` and ``zephyr eval`` end to end."""

from __future__ import annotations

import json
import threading
import time

import openai
import pytest
import uvicorn
from openai import OpenAI

from tests.conftest import TINY_CONFIG, free_port
from zephyr.cli import main
from zephyr.serve.app import create_app

KEY = "sk-zephyr-test"
MSGS = [{"role": "user", "content": "Name three colours."}]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, tokenizer):
    from zephyr.models.mistral import build_model
    from zephyr.tokenizer import save_tokenizer

    d = tmp_path_factory.mktemp("tiny")
    build_model(config=TINY_CONFIG, init_seed=0).save_pretrained(d)
    save_tokenizer(tokenizer, d)
    return d


@pytest.fixture(scope="module")
def server(model_dir):
    app = create_app(str(model_dir), api_key=KEY, max_tokens_limit=128)
    port = free_port()
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.time() + 30
    while not srv.started:
        assert time.time() < deadline, "server did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}/v1"
    srv.should_exit = True
    thread.join(timeout=10)


@pytest.fixture(scope="module")
def client(server):
    return OpenAI(base_url=server, api_key=KEY, max_retries=0)


def test_chat_and_models(client, model_dir):
    assert [m.id for m in client.models.list().data] == [model_dir.name]
    r = client.chat.completions.create(model=model_dir.name, messages=MSGS, temperature=0, max_tokens=16, seed=3)
    assert r.object == "chat.completion"
    assert r.choices[0].message.role == "assistant" and r.choices[0].message.content
    assert r.choices[0].finish_reason == "length"
    assert r.usage.completion_tokens == 16 and r.usage.total_tokens == r.usage.prompt_tokens + 16


def test_streaming_equals_non_streaming(client, model_dir):
    kw = dict(model=model_dir.name, messages=MSGS, temperature=0, max_tokens=20, seed=5)
    plain = client.chat.completions.create(**kw).choices[0].message.content
    stream = client.chat.completions.create(**kw, stream=True)
    parts, finish = [], None
    for chunk in stream:
        assert chunk.object == "chat.completion.chunk"
        if chunk.choices[0].delta.content:
            parts.append(chunk.choices[0].delta.content)
        finish = chunk.choices[0].finish_reason or finish
    assert "".join(parts) == plain
    assert finish == "length" and len(parts) > 1


def test_n_and_stop(client, model_dir):
    r = client.chat.completions.create(model="x", messages=MSGS, temperature=0.9, max_tokens=8, n=2, seed=11)
    assert [c.index for c in r.choices] == [0, 1]
    assert r.choices[0].message.content != r.choices[1].message.content
    full = client.chat.completions.create(model="x", messages=MSGS, temperature=0, max_tokens=24)
    text = full.choices[0].message.content
    stop = text[8:11]
    cut = client.chat.completions.create(model="x", messages=MSGS, temperature=0, max_tokens=24, stop=stop)
    assert cut.choices[0].message.content == text[: text.index(stop)]
    assert cut.choices[0].finish_reason == "stop"


def test_auth_failure(server):
    bad = OpenAI(base_url=server, api_key="sk-wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as e:
        bad.chat.completions.create(model="x", messages=MSGS, max_tokens=4)
    assert e.value.status_code == 401
    assert e.value.body["code"] == "invalid_api_key"


def test_bad_requests(client):
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="x", messages=[], max_tokens=4)
    assert e.value.body["param"] == "messages"
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="x", messages=MSGS, max_tokens=1000)
    assert "over this server's limit 128" in e.value.body["message"]


def test_generate_cli_and_resume(model_dir, tmp_path, capsys):
    src = tmp_path / "prompts.jsonl"
    src.write_text("".join(json.dumps({"id": i, "prompt": f"Say {i}."}) + "\n" for i in range(5)))
    out = tmp_path / "answers.jsonl"
    args = ["generate", "--model", str(model_dir), "--input", str(src), "--output", str(out), "--max-tokens", "6"]
    assert main([*args, "--batch-size", "2", "--no-progress"]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["id"] for r in rows] == ["0", "1", "2", "3", "4"]
    assert all(r["completion_tokens"] <= 6 and r["model_id"] == model_dir.name for r in rows)
    assert main([*args, "--no-progress"]) == 0
    assert "0 generated, 5 already there" in capsys.readouterr().out


def test_mt_bench_cli_against_live_server_with_toy_judge(server, model_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("ZEPHYR_TEST_KEY", KEY)
    out = tmp_path / "mtb"
    argv = ["eval", "mt-bench", "--endpoint", server, "--endpoint-model", model_dir.name, "--api-key-env"]
    argv += ["ZEPHYR_TEST_KEY", "--limit", "8", "--max-tokens", "8", "--out", str(out), "--no-progress"]
    assert main(argv) == 0
    answers = [json.loads(line) for line in (out / "model_answer" / f"{model_dir.name}.jsonl").read_text().splitlines()]
    assert len(answers) == 8 and all(len(a["choices"][0]["turns"]) == 2 for a in answers)
    results = json.loads((out / "results.json").read_text())
    s = results["single"][model_dir.name]
    assert s["n_valid"] + s["n_failed"] == 16 and s["n_failed"] == 0
    assert 1 <= s["score"] <= 10
    # pairwise against itself-as-baseline: identical answers are ties in both orders
    base = out / "model_answer" / f"{model_dir.name}.jsonl"
    argv = ["eval", "mt-bench", "--answers", str(base), "--mode", "pairwise", "--baseline-answers", str(base)]
    assert main([*argv, "--limit", "8", "--out", str(out)]) == 0
    pw = json.loads((out / "results.json").read_text())["pairwise"]["overall"]
    assert (pw["win"], pw["loss"], pw["tie"]) == (0, 0, 16)
    assert "| overall | 0 | 0 | 16 | 0 | 0.000 | 0.500 |" in (out / "results.md").read_text()
