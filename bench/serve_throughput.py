"""Requests/s and latency of ``zephyr serve`` at several client concurrencies (tiny model unless --model).

Starts the server in-process on a free loopback port (uvicorn in a thread), sends ``--requests`` chat
completions of ``--max-tokens`` greedy tokens per concurrency level from a thread pool of openai clients,
and prints one line per level. Generation is serialized on the server, so higher concurrency mostly
measures queueing: throughput stays flat while latency grows.

    python bench/serve_throughput.py [--model DIR] [--requests 32] [--max-tokens 32] [--concurrency 1 8]
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import tempfile
import threading
import time
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
    ap.add_argument("--requests", type=int, default=32)
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (0 = torch default)")
    args = ap.parse_args()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)

    import uvicorn
    from openai import OpenAI

    from zephyr.serve.app import create_app

    tmp = tempfile.TemporaryDirectory()
    model = Path(args.model) if args.model else tiny_model(Path(tmp.name) / "tiny")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_app(str(model)), host="127.0.0.1", port=port, log_level="warning"))
    threading.Thread(target=server.run, daemon=True).start()
    while not server.started:
        time.sleep(0.05)
    base = f"http://127.0.0.1:{port}/v1"
    messages = [{"role": "user", "content": "Write a short sentence about the sea."}]

    def one(_: int) -> float:
        client = OpenAI(base_url=base, api_key="none", max_retries=0)
        t = time.perf_counter()
        r = client.chat.completions.create(
            model="m", messages=messages, temperature=0, max_tokens=args.max_tokens, seed=0
        )
        assert r.usage.completion_tokens == args.max_tokens or r.choices[0].finish_reason == "stop"
        return time.perf_counter() - t

    for i in range(5):  # warm-up: first forward passes and thread pools are slow
        one(i)
    results = []
    for c in args.concurrency:
        t0 = time.perf_counter()
        with ThreadPoolExecutor(c) as pool:
            lat = list(pool.map(one, range(args.requests)))
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
    server.should_exit = True


if __name__ == "__main__":
    main()
