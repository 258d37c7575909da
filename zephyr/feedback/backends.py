"""Chat backends for the data pipeline: OpenAI-compatible endpoints, local checkpoints, and a config factory.

``OpenAIBackend`` talks to any OpenAI-compatible server (OpenAI, vLLM, TGI, ``zephyr serve``) through the official
``openai`` SDK. The API key is read from the environment variable named in the config (``api_key_env``) and
nowhere else; it is registered with ``redact`` so that error texts written to logs or stores never contain it.
The SDK's own retries are switched off (``max_retries=0``) so that ours, exponential backoff with full jitter
on 429 / 5xx / timeouts / connection errors / 200 responses whose body is not valid JSON (a reply cut mid-body),
are the only ones and are counted (``stats``; ``bad_bodies`` counts the unparseable bodies).

``LocalCheckpointBackend`` loads an exported Hugging Face checkpoint folder and generates with its chat template
(``add_generation_prompt=True``), left-padded batches through ``chat_batch`` for throughput; the generation itself
is ``zephyr.eval.generate.Generator``, the same code ``zephyr serve`` and ``zephyr generate`` run.

``build_backend(spec)`` turns a config dict ``{type: openai|local|toy_teacher|toy_student|toy_judge|toy_user, ...}``
(or a Hydra ``_target_`` dict) into a backend; ``build_pool(spec)`` does the same for a completion pool.
"""

from __future__ import annotations

import json
import logging
import os
import random
import threading
import time
from collections.abc import Mapping
from typing import Any

from zephyr.chat import ChatBackend, ChatResponse
from zephyr.eval.generate import GeneratorBackend

log = logging.getLogger(__name__)

_SECRETS: set[str] = set()
_SECRETS_LOCK = threading.Lock()


def register_secret(value: str) -> None:
    """Remember ``value`` so ``redact`` removes it from any text written out."""
    if value and len(value) >= 4:
        with _SECRETS_LOCK:
            _SECRETS.add(value)


def redact(text: str) -> str:
    """``text`` with every registered secret replaced by ``***``."""
    for s in list(_SECRETS):
        text = text.replace(s, "***")
    return text


class BadBodyError(ValueError):
    """A 200 response whose body is not a chat completion object (e.g. served as text)."""


def _bad_body(e: Exception) -> bool:
    """Whether ``e`` is a response body that did not parse (``json.JSONDecodeError``, bad UTF-8, not an object)."""
    return isinstance(e, (json.JSONDecodeError, UnicodeDecodeError, BadBodyError))


class OpenAIBackend:
    """An OpenAI-compatible chat endpoint with counted retries.

    Args:
        model: model name sent to the server.
        base_url: server URL ending in ``/v1`` (``None`` = api.openai.com).
        api_key_env: name of the environment variable holding the key; ``None`` for keyless local servers.
        name: name recorded in datasets (default: ``model``).
        timeout: seconds per HTTP call.
        max_retries: retries after the first attempt on 429 / 5xx / timeouts / connection errors / bodies that
            are not valid JSON.
        backoff_base: first backoff ceiling in seconds; doubles each retry (full jitter: uniform(0, ceiling)).
        backoff_max: cap of the backoff ceiling in seconds.
        extra_body: extra JSON fields for servers with non-standard options (e.g. vLLM's ``top_k``).

    Raises:
        RuntimeError: when ``api_key_env`` is set but the variable is missing or empty.
    """

    def __init__(
        self,
        model: str,
        base_url: str | None = None,
        api_key_env: str | None = "OPENAI_API_KEY",
        name: str | None = None,
        timeout: float = 60.0,
        max_retries: int = 6,
        backoff_base: float = 1.0,
        backoff_max: float = 30.0,
        extra_body: Mapping[str, Any] | None = None,
    ):
        import openai

        self._openai = openai
        self.model = model
        self.name = name or model
        self.base_url = base_url
        self.api_key_env = api_key_env
        self.timeout = float(timeout)
        self.max_retries = int(max_retries)
        self.backoff_base = float(backoff_base)
        self.backoff_max = float(backoff_max)
        self.extra_body = dict(extra_body) if extra_body else None
        if api_key_env:
            key = os.environ.get(api_key_env, "")
            if not key:
                raise RuntimeError(f"backend {self.name!r}: environment variable {api_key_env} is not set")
            register_secret(key)
        else:
            key = "no-key"  # the SDK insists on a string; keyless servers ignore it
        self._client = openai.OpenAI(base_url=base_url, api_key=key, timeout=self.timeout, max_retries=0)
        self._rng = random.Random()
        self._stats_lock = threading.Lock()
        self.stats = {"calls": 0, "retries": 0, "errors": 0, "bad_bodies": 0}

    def __repr__(self) -> str:
        return f"OpenAIBackend(model={self.model!r}, base_url={self.base_url!r}, api_key_env={self.api_key_env!r})"

    def _retryable(self, e: Exception) -> bool:
        o = self._openai
        if _bad_body(e):
            return True  # a 200 whose body was cut mid-JSON is as transient as a 5xx
        if isinstance(e, (o.APITimeoutError, o.APIConnectionError, o.RateLimitError, o.InternalServerError)):
            return True
        if isinstance(e, o.APIStatusError):
            return e.status_code == 429 or e.status_code >= 500
        return isinstance(e, o.APIResponseValidationError)

    def _sleep_for(self, attempt: int, e: Exception) -> float:
        ceiling = min(self.backoff_max, self.backoff_base * (2**attempt))
        delay = self._rng.uniform(0, ceiling)
        response = getattr(e, "response", None)
        retry_after = response.headers.get("retry-after") if response is not None else None
        if retry_after:
            try:
                delay = max(delay, min(float(retry_after), self.backoff_max))
            except ValueError:
                pass
        return delay

    def chat(
        self,
        messages: list[dict[str, str]],
        *,
        temperature: float = 0.7,
        top_p: float = 1.0,
        max_tokens: int = 256,
        n: int = 1,
        seed: int | None = None,
        stop: list[str] | None = None,
    ) -> ChatResponse:
        kwargs: dict[str, Any] = dict(
            model=self.model,
            messages=messages,
            temperature=temperature,
            top_p=top_p,
            max_tokens=max_tokens,
            n=n,
        )
        if seed is not None:
            kwargs["seed"] = int(seed)
        if stop:
            kwargs["stop"] = list(stop)
        if self.extra_body:
            kwargs["extra_body"] = self.extra_body
        for attempt in range(self.max_retries + 1):
            with self._stats_lock:
                self.stats["calls"] += 1
            try:
                resp = self._client.chat.completions.create(**kwargs)
                if not hasattr(resp, "choices"):  # the SDK hands back the raw text of a non-JSON content type
                    raise BadBodyError(f"response body is not a chat completion: {str(resp)[:80]!r}")
                if not resp.choices:
                    raise RuntimeError(f"backend {self.name!r}: response without choices")
                usage = resp.usage
                return ChatResponse(
                    texts=[(c.message.content or "") for c in resp.choices],
                    prompt_tokens=int(getattr(usage, "prompt_tokens", 0) or 0),
                    completion_tokens=int(getattr(usage, "completion_tokens", 0) or 0),
                    model=resp.model or self.model,
                    finish_reasons=[c.finish_reason or "stop" for c in resp.choices],
                )
            except Exception as e:
                if _bad_body(e):
                    with self._stats_lock:
                        self.stats["bad_bodies"] += 1
                if not self._retryable(e) or attempt == self.max_retries:
                    with self._stats_lock:
                        self.stats["errors"] += 1
                    raise RuntimeError(
                        redact(f"backend {self.name!r}: {type(e).__name__} after {attempt + 1} attempt(s): {e}")
                    ) from None
                delay = self._sleep_for(attempt, e)
                with self._stats_lock:
                    self.stats["retries"] += 1
                log.debug("backend %s: %s, retry %d in %.2fs", self.name, type(e).__name__, attempt + 1, delay)
                time.sleep(delay)
        raise AssertionError("unreachable")


class LocalCheckpointBackend(GeneratorBackend):
    """A local Hugging Face checkpoint folder answering through its chat template.

    A thin ``ChatBackend`` over ``zephyr.eval.generate.Generator`` (the one implementation of local generation,
    shared with ``zephyr serve`` and ``zephyr generate``): prompts are the checkpoint's chat template with the
    generation prompt and BOS, batches are left-padded, and ``chat`` is ``chat_batch`` of one conversation so
    both give the same text for the same seed.

    Args:
        path: folder with ``config.json``, weights and a tokenizer (the Zephyr template when it has none).
        name: name recorded in datasets (default: the folder name).
        device: torch device string.
        dtype: ``float32`` | ``bfloat16`` | ``float16``.
        batch_size: conversations per ``generate`` call in ``chat_batch``.

    Raises:
        FileNotFoundError: when ``path`` is not a folder with ``config.json``.
    """

    def __init__(
        self,
        path: str,
        name: str | None = None,
        device: str = "cpu",
        dtype: str = "float32",
        batch_size: int = 16,
    ):
        from pathlib import Path

        from zephyr.eval.generate import Generator

        super().__init__(Generator.from_dir(path, device=device, dtype=dtype), name=name or Path(path).name)
        self.path = str(path)
        self.batch_size = int(batch_size)

    def __repr__(self) -> str:
        return f"LocalCheckpointBackend(path={self.path!r})"

    def chat(self, messages, *, temperature=0.7, top_p=1.0, max_tokens=256, n=1, seed=None, stop=None) -> ChatResponse:
        return self.chat_batch(
            [messages], temperature=temperature, top_p=top_p, max_tokens=max_tokens, n=n, seed=seed, stop=stop
        )[0]

    def chat_batch(
        self,
        batch: list[list[dict[str, str]]],
        *,
        temperature: float = 0.7,
        top_p: float = 1.0,
        max_tokens: int = 256,
        n: int = 1,
        seed: int | None = None,
        stop: list[str] | None = None,
    ) -> list[ChatResponse]:
        """Answer several conversations, ``batch_size`` conversations (times ``n`` rows) per ``generate`` call.

        Args:
            batch: conversations, each ``[{"role", "content"}, ...]``.
            temperature: 0 (below 1e-4) means greedy decoding.
            top_p: nucleus sampling mass.
            max_tokens: new tokens per completion; generation also stops at eos.
            n: completions per conversation.
            seed: chunk ``k`` (starting at conversation ``k``) is generated with seed ``seed + k``; the global
                RNG state is restored afterwards.
            stop: strings that cut a completion (finish reason ``stop``).

        Returns:
            One ``ChatResponse`` per conversation, in order; texts are stripped of surrounding whitespace.
        """
        n = int(n)
        out: list[ChatResponse] = []
        for start in range(0, len(batch), self.batch_size):
            chunk = batch[start : start + self.batch_size]
            done = self.generator.generate_batch(
                [m for m in chunk for _ in range(n)],  # n rows per conversation, as num_return_sequences lays out
                temperature=temperature,
                top_p=top_p,
                max_tokens=int(max_tokens),
                seed=None if seed is None else int(seed) + start,
                stop=stop,
            )
            for i in range(len(chunk)):
                mine = done[i * n : (i + 1) * n]
                out.append(
                    ChatResponse(
                        texts=[c.text.strip() for c in mine],
                        prompt_tokens=mine[0].prompt_tokens,
                        completion_tokens=sum(c.completion_tokens for c in mine),
                        model=self.name,
                        finish_reasons=[c.finish_reason for c in mine],
                    )
                )
        return out


_TOY = {
    "toy_teacher": ("zephyr.toy.teacher", "ToyTeacher"),
    "toy_student": ("zephyr.toy.students", "RuleStudent"),
    "toy_judge": ("zephyr.toy.judge", "VerifierJudge"),
    "toy_user": ("zephyr.toy.user", "ToyUserSimulator"),
}


def _plain(spec: Any) -> dict:
    try:
        from omegaconf import DictConfig, OmegaConf

        if isinstance(spec, DictConfig):
            return OmegaConf.to_container(spec, resolve=True)  # type: ignore[return-value]
    except ImportError:  # pragma: no cover - omegaconf is a dependency
        pass
    if not isinstance(spec, Mapping):
        raise ValueError(f"a backend spec must be a mapping, got {type(spec).__name__}: {spec!r}")
    return dict(spec)


SECRET_SPEC_KEYS = ("api_key", "apikey", "api-key", "password", "secret", "token", "access_token", "auth_token")


def find_secret_key(node: Any, where: str = "") -> str | None:
    """Dotted path of the first key in ``node`` (nested dicts/lists) that would hold a secret, e.g. ``api_key``.

    Keys live in environment variables named by ``api_key_env``; a config that holds one is refused before
    anything is written.
    """
    if isinstance(node, Mapping):
        for k, v in node.items():
            path = f"{where}.{k}" if where else str(k)
            if str(k).lower() in SECRET_SPEC_KEYS and v not in (None, ""):
                return path
            found = find_secret_key(v, path)
            if found:
                return found
    elif isinstance(node, (list, tuple)):
        for i, v in enumerate(node):
            found = find_secret_key(v, f"{where}[{i}]")
            if found:
                return found
    return None


def build_backend(spec: Mapping[str, Any]) -> ChatBackend:
    """Make a backend from ``{type: openai|local|toy_teacher|toy_student|toy_judge, ...}`` or ``{_target_: ...}``.

    The remaining keys are the constructor's keyword arguments (``local`` takes ``path``). Secrets are not
    accepted here: ``openai`` reads its key from the variable named by ``api_key_env``.

    Raises:
        ValueError: for an unknown ``type``, a missing ``type``/``_target_``, or an ``api_key`` key in the spec.
    """
    spec = _plain(spec)
    if find_secret_key(spec):
        raise ValueError(
            f"backend spec: {find_secret_key(spec)} holds a secret; put the key in an environment variable and "
            "name it with api_key_env"
        )
    if "_target_" in spec:
        from hydra.utils import instantiate

        return instantiate(spec)
    kind = spec.pop("type", None)
    if kind == "openai":
        return OpenAIBackend(**spec)
    if kind == "local":
        return LocalCheckpointBackend(**spec)
    if kind in _TOY:
        import importlib

        module, cls = _TOY[kind]
        return getattr(importlib.import_module(module), cls)(**spec)
    raise ValueError(
        f"backend spec: unknown type {kind!r} (openai | local | toy_teacher | toy_student | toy_judge | toy_user)"
    )


def build_pool(spec: Any) -> list[ChatBackend]:
    """Make the completion pool: a list of backend specs, or ``{type: toy_pool, seed: S, ...}``.

    Raises:
        ValueError: when two pool members share a name (rows are keyed by model name).
    """
    try:
        from omegaconf import ListConfig, OmegaConf

        if isinstance(spec, ListConfig):
            spec = OmegaConf.to_container(spec, resolve=True)
    except ImportError:  # pragma: no cover
        pass
    if isinstance(spec, Mapping) or hasattr(spec, "keys"):
        d = _plain(spec)
        if d.get("type") == "toy_pool":
            from zephyr.toy.students import default_pool

            d.pop("type")
            members = list(default_pool(**d))
        else:
            members = [build_backend(d)]
    else:
        members = [m if hasattr(m, "chat") else build_backend(m) for m in spec]
    names = [m.name for m in members]
    dupes = sorted({x for x in names if names.count(x) > 1})
    if dupes:
        raise ValueError(f"pool: model names must be unique, repeated: {dupes}")
    return members
