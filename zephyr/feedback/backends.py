"""Chat backends for the data pipeline: OpenAI-compatible endpoints, local checkpoints, and the config factory.

``OpenAIBackend`` talks to any OpenAI-compatible server (OpenAI, vLLM, TGI, ``zephyr serve``) through the official
``openai`` SDK. The API key is read from the environment variable named in the config (``api_key_env``) and
nowhere else; it is registered with ``redact`` so that error texts written to logs or stores never contain it.
The SDK's own retries are switched off (``max_retries=0``) so that ours, exponential backoff with full jitter
on 429 / 5xx / timeouts / connection errors / 200 responses whose body is not valid JSON (a reply cut mid-body),
are the only ones and are counted (``stats``; ``bad_bodies`` counts the unparseable bodies).

``LocalCheckpointBackend`` (an exported checkpoint folder as a pool member or judge) is the generation engine's
``ChatBackend``, :class:`zephyr.generation.LocalCheckpointBackend`, re-exported here.

``build_backend(spec)`` builds a backend with Hydra's ``instantiate`` from ``{_target_: <class>, ...}`` (as
``conf/feedback/*.yaml`` write them); a spec in the older ``{type: openai|local|toy_teacher|..., ...}`` form is
rewritten to its ``_target_`` first (``LEGACY_TYPES``), so configs written before ``_target_`` keep working.
``build_pool(spec)`` does the same for a completion pool (a list of specs, or one spec that builds a list).
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
from zephyr.generation import LocalCheckpointBackend

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


__all__ = ["LocalCheckpointBackend", "OpenAIBackend", "build_backend", "build_pool", "redact", "register_secret"]

LEGACY_TYPES = {
    "openai": "zephyr.feedback.backends.OpenAIBackend",
    "local": "zephyr.generation.LocalCheckpointBackend",
    "toy_teacher": "zephyr.toy.teacher.ToyTeacher",
    "toy_student": "zephyr.toy.students.RuleStudent",
    "toy_judge": "zephyr.toy.judge.VerifierJudge",
    "toy_user": "zephyr.toy.user.ToyUserSimulator",
    "toy_pool": "zephyr.toy.students.default_pool",
}
"""The ``_target_`` each pre-``_target_`` ``type`` name stands for (``toy_pool`` builds a list: pools only)."""


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


def _with_target(spec: dict, where: str) -> dict:
    """``spec`` with its ``_target_``: a legacy ``type`` key is replaced by the target it names.

    Raises:
        ValueError: for an unknown ``type``, both ``type`` and ``_target_``, or neither.
    """
    if "type" not in spec:
        if "_target_" not in spec:
            raise ValueError(f"{where}: needs a _target_ (a backend class), e.g. _target_: {LEGACY_TYPES['openai']}")
        return spec
    if "_target_" in spec:
        raise ValueError(f"{where}: give _target_ or the older type key, not both")
    kind = spec.pop("type")
    if kind not in LEGACY_TYPES:
        raise ValueError(f"{where}: unknown type {kind!r} ({' | '.join(LEGACY_TYPES)}), or give a _target_")
    return {"_target_": LEGACY_TYPES[kind], **spec}


def _instantiate(spec: dict, where: str) -> Any:
    """Hydra ``instantiate`` of a backend spec; a constructor that refuses it becomes one line naming ``where``."""
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate

    try:
        return instantiate(spec, _convert_="all")
    except InstantiationException as e:
        cause = e.__cause__ or e
        if isinstance(cause, (RuntimeError, FileNotFoundError)):
            raise cause from None  # the backend's own one-line error (a missing key variable, no checkpoint)
        raise ValueError(f"{where}: cannot build {spec['_target_']}: {str(cause).splitlines()[-1]}") from None


def build_backend(spec: Mapping[str, Any]) -> ChatBackend:
    """Make a backend from ``{_target_: <class>, ...}`` (or the older ``{type: openai|local|toy_*, ...}``).

    The remaining keys are the constructor's keyword arguments (``LocalCheckpointBackend`` takes ``path``).
    Secrets are not accepted here: ``OpenAIBackend`` reads its key from the variable named by ``api_key_env``.

    Raises:
        ValueError: for an unknown ``type``, a missing ``type``/``_target_``, a spec the constructor refuses, an
            ``api_key`` key in the spec, or a spec that builds a pool (``toy_pool``: use ``build_pool``).
    """
    spec = _plain(spec)
    if find_secret_key(spec):
        raise ValueError(
            f"backend spec: {find_secret_key(spec)} holds a secret; put the key in an environment variable and "
            "name it with api_key_env"
        )
    backend = _instantiate(_with_target(spec, "backend spec"), "backend spec")
    if not hasattr(backend, "chat"):
        raise ValueError(f"backend spec: {spec.get('_target_', spec)} builds no chat backend (a pool goes in pool:)")
    return backend


def build_pool(spec: Any) -> list[ChatBackend]:
    """Make the completion pool: a list of backend specs (or backends), or one spec that builds one or a list.

    ``{_target_: zephyr.toy.students.default_pool, seed: S}`` (older: ``{type: toy_pool, seed: S}``) is the toy
    world's five rule-based students.

    Raises:
        ValueError: when two pool members share a name (rows are keyed by model name), or a bad member spec.
    """
    try:
        from omegaconf import ListConfig, OmegaConf

        if isinstance(spec, ListConfig):
            spec = OmegaConf.to_container(spec, resolve=True)
    except ImportError:  # pragma: no cover
        pass
    if isinstance(spec, Mapping) or hasattr(spec, "keys"):
        d = _plain(spec)
        if find_secret_key(d):
            return [build_backend(d)]  # refused there, with the key's path
        built = _instantiate(_with_target(d, "pool spec"), "pool spec")
        members = list(built) if isinstance(built, (list, tuple)) else [built]
    else:
        members = [m if hasattr(m, "chat") else build_backend(m) for m in spec]
    names = [m.name for m in members]
    dupes = sorted({x for x in names if names.count(x) > 1})
    if dupes:
        raise ValueError(f"pool: model names must be unique, repeated: {dupes}")
    return members
