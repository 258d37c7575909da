"""Resume exactness under faults: a flaky OpenAI-compatible server, kill -9 mid-collection, restart.

A FastAPI fake on 127.0.0.1 (random free port, in a thread) answers chat completions for 4 pool models and a
judge, and injects ~30 % faults: 500s, 429s, timeouts (it sleeps past the client's timeout), and malformed
replies (judge replies with out-of-range ratings or a missing block; completions with no choices), and, in
``test_truncated_bodies_are_retried``, 200 responses whose JSON body is cut mid-way. The
collection runs in a subprocess (``python -m zephyr.feedback.cli data feedback``) that is killed with SIGKILL
mid-way and restarted until it reports completion. Then every prompt x model must be present exactly once with
valid ratings, no key may have two ``ok`` rows in the stores, and the API key must appear in no file.
"""

import asyncio
import json
import os
import random
import re
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pytest
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from tests.conftest import free_port

pytestmark = pytest.mark.integration

POOL = ["pool-a", "pool-b", "pool-c", "pool-d"]
KEY = "sk-fake-" + "".join(random.Random(os.getpid()).choice("0123456789abcdef") for _ in range(32))


def _judge_reply(prompt: str) -> str:
    """A well-formed UltraFeedback reply: ratings derived from the text (deterministic)."""
    if "Overall Score" in prompt and "### Answer" in prompt:
        answer = prompt.split("### Answer\n", 1)[1].split("\n---", 1)[0]
        return f"### Feedback\nClear enough.\nOverall Score: {1 + len(answer) % 10}"
    section = prompt.rsplit("Texts:\n", 1)[1].split("\n\n", 1)[0]
    texts = re.findall(r"^<text \d+> (.*)$", section, re.M)
    typed = "Type:" in prompt.split("---", 1)[0]
    blocks = []
    for i, t in enumerate(texts, 1):
        rating = 1 + sum(map(ord, t)) % 5
        body = (
            f"Type: None\nRationale: ok\nRating: {rating}\nRationale: fine"
            if typed
            else f"Rating: {rating}\nRationale: ok"
        )
        blocks.append(f"#### Output for Text {i}\n{body}")
    return "Here is my evaluation.\n\n" + "\n\n".join(blocks)


def make_app(faults: Counter, fault_rate: float = 0.3, kinds: tuple[str, ...] | None = None) -> FastAPI:
    app = FastAPI()
    rng = random.Random(1234)
    lock = threading.Lock()

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        if request.headers.get("authorization") != f"Bearer {KEY}":
            faults["unauthorized"] += 1
            return JSONResponse({"error": {"message": "bad key"}}, status_code=401)
        body = await request.json()
        model = body["model"]
        prompt = body["messages"][-1]["content"]
        with lock:
            u, kind = rng.random(), rng.random()
        await asyncio.sleep(0.004)  # a little latency so the kill lands mid-way
        fault = None
        if u < fault_rate:
            fault = "500" if kind < 0.33 else "429" if kind < 0.6 else "timeout" if kind < 0.75 else "malformed"
            if kinds:
                fault = kinds[int(kind * len(kinds))]
        faults[fault or "ok"] += 1
        if fault == "500":
            return JSONResponse({"error": {"message": "internal"}}, status_code=500)
        if fault == "429":
            return JSONResponse({"error": {"message": "slow down"}}, status_code=429, headers={"retry-after": "0"})
        if fault == "timeout":
            await asyncio.sleep(2.0)
        if model == "judge":
            text = _judge_reply(prompt)
            if fault == "malformed":
                text = text.replace("Rating: ", "Rating: 1", 1) if "Rating" in text else text + "\nOverall Score: 15"
                text = text.rsplit("\n\n", 1)[0] if "Output for Text" in text and kind > 0.9 else text
            choices = [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}]
        else:
            text = f"{model} says: the answer to '{prompt[:40]}' is {len(prompt) % 97}."
            choices = [] if fault == "malformed" else [
                {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}
            ]  # fmt: skip
        reply = {
            "id": "cmpl-1",
            "object": "chat.completion",
            "created": 0,
            "model": model,
            "choices": choices,
            "usage": {"prompt_tokens": len(prompt.split()), "completion_tokens": len(text.split()), "total_tokens": 1},
        }
        if fault == "truncated":  # a 200 whose body stops mid-JSON (Content-Length matches the cut body)
            raw = json.dumps(reply).encode()
            return Response(raw[: len(raw) // 2], status_code=200, media_type="application/json")
        return reply

    return app


@pytest.fixture()
def server(request):
    faults: Counter = Counter()
    port = free_port()
    app = make_app(faults, **getattr(request, "param", {}))
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.time() + 10
    while not srv.started:
        assert time.time() < deadline, "fake server did not start"
        time.sleep(0.02)
    yield f"http://127.0.0.1:{port}/v1", faults
    srv.should_exit = True
    thread.join(timeout=5)


def _config(tmp: Path, base_url: str, n_prompts: int, max_retries: int = 2) -> Path:
    prompts = tmp / "prompts.jsonl"
    prompts.write_text(
        "".join(json.dumps({"prompt": f"Question {i}: what is {i} + {2 * i}?"}) + "\n" for i in range(n_prompts))
    )
    common = (
        f"base_url: '{base_url}', api_key_env: ZEPHYR_FAKE_KEY, timeout: 0.5, max_retries: {max_retries}, "
        "backoff_base: 0.01, backoff_max: 0.05"
    )
    pool = "\n".join(f"  - {{type: openai, model: {m}, {common}}}" for m in POOL)
    cfg = tmp / "fake.yaml"
    cfg.write_text(
        f"workers: 4\npool:\n{pool}\njudge: {{type: openai, model: judge, {common}}}\n"
        f"feedback:\n  prompts: {{source: jsonl, path: '{prompts}', field: prompt}}\n"
        "  models_per_prompt: null\n  judge_retries: 1\n"
    )
    return cfg


def _run(cfg: Path, out: Path, log: Path) -> subprocess.Popen:
    env = {**os.environ, "ZEPHYR_FAKE_KEY": KEY, "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "zephyr.feedback.cli", "data", "feedback", "--config", str(cfg), "--out", str(out)]
    with open(log, "ab") as fh:
        return subprocess.Popen(cmd + ["--no-progress"], stdout=fh, stderr=subprocess.STDOUT, env=env)


def _lines(path: Path) -> int:
    return path.read_bytes().count(b"\n") if path.exists() else 0


def test_kill9_resume_under_faults(tmp_path, server):
    base_url, faults = server
    n_prompts = 24
    cfg = _config(tmp_path, base_url, n_prompts)
    out, log = tmp_path / "out", tmp_path / "collect.log"

    # run 1 is killed with SIGKILL during the completions, run 2 during the judging
    for store, at_least in (("completions.jsonl", 30), ("judgements.jsonl", 3)):
        proc = _run(cfg, out, log)
        deadline = time.time() + 30
        while _lines(out / store) < at_least:
            assert proc.poll() is None, f"collection ended before the kill:\n{log.read_text()[-2000:]}"
            assert time.time() < deadline, "no progress within 30 s"
            time.sleep(0.01)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        assert proc.returncode == -signal.SIGKILL
    # the kill may leave a torn line; emulate the worst case explicitly as well
    with open(out / "completions.jsonl", "ab") as f:
        f.write(b'{"key": ["torn", "pool-a"], "status": "ok", "val')

    # restarts until complete (failures recorded in one run are retried in the next)
    runs = 0
    while runs < 6:
        runs += 1
        proc = _run(cfg, out, log)
        assert proc.wait(timeout=60) in (0, 1)
        summary = json.loads((out / "feedback_summary.json").read_text())
        if summary["complete"]:
            break
    assert summary["complete"], summary

    # every prompt x model exactly once, with valid ratings
    rows = [json.loads(x) for x in (out / "ultrafeedback.jsonl").read_text().splitlines()]
    assert len(rows) == n_prompts
    assert len({r["instruction"] for r in rows}) == n_prompts
    for r in rows:
        assert sorted(r["models"]) == POOL
        assert sorted(c["model"] for c in r["completions"]) == POOL
        for c in r["completions"]:
            assert c["response"].startswith(c["model"] + " says:")
            for aspect in ("instruction_following", "honesty", "truthfulness", "helpfulness"):
                assert c["annotations"][aspect]["Rating"] in {"1", "2", "3", "4", "5"}
            expected = str(1 + sum(map(ord, c["response"])) % 5)
            assert c["annotations"]["helpfulness"]["Rating"] == expected  # mapped back through the shuffle
            assert 1 <= c["overall_score"] <= 10

    # stores: no key has two ok rows (nothing duplicated), the torn line was dropped
    for store, n_keys in (("completions.jsonl", n_prompts * len(POOL)), ("judgements.jsonl", n_prompts)):
        ok = Counter()
        for line in (out / store).read_text().splitlines():
            row = json.loads(line)
            if row["status"] == "ok":
                ok[tuple(row["key"])] += 1
        assert len(ok) == n_keys and set(ok.values()) == {1}, store
    assert "torn" in log.read_text()
    # some calls failed for good within a run (empty choices are not retried by the client; retries can run out):
    # they were recorded as failure rows, with the cause, and redone by a later run
    failed_rows = [json.loads(x) for x in (out / "completions.jsonl").read_text().splitlines() if '"failed"' in x]
    causes = r"response without choices|APITimeoutError|InternalServerError|RateLimitError"
    assert failed_rows and all(re.search(causes, r["error"]) for r in failed_rows), failed_rows

    # faults really happened, and the key is nowhere on disk
    assert all(faults[k] > 0 for k in ("500", "429", "timeout", "malformed")), faults
    assert faults["unauthorized"] == 0
    for path in [*out.rglob("*"), log]:
        if path.is_file():
            assert KEY not in path.read_text(errors="replace"), path


@pytest.mark.parametrize("server", [{"fault_rate": 0.3, "kinds": ("truncated", "truncated", "500")}], indirect=True)
def test_truncated_bodies_are_retried(tmp_path, server):
    """200 responses with a body cut mid-JSON are retried like a 5xx: one uninterrupted run completes every row."""
    base_url, faults = server
    n_prompts = 12
    cfg = _config(tmp_path, base_url, n_prompts, max_retries=8)
    out, log = tmp_path / "out", tmp_path / "collect.log"
    proc = _run(cfg, out, log)
    assert proc.wait(timeout=60) == 0, log.read_text()[-2000:]
    summary = json.loads((out / "feedback_summary.json").read_text())
    assert summary["complete"] and summary["failed_completions"] == [] and summary["failed_prompts"] == []
    assert summary["completions"]["failed_now"] == 0 and summary["judging"]["failed_now"] == 0
    rows = [json.loads(x) for x in (out / "ultrafeedback.jsonl").read_text().splitlines()]
    assert len(rows) == n_prompts
    assert all(sorted(c["model"] for c in r["completions"]) == POOL for r in rows)
    # no failure row was ever written: every bad body was retried within the run
    assert '"failed"' not in (out / "completions.jsonl").read_text() + (out / "judgements.jsonl").read_text()
    # the summary counts the bad bodies, per backend and in total, and they equal what the server sent
    assert faults["truncated"] > 0 and faults["500"] > 0, faults
    per_backend = summary["backend_calls"]
    assert sorted(per_backend) == sorted([*POOL, "judge"])
    assert summary["bad_bodies"] == sum(b["bad_bodies"] for b in per_backend.values()) == faults["truncated"]
    assert sum(b["retries"] for b in per_backend.values()) == faults["truncated"] + faults["500"]
    assert sum(b["calls"] for b in per_backend.values()) == sum(faults.values())
