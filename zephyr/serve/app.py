"""An OpenAI-compatible chat server for any exported checkpoint (FastAPI; ``zephyr serve`` runs it with uvicorn).

Endpoints: ``POST /v1/chat/completions`` (JSON or ``stream=true`` server-sent events in OpenAI's
``chat.completion.chunk`` format, ending with ``data: [DONE]``), ``GET /v1/models``, ``GET /v1/models/{id}``,
``GET /health``. The official ``openai`` SDK works against it unchanged.

Design choices:

* The model loads once; requests are decoded together by a ``BatchScheduler`` (continuous batching: up to
  ``max_batch_size`` sequences per step; a request arriving while a batch runs joins it at the next step; when
  idle, the first arrival waits ``batch_window_ms`` for others). Each sequence keeps its own max_tokens,
  temperature, top_p, stop strings and seeded sampler, so greedy answers are the solo run's tokens and seeded
  ones are reproducible (see ``BatchScheduler``). A sequence that fails ends its own request only.
* Generation runs in the scheduler thread, so ``/health`` answers while requests are generating. Streaming
  requests get one SSE chunk per final text delta; a client that disconnects cancels its sequences at the
  next step. Shutting the app down ends queued and running sequences with an error and stops the thread.
* We parse and validate the body ourselves (pydantic, ``extra="ignore"`` so unknown OpenAI parameters such
  as ``presence_penalty`` pass) to bound its size while reading and to answer every problem in OpenAI's
  error shape ``{"error": {"message", "type", "param", "code"}}``: 400 for invalid requests, 401 for a
  wrong bearer token, 404 for unknown routes/models, 413 for oversized bodies.
* ``n`` choices are ``n`` sequences in the batch with seeds ``seed, seed+1, ...`` (``choice_seeds``), so
  choice ``i`` of a streamed request equals choice ``i`` of the same request without streaming.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import time
import uuid
from contextlib import asynccontextmanager
from typing import Any, Literal

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from starlette.exceptions import HTTPException as StarletteHTTPException

from zephyr.generation import BatchScheduler, Generator, SequenceHandle, StreamState, choice_seeds


class ContentPart(BaseModel):
    """One part of a list-valued message content; only text parts are supported."""

    model_config = ConfigDict(extra="ignore")
    type: Literal["text"]
    text: str


class Message(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: Literal["system", "user", "assistant"]
    content: str | list[ContentPart]

    def text(self) -> str:
        return self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore")
    include_usage: bool = False


class ChatRequest(BaseModel):
    """The subset of OpenAI's chat-completions body we honour; other keys are accepted and ignored."""

    model_config = ConfigDict(extra="ignore")
    model: str | None = None
    messages: list[Message] = Field(min_length=1)
    temperature: float = Field(default=1.0, ge=0.0, le=2.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    stop: str | list[str] | None = None
    seed: int | None = None
    n: int = Field(default=1, ge=1)
    stream: bool = False
    stream_options: StreamOptions | None = None

    @field_validator("stop")
    @classmethod
    def _stop_list(cls, v: str | list[str] | None) -> list[str] | None:
        if v is None:
            return None
        stops = [v] if isinstance(v, str) else v
        if len(stops) > 4:
            raise ValueError("at most 4 stop sequences")
        if any(not s for s in stops):
            raise ValueError("stop sequences must be non-empty")
        return stops


class APIError(Exception):
    """An error answered in OpenAI's JSON shape."""

    def __init__(self, status: int, message: str, type_: str, code: str | None = None, param: str | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.code, self.param = status, message, type_, code, param

    def response(self) -> JSONResponse:
        body = {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}
        return JSONResponse(body, status_code=self.status)


def _validation_message(err: ValidationError) -> tuple[str, str | None]:
    first = err.errors()[0]
    loc = ".".join(str(p) for p in first.get("loc", ()))
    return f"{loc}: {first.get('msg', 'invalid value')}" if loc else first.get("msg", "invalid body"), loc or None


def create_app(
    model_dir: str | None = None,
    *,
    generator: Generator | None = None,
    api_key: str | None = None,
    model_id: str | None = None,
    max_tokens_limit: int = 2048,
    default_max_tokens: int = 256,
    max_body_bytes: int = 1_000_000,
    max_n: int = 8,
    device: str = "cpu",
    dtype: str = "float32",
    max_batch_size: int = 8,
    batch_window_ms: float = 20.0,
) -> FastAPI:
    """Build the server app.

    Args:
        model_dir: an exported checkpoint directory (ignored when ``generator`` is given).
        generator: an already loaded ``Generator`` (tests share one between apps).
        api_key: when set, ``/v1/*`` requires ``Authorization: Bearer <api_key>``.
        model_id: the name in responses and ``/v1/models`` (default: the checkpoint directory's name).
        max_tokens_limit: requests asking for more new tokens get 400.
        default_max_tokens: new-token budget when the request gives none.
        max_body_bytes: larger request bodies get 413.
        max_n: most choices per request.
        device: torch device for ``model_dir`` ("cpu", "cuda", "cuda:1").
        dtype: weights dtype for ``model_dir`` ("float32", "bfloat16", "float16").
        max_batch_size: most sequences decoded together (1 = one at a time).
        batch_window_ms: when idle, how long the first request waits for requests still being read.

    Returns:
        The FastAPI application.
    """
    if generator is None:
        if model_dir is None:
            raise ValueError("create_app needs model_dir or generator")
        generator = Generator.from_dir(model_dir, device=device, dtype=dtype)
    gen = generator
    served_id = model_id or gen.model_id
    created = int(time.time())
    context = int(getattr(gen.model.config, "max_position_embeddings", 0) or 0)
    scheduler = BatchScheduler(gen, max_batch_size=max_batch_size, window_ms=batch_window_ms)

    @asynccontextmanager
    async def lifespan(_: FastAPI):
        yield
        await asyncio.to_thread(scheduler.close)

    app = FastAPI(title="zephyr", docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan)
    app.state.generator = gen
    app.state.scheduler = scheduler

    @app.exception_handler(APIError)
    async def _api_error(_: Request, exc: APIError) -> JSONResponse:
        return exc.response()

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        kind = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
        return APIError(exc.status_code, str(exc.detail), kind, code=str(exc.status_code)).response()

    def check_auth(request: Request) -> None:
        if api_key is None:
            return
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), api_key.encode()):
            raise APIError(401, "Incorrect API key provided.", "invalid_request_error", code="invalid_api_key")

    async def read_body(request: Request) -> bytes:
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > max_body_bytes:
            raise APIError(413, f"request body over {max_body_bytes} bytes", "invalid_request_error", "too_large")
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > max_body_bytes:
                raise APIError(413, f"request body over {max_body_bytes} bytes", "invalid_request_error", "too_large")
            chunks.append(chunk)
        return b"".join(chunks)

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "model": served_id}

    def model_card() -> dict[str, Any]:
        return {"id": served_id, "object": "model", "created": created, "owned_by": "zephyr"}

    @app.get("/v1/models")
    async def list_models(request: Request) -> dict[str, Any]:
        check_auth(request)
        return {"object": "list", "data": [model_card()]}

    @app.get("/v1/models/{name:path}")
    async def get_model(name: str, request: Request) -> dict[str, Any]:
        check_auth(request)
        if name != served_id:
            raise APIError(404, f"The model '{name}' does not exist", "invalid_request_error", "model_not_found")
        return model_card()

    async def submit_request(request: Request):
        """Read and validate one chat request and queue its ``n`` sequences."""
        body = await read_body(request)
        try:
            payload = json.loads(body)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise APIError(400, f"request body is not valid JSON: {e}", "invalid_request_error") from e
        try:
            req = ChatRequest.model_validate(payload)
        except ValidationError as e:
            msg, param = _validation_message(e)
            raise APIError(400, msg, "invalid_request_error", param=param) from e
        if req.n > max_n:
            raise APIError(400, f"n={req.n} is over the limit {max_n}", "invalid_request_error", param="n")
        max_tokens = req.max_completion_tokens or req.max_tokens or min(default_max_tokens, max_tokens_limit)
        if max_tokens > max_tokens_limit:
            raise APIError(
                400,
                f"max_tokens={max_tokens} is over this server's limit {max_tokens_limit}",
                "invalid_request_error",
                param="max_tokens",
            )
        messages = [{"role": m.role, "content": m.text()} for m in req.messages]
        prompt_ids = gen.prompt_ids(messages)
        if context and len(prompt_ids) + max_tokens > context:
            raise APIError(
                400,
                f"prompt ({len(prompt_ids)} tokens) + max_tokens ({max_tokens}) exceeds the context of {context}",
                "invalid_request_error",
                code="context_length_exceeded",
                param="messages",
            )
        opts = {"temperature": req.temperature, "top_p": req.top_p, "max_tokens": max_tokens, "stop": req.stop}
        rid = f"chatcmpl-{uuid.uuid4().hex[:24]}"
        now = int(time.time())
        events: asyncio.Queue = asyncio.Queue()
        loop = asyncio.get_running_loop()
        stream = req.stream

        def submit(i: int, seed: int | None) -> SequenceHandle:
            def on_event(kind: str, value: Any) -> None:
                if stream or kind != "delta":
                    loop.call_soon_threadsafe(events.put_nowait, (kind, i, value))

            return scheduler.submit(prompt_ids, seed=seed, on_event=on_event, **opts)

        handles = [submit(i, s) for i, s in enumerate(choice_seeds(req.n, req.seed))]
        return handles, events, req, prompt_ids, rid, now

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        check_auth(request)
        with scheduler.expecting():  # an idle batch start waits for this request while it is read
            handles, events, req, prompt_ids, rid, now = await submit_request(request)
        if req.stream:
            include_usage = bool(req.stream_options and req.stream_options.include_usage)
            return StreamingResponse(
                _sse(events, handles, len(prompt_ids), rid, now, served_id, include_usage),
                media_type="text/event-stream",
                headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
            )
        states: list[StreamState | None] = [None] * req.n
        try:
            for _ in range(req.n):
                kind, i, value = await events.get()
                if kind == "error":
                    raise APIError(500, f"generation failed: {value}", "server_error")
                states[i] = value
        finally:
            for h in handles:
                h.cancel()  # no-op for finished ones; frees the batch when this request failed or was dropped
        completion = sum(s.completion_tokens for s in states if s is not None)
        return {
            "id": rid,
            "object": "chat.completion",
            "created": now,
            "model": served_id,
            "system_fingerprint": None,
            "choices": [
                {
                    "index": i,
                    "message": {"role": "assistant", "content": s.text},
                    "logprobs": None,
                    "finish_reason": s.finish_reason,
                }
                for i, s in enumerate(states)
                if s is not None
            ],
            "usage": {
                "prompt_tokens": len(prompt_ids),
                "completion_tokens": completion,
                "total_tokens": len(prompt_ids) + completion,
            },
        }

    return app


def _chunk(rid: str, now: int, model: str, choices: list[dict[str, Any]], usage: dict | None = None) -> str:
    body: dict[str, Any] = {
        "id": rid,
        "object": "chat.completion.chunk",
        "created": now,
        "model": model,
        "system_fingerprint": None,
        "choices": choices,
    }
    if usage is not None:
        body["usage"] = usage
    return f"data: {json.dumps(body, ensure_ascii=False)}\n\n"


async def _sse(
    events: asyncio.Queue,
    handles: list[SequenceHandle],
    prompt_tokens: int,
    rid: str,
    now: int,
    model: str,
    include_usage: bool,
):
    """Server-sent events for one streamed request: a role chunk per choice, content deltas, a finish chunk each."""
    completion = 0
    try:
        for i in range(len(handles)):
            delta = {"role": "assistant", "content": ""}
            yield _chunk(rid, now, model, [{"index": i, "delta": delta, "logprobs": None, "finish_reason": None}])
        open_choices = len(handles)
        while open_choices:
            kind, i, value = await events.get()
            if kind == "delta":
                choice = {"index": i, "delta": {"content": value}, "logprobs": None, "finish_reason": None}
                yield _chunk(rid, now, model, [choice])
            elif kind == "finish":
                open_choices -= 1
                completion += value.completion_tokens
                choice = {"index": i, "delta": {}, "logprobs": None, "finish_reason": value.finish_reason}
                yield _chunk(rid, now, model, [choice])
            else:  # error: reported to the client as an error event; the other choices go on
                open_choices -= 1
                err = {"error": {"message": f"generation failed: {value}", "type": "server_error", "code": None}}
                yield f"data: {json.dumps(err)}\n\n"
        if include_usage:
            usage = {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion,
                "total_tokens": prompt_tokens + completion,
            }
            yield _chunk(rid, now, model, [], usage=usage)
        yield "data: [DONE]\n\n"
    finally:
        for h in handles:
            h.cancel()  # a disconnected client stops its sequences at the scheduler's next step
