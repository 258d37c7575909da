"""``zephyr serve``: run the OpenAI-compatible server for an exported checkpoint with uvicorn."""

from __future__ import annotations

import argparse
import ipaddress
import os
import sys

API_KEY_ENV = "ZEPHYR_API_KEY"


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def cmd_serve(args: argparse.Namespace) -> int:
    if args.max_batch_size < 1:
        raise ValueError(f"--max-batch-size must be at least 1, got {args.max_batch_size}")
    if args.batch_window_ms < 0:
        raise ValueError(f"--batch-window-ms must be >= 0, got {args.batch_window_ms}")
    api_key = args.api_key or os.environ.get(API_KEY_ENV) or None
    if not _is_loopback(args.host) and api_key is None:
        if not args.insecure_no_auth:
            raise ValueError(
                f"--host {args.host} is not a loopback address and needs an API key: set --api-key or "
                f"${API_KEY_ENV} (or pass --insecure-no-auth to serve without one)"
            )
        print(
            f"zephyr serve: warning: listening on {args.host} without an API key (--insecure-no-auth); anyone "
            "who can reach this port can use the model",
            file=sys.stderr,
        )

    import uvicorn

    from zephyr.serve.app import create_app

    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    app = create_app(
        args.model,
        api_key=api_key,
        model_id=args.model_id,
        max_tokens_limit=args.max_tokens_limit,
        default_max_tokens=args.default_max_tokens,
        max_body_bytes=args.max_body_bytes,
        max_n=args.max_n,
        device=args.device,
        dtype=args.dtype,
        max_batch_size=args.max_batch_size,
        batch_window_ms=args.batch_window_ms,
    )
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level)
    return 0


def register(subparsers) -> None:
    """Add the ``serve`` command."""
    p = subparsers.add_parser(
        "serve",
        help="OpenAI-compatible chat server for an exported checkpoint",
        description="Serve POST /v1/chat/completions (with streaming), GET /v1/models and GET /health.",
    )
    p.add_argument("--model", required=True, help="exported checkpoint directory (config.json + tokenizer)")
    p.add_argument("--host", default="127.0.0.1", help="bind address (default loopback only)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--api-key", default=None, help=f"require this Bearer token (default: ${API_KEY_ENV} if set)")
    p.add_argument(
        "--insecure-no-auth",
        action="store_true",
        help="allow a non-loopback --host without an API key (refused otherwise)",
    )
    p.add_argument("--model-id", default=None, help="model name reported to clients (default: directory name)")
    p.add_argument("--max-tokens-limit", type=int, default=2048, help="reject requests asking for more new tokens")
    p.add_argument("--default-max-tokens", type=int, default=256, help="new tokens when a request sets none")
    p.add_argument("--max-body-bytes", type=int, default=1_000_000, help="reject larger request bodies (413)")
    p.add_argument("--max-n", type=int, default=8, help="most choices per request")
    p.add_argument("--device", default="cpu", help="torch device (cpu, cuda, cuda:1)")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    p.add_argument(
        "--threads", type=int, default=0, help="torch CPU threads (0 = torch default; 1 is best on a busy machine)"
    )
    p.add_argument("--max-batch-size", type=int, default=8, help="most sequences decoded together (1 = one at a time)")
    p.add_argument(
        "--batch-window-ms",
        type=float,
        default=20.0,
        help="when idle, how long the first request waits for requests still being read to join its batch",
    )
    p.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    p.set_defaults(func=cmd_serve)
