"""Requests/s and latency of ``zephyr serve`` at several client concurrencies (tiny model unless --model).

Starts ``zephyr serve`` in a subprocess on a free loopback port (so the clients do not share its GIL), sends
``--requests`` chat completions of ``--max-tokens`` greedy tokens per concurrency level from a thread pool of
httpx clients (request ``i`` asks prompt ``i mod 8``: 8 prompts of different lengths), prints one line per
level and writes
``--out`` (JSON: one row per level, ``speedup_vs_c1``, and ``identical_outputs``: every request's text equals
the one it got at concurrency 1). The server batches concurrent requests (``--max-batch-size``), so
requests/s grows with concurrency. One run on a shared machine: the figures are noisy.

    python bench/serve_throughput.py [--model DIR] [--requests 128] [--max-tokens 32] [--concurrency 1 4 8]
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path


def tiny_model(out: Path) -> Path:
    import torch
    from transformers import MistralConfig, MistralForCausalLM

    from zephyr.tokenizer import load_tokenizer, save_tokenizer

    torch.manual_seed(0)
    cfg = MistralConfig(
        vocab_size=32000, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=2048, tie_word_embeddings=False,
    )  # fmt: skip
    MistralForCausalLM(cfg).save_pretrained(out)
    save_tokenizer(load_tokenizer(), out)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None)
    ap.add_argument("--requests", type=int, default=128, help="per level: enough for the steady state at 8")
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 8])
    ap.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (0 = torch default)")
    ap.add_argument("--max-batch-size", type=int, default=8)
    ap.add_argument("--batch-window-ms", type=float, default=20.0)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "serve.json"))
    args = ap.parse_args()
    import httpx

    tmp = tempfile.TemporaryDirectory()
    model = Path(args.model) if args.model else tiny_model(Path(tmp.name) / "tiny")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "zephyr.cli", "serve", "--model", str(model), "--port", str(port)]
    cmd += ["--threads", str(args.threads), "--max-batch-size", str(args.max_batch_size)]
    cmd += ["--batch-window-ms", str(args.batch_window_ms), "--log-level", "warning"]
    server = subprocess.Popen(cmd)
    deadline = time.time() + 120
    while True:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1).read()
            break
        except OSError:
            if server.poll() is not None or time.time() > deadline:
                raise SystemExit(f"serve_throughput: error: the server did not start ({' '.join(cmd)})") from None
            time.sleep(0.2)
    base = f"http://127.0.0.1:{port}/v1"
    prompts = [[{"role": "user", "content": "Write a sentence about the sea. " * (1 + 2 * k)}] for k in range(8)]
    texts: dict[tuple[int, int], str] = {}  # (concurrency, request) -> answer

    local = threading.local()

    def connect() -> None:
        if not hasattr(local, "client"):  # one keep-alive connection per worker thread; plain httpx keeps the
            local.client = httpx.Client(base_url=base, timeout=120)  # client's CPU share small on 2 cores
            local.client.get("/models").raise_for_status()

    def one(i: int, c: int = 0) -> float:
        connect()
        t = time.perf_counter()
        body = {"model": "m", "messages": prompts[i % len(prompts)], "temperature": 0, "max_tokens": args.max_tokens}
        r = local.client.post("/chat/completions", json=body)
        r.raise_for_status()
        r = r.json()
        assert r["usage"]["completion_tokens"] == args.max_tokens or r["choices"][0]["finish_reason"] == "stop"
        texts[(c, i)] = r["choices"][0]["message"]["content"]
        return time.perf_counter() - t

    for i in range(5):  # warm-up: first forward passes and thread pools are slow
        one(i)
    results = []
    for c in args.concurrency:
        with ThreadPoolExecutor(c) as pool:
            # each of the pool's threads opens its client and connection before the clock starts: a new
            # httpx.Client costs ~10 ms of CPU here, which is the client's set-up, not the server's throughput
            ready = threading.Barrier(c, timeout=60)
            list(pool.map(lambda _, ready=ready: (connect(), ready.wait()), range(c)))
            t0 = time.perf_counter()
            lat = list(pool.map(lambda i, c=c: one(i, c), range(args.requests)))
            wall = time.perf_counter() - t0
        row = {
            "concurrency": c,
            "requests": args.requests,
            "max_tokens": args.max_tokens,
            "requests_per_s": round(args.requests / wall, 2),
            "tokens_per_s": round(args.requests * args.max_tokens / wall, 1),
            "latency_p50_s": round(statistics.median(lat), 3),
            "latency_max_s": round(max(lat), 3),
        }
        results.append(row)
        print(json.dumps(row))
    server.terminate()
    server.wait(timeout=30)
    base_c = args.concurrency[0]
    for row in results:
        row["speedup_vs_c1"] = round(row["requests_per_s"] / results[0]["requests_per_s"], 2)
    same = all(texts[(c, i)] == texts[(base_c, i)] for c in args.concurrency for i in range(args.requests))
    report = {
        "model": "tiny random-init Mistral (2 layers x 64, vocab 32000)" if not args.model else str(args.model),
        "max_tokens": args.max_tokens,
        "greedy": True,
        "threads": args.threads,
        "max_batch_size": args.max_batch_size,
        "batch_window_ms": args.batch_window_ms,
        "identical_outputs": same,
        "note": "one run on the quiet 2-core machine",
        "levels": results,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(f"identical outputs across concurrencies: {same}; wrote {args.out}")


if __name__ == "__main__":
    main()
