"""The generation engine: a loaded checkpoint answering chat messages, streamed, batched, or as a ``ChatBackend``.

Every generation path of the project runs here: ``zephyr serve``, ``zephyr generate``, MT-Bench answers, the
feedback pipeline's local-checkpoint pool members and judges, and the demo's pool member and evaluation.

* Prompts are rendered by :func:`zephyr.data.chat_template.prompt_ids` in the format the checkpoint was trained
  on: ``from_dir`` reads it from the export record (``prompt_format``: whether training inserted an empty system
  turn), so every path queries a model exactly as its dSFT/dDPO run rendered prompts.
* ``Generator.stream`` is our own incremental decode loop (KV cache, greedy or temperature/top-p sampling from a
  seeded ``torch.Generator``). The server uses it for streaming and non-streaming requests, so a streamed answer
  is by construction the same text as the non-streamed one. Stop strings are found on the decoded text: text
  that could still be the start of a stop string is held back until it cannot be.
* ``Generator.generate_batch`` is the one batched path: prompts sorted by length (little padding), cut into
  chunks of ``batch_size``, each left-padded (every row's last prompt token at the same position, where
  generation continues) through ``model.generate``; answers come back in input order.
* ``BatchScheduler`` is continuous batching for the server: a background thread prefills each arriving
  sequence alone, left-pads its KV cache into the running batch and decodes all rows one step at a time (mask
  over real columns, per-row position ids, per-row seeded sampler, stop strings and max_tokens through the
  same ``_TextStream`` as ``stream``), so a greedy answer is the solo answer token for token.
* :func:`choice_seeds` is the one n-choices rule: choice ``i`` of a seeded request uses ``seed + i``
  (``Generator.complete`` and ``GeneratorBackend.chat_batch`` both loop over it).
* ``GeneratorBackend`` is the one ``ChatBackend`` over a checkpoint (``chat`` is ``chat_batch`` of one
  conversation); ``LocalCheckpointBackend`` builds one from an export folder (Hydra ``_target_`` of a local pool
  member).
"""

from __future__ import annotations

import json
import os
import queue
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from zephyr.chat import ChatResponse
from zephyr.data.chat_template import prompt_ids
from zephyr.data.io import read_jsonl_numbered

GREEDY_BELOW = 1e-4  # FastChat's rule: temperature < 1e-4 means greedy


@dataclass
class StreamState:
    """Filled in while ``Generator.stream`` runs; complete once the iterator is exhausted.

    Attributes:
        prompt_tokens: prompt length in tokens (BOS included).
        completion_tokens: tokens generated (EOS counted, as OpenAI counts the stop token).
        finish_reason: ``"stop"`` (EOS or a stop string) or ``"length"`` (``max_tokens`` reached).
        text: the full completion text emitted so far.
        token_ids: the completion's token ids (EOS excluded).
    """

    prompt_tokens: int = 0
    completion_tokens: int = 0
    finish_reason: str = "length"
    text: str = ""
    token_ids: list[int] = field(default_factory=list)


@dataclass
class Completion:
    """One finished completion."""

    text: str
    completion_tokens: int
    finish_reason: str
    prompt_tokens: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


def _held_back(text: str, stops: Sequence[str]) -> int:
    """Length of the longest suffix of ``text`` that is a proper prefix of some stop string."""
    best = 0
    for s in stops:
        for k in range(min(len(s) - 1, len(text)), best, -1):
            if text.endswith(s[:k]):
                best = k
                break
    return best


def _argmax(logits: torch.Tensor) -> list[int]:
    """The first maximal index of each row of CPU ``logits`` ``(V,)`` or ``(B, V)`` (NaN counts as maximal).

    NumPy's: the same index as ``torch.argmax`` (first maximum, NaN first), which on CPU is ~25× slower
    along the last dimension of a ``(B, 32k)`` batch than this, and a sizeable part of a small model's step.
    """
    return logits.detach().float().reshape(-1, logits.shape[-1]).numpy().argmax(-1).tolist()


def _sample(logits: torch.Tensor, temperature: float, top_p: float, gen: torch.Generator | None) -> int:
    """Pick the next token from ``logits`` (V,): argmax when greedy, else nucleus sampling."""
    if temperature < GREEDY_BELOW:
        return _argmax(logits)[0]
    probs = torch.softmax(logits.float() / temperature, dim=-1)  # (V,)
    if top_p < 1.0:
        sorted_p, order = torch.sort(probs, descending=True)
        # keep the smallest prefix whose mass reaches top_p (the first token always stays)
        keep = torch.cumsum(sorted_p, dim=-1) - sorted_p < top_p
        sorted_p = torch.where(keep, sorted_p, torch.zeros_like(sorted_p))
        choice = torch.multinomial(sorted_p / sorted_p.sum(), 1, generator=gen)
        return int(order[choice].item())
    return int(torch.multinomial(probs, 1, generator=gen).item())


def _seeded(seed: int | None) -> torch.Generator:
    """A CPU sampling generator seeded with ``seed`` (``None``: fresh OS randomness)."""
    gen = torch.Generator(device="cpu")
    gen.manual_seed(seed if seed is not None else int.from_bytes(os.urandom(4), "little"))
    return gen


class _TextStream:
    """One sequence's tokens turned into final text deltas: EOS, stop strings, held-back text, partial UTF-8.

    ``push`` takes each sampled token and returns ``(delta, done)``; ``close`` returns what is left once the
    sequence ends (by ``done`` or by ``max_tokens``) and completes ``state``. ``Generator.stream`` and
    ``BatchScheduler`` both run every token through it, so a batched answer is cut exactly like a solo one.
    """

    def __init__(self, generator: Generator, stop: Sequence[str] | None, state: StreamState):
        self.decode, self.eos_ids, self.state = generator._decode, generator.eos_ids, state
        self.stops = [s for s in (stop or []) if s]
        self.ids = state.token_ids
        self.emitted = 0  # characters of the decoded completion already returned
        self.cut: str | None = None  # the text cut at a stop string, once found
        self.text = ""  # the decoded completion so far
        self.prefix, self.read = 0, 0  # token offsets of the incremental decode (see ``_decode_new``)
        state.finish_reason = "length"

    def _decode_new(self, final: bool = False) -> str | None:
        """The text the newest tokens add, decoding only a few trailing tokens (``None``: incomplete UTF-8,
        unless ``final``: then the replacement character is the text, as a full decode gives it).

        Decoding every token's whole completion again costs O(length) per token and holds the GIL (the server's
        event loop waits). As text-generation-inference and vLLM do, ``ids[prefix:read]`` (the tokens already
        turned into text, from the last word boundary decoded) and ``ids[prefix:]`` are decoded, and the new
        text is the difference: the leading-space rule of SentencePiece-style decoders applies to both alike.
        """
        before = self.decode(self.ids[self.prefix : self.read])
        after = self.decode(self.ids[self.prefix :])
        if after.endswith("\ufffd") and not final:  # an incomplete UTF-8 byte sequence: wait for the rest
            return None
        self.prefix, self.read = self.read, len(self.ids)
        return after[len(before) :]

    def push(self, token: int) -> tuple[str, bool]:
        """Account for ``token``; return the newly final text and whether the sequence has ended."""
        st, stops = self.state, self.stops
        st.completion_tokens += 1
        if token in self.eos_ids:
            st.finish_reason = "stop"
            return "", True
        self.ids.append(token)
        new = self._decode_new()
        if new is None:
            return "", False
        self.text = text = self.text + new
        if stops:
            start = max(0, self.emitted - max(len(s) for s in stops))
            hits = [p for p in (text.find(s, start) for s in stops) if p >= 0]
            if hits:
                self.cut = text[: min(hits)]
                st.finish_reason = "stop"
                return "", True
        safe = len(text) - _held_back(text, stops)
        if safe > self.emitted:
            st.text = text[:safe]
            delta, self.emitted = text[self.emitted : safe], safe
            return delta, False
        return "", False

    def close(self) -> str:
        """The text not yet returned; ``state.text`` becomes the full completion."""
        text = self.cut if self.cut is not None else self.text + self._decode_new(final=True)
        rest = text[self.emitted :] if len(text) > self.emitted else ""
        self.state.text = text
        return rest


class Generator:
    """A loaded checkpoint that turns chat messages into completions.

    Args:
        model: a causal LM (already on its device, in eval mode).
        tokenizer: its tokenizer, with a chat template.
        model_id: the name reported to clients (default: the checkpoint directory's name).
        insert_empty_system: render prompts with an empty system turn first when there is none (as training
            does by default; ``from_dir`` takes it from the export record).
    """

    def __init__(self, model, tokenizer, model_id: str = "model", *, insert_empty_system: bool = False):
        self.model = model
        self.insert_empty_system = bool(insert_empty_system)
        self.tokenizer = tokenizer
        self.model_id = model_id
        self.device = next(model.parameters()).device
        eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
        eos = eos if eos is not None else tokenizer.eos_token_id
        self.eos_ids: set[int] = set(eos if isinstance(eos, (list, tuple)) else [eos])
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.lock = threading.Lock()  # one generation at a time: CPU inference is compute-bound anyway

    @classmethod
    def from_dir(cls, model_dir: str | os.PathLike, *, device: str = "cpu", dtype: str = "float32") -> Generator:
        """Load ``model_dir`` (an exported HF checkpoint with its tokenizer).

        Raises:
            FileNotFoundError: when ``model_dir`` has no ``config.json``.
        """
        from transformers import AutoModelForCausalLM

        from zephyr.models.export import load_prompt_format
        from zephyr.tokenizer import load_tokenizer

        path = Path(model_dir)
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"{path}: not an exported checkpoint (no config.json)")
        tok = load_tokenizer(path)
        model = AutoModelForCausalLM.from_pretrained(str(path), dtype=getattr(torch, dtype))
        model.to(device).eval()
        fmt = load_prompt_format(path)
        return cls(model, tok, model_id=path.resolve().name, insert_empty_system=fmt["insert_empty_system"])

    def prompt_ids(self, messages: Sequence[dict[str, str]]) -> list[int]:
        """Token ids of ``messages`` as the checkpoint's training rendered prompts (BOS first)."""
        return prompt_ids(self.tokenizer, messages, insert_empty_system=self.insert_empty_system)

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    @torch.inference_mode()
    def stream(
        self,
        prompt_ids: list[int],
        *,
        temperature: float = 0.0,
        top_p: float = 1.0,
        max_tokens: int = 256,
        seed: int | None = None,
        stop: Sequence[str] | None = None,
        state: StreamState | None = None,
    ) -> Iterator[str]:
        """Generate one completion, yielding text deltas as soon as they are final.

        The caller must hold ``self.lock`` (the server does) when several threads share the generator.

        Args:
            prompt_ids: prompt token ids (from ``prompt_ids``).
            temperature: 0 (below 1e-4) for greedy decoding.
            top_p: nucleus mass for sampling.
            max_tokens: at most this many new tokens.
            seed: seeds the sampling generator (same seed, same text); ``None`` draws a fresh one.
            stop: strings that end the completion; the stop string itself is not returned.
            state: filled with token counts, finish reason and the full text.

        Yields:
            Pieces of completion text; their concatenation is ``state.text``.
        """
        st = state if state is not None else StreamState()
        st.prompt_tokens = len(prompt_ids)
        text = _TextStream(self, stop, st)
        input_ids = torch.tensor([prompt_ids], device=self.device)  # (1, T)
        past = None
        gen = _seeded(seed)
        for _ in range(max_tokens):
            out = self.model(input_ids=input_ids, past_key_values=past, use_cache=True, logits_to_keep=1)
            past = out.past_key_values
            token = _sample(out.logits[0, -1].to("cpu"), temperature, top_p, gen)
            delta, done = text.push(token)
            if delta:
                yield delta
            if done:
                break
            input_ids = torch.tensor([[token]], device=self.device)  # (1, 1)
        rest = text.close()
        if rest:
            yield rest

    def complete(
        self,
        messages: Sequence[dict[str, str]],
        *,
        temperature: float = 0.0,
        top_p: float = 1.0,
        max_tokens: int = 256,
        n: int = 1,
        seed: int | None = None,
        stop: Sequence[str] | None = None,
    ) -> list[Completion]:
        """Return ``n`` streamed completions of ``messages``; choice ``i`` uses :func:`choice_seeds`' seed."""
        ids = self.prompt_ids(messages)
        results = []
        with self.lock:
            for choice_seed in choice_seeds(n, seed):
                st = StreamState()
                for _ in self.stream(
                    ids,
                    temperature=temperature,
                    top_p=top_p,
                    max_tokens=max_tokens,
                    seed=choice_seed,
                    stop=stop,
                    state=st,
                ):
                    pass
                results.append(Completion(st.text, st.completion_tokens, st.finish_reason, st.prompt_tokens))
        return results

    @torch.inference_mode()
    def generate_batch(
        self,
        conversations: Sequence[Sequence[dict[str, str]]],
        *,
        temperature: float = 0.0,
        top_p: float = 1.0,
        max_tokens: int = 256,
        seed: int | None = None,
        stop: Sequence[str] | None = None,
        batch_size: int | None = None,
    ) -> list[Completion]:
        """Generate one completion per conversation with ``model.generate``, in length-sorted left-padded chunks.

        Args:
            conversations: B conversations, each ending with a user turn.
            temperature: 0 (below 1e-4) for greedy decoding.
            top_p: nucleus mass for sampling (no top-k cut, as in ``stream``).
            max_tokens: at most this many new tokens per row.
            seed: seeds torch's generator once for this call, before the first chunk (the global RNG state is
                restored afterwards).
            stop: strings that end a completion (cut after generation).
            batch_size: conversations per ``model.generate`` call (``None``: all at once).

        Returns:
            B completions in input order, cut at EOS and at the first stop string.
        """
        prompts = [self.prompt_ids(c) for c in conversations]
        order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))  # similar lengths share a chunk
        size = max(1, int(batch_size or len(prompts) or 1))
        kwargs: dict[str, Any] = {"max_new_tokens": int(max_tokens), "pad_token_id": self.pad_id}
        if temperature >= GREEDY_BELOW:
            kwargs.update(do_sample=True, temperature=float(temperature), top_p=float(top_p), top_k=0)
        else:
            kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        results: list[Completion | None] = [None] * len(prompts)
        with self.lock, torch.random.fork_rng(devices=[]):
            if seed is not None:
                torch.manual_seed(int(seed))
            for start in range(0, len(order), size):
                chunk = order[start : start + size]
                width = max(len(prompts[i]) for i in chunk)
                input_ids = torch.full((len(chunk), width), self.pad_id, dtype=torch.long)  # (B, T)
                attention = torch.zeros((len(chunk), width), dtype=torch.long)  # (B, T), 1 = real token
                for row, i in enumerate(chunk):
                    input_ids[row, width - len(prompts[i]) :] = torch.tensor(prompts[i])
                    attention[row, width - len(prompts[i]) :] = 1
                out = self.model.generate(
                    input_ids=input_ids.to(self.device), attention_mask=attention.to(self.device), **kwargs
                )  # (B, T + new)
                for row, i in enumerate(chunk):
                    results[i] = self._finish(out[row, width:].tolist(), len(prompts[i]), stop)
        return results  # type: ignore[return-value]

    def _finish(self, new: list[int], prompt_tokens: int, stop: Sequence[str] | None) -> Completion:
        """One batched row's completion: cut at the first EOS (counted, as OpenAI does) and the first stop string."""
        finish, n_tokens = "length", len(new)
        for j, t in enumerate(new):
            if t in self.eos_ids:
                new, finish, n_tokens = new[:j], "stop", j + 1
                break
        text = self._decode(new)
        cut = [q for q in (text.find(s) for s in (stop or []) if s) if q >= 0]
        if cut:
            text, finish = text[: min(cut)], "stop"
        return Completion(text, n_tokens, finish, prompt_tokens)


def choice_seeds(n: int, seed: int | None) -> list[int | None]:
    """The seed of each of ``n`` choices: ``seed + i`` for choice ``i`` (all ``None`` when unseeded)."""
    return [None if seed is None else int(seed) + i for i in range(int(n))]


class SequenceHandle:
    """One sequence submitted to a ``BatchScheduler``: its state, its end, and a way to cancel it.

    ``on_event(kind, value)`` is called from the scheduler thread with ``("delta", text)`` for each final piece
    of text, then exactly once with ``("finish", state)`` or ``("error", exception)``.
    """

    def __init__(self, prompt_ids: list[int], options: dict[str, Any], on_event=None):
        self.prompt_ids = list(prompt_ids)
        self.options = options
        self.on_event = on_event
        self.state = StreamState(prompt_tokens=len(self.prompt_ids))
        self.error: BaseException | None = None
        self.done = threading.Event()
        self.cancelled = threading.Event()

    def cancel(self) -> None:
        """Stop generating this sequence at the scheduler's next step (a disconnected client)."""
        self.cancelled.set()

    def wait(self, timeout: float | None = None) -> StreamState:
        """Block until the sequence ends; its final state, or raises the error that ended it."""
        if not self.done.wait(timeout):
            raise TimeoutError("sequence still generating")
        if self.error is not None:
            raise self.error
        return self.state

    def _emit(self, kind: str, value: Any) -> None:
        if self.on_event is not None:
            try:
                self.on_event(kind, value)
            except Exception:  # a gone client must not stop the batch
                self.cancelled.set()

    def _end(self, error: BaseException | None = None) -> None:
        if self.done.is_set():
            return
        self.error = error
        self.done.set()
        self._emit("error" if error is not None else "finish", error if error is not None else self.state)


class _Row:
    """A sequence being decoded: its handle, text stream, sampler and the token to feed next."""

    def __init__(self, handle: SequenceHandle, text: _TextStream, gen: torch.Generator, token: int):
        self.handle, self.text, self.gen, self.token = handle, text, gen, token


class BatchScheduler:
    """Continuous batching over one ``Generator``: sequences join and leave a running batch between decode steps.

    A background thread takes submitted sequences from a queue. Each new sequence is prefilled alone (the same
    forward pass as ``Generator.stream``, so its first token is the solo one), then its KV cache is left-padded
    into the running batch. Every step feeds each row its last token with an attention mask over its real
    columns and its own position id (its count of real tokens), samples each row from its own seeded
    ``torch.Generator`` and runs the token through the row's ``_TextStream`` (EOS, stop strings, max_tokens),
    so each sequence ends exactly where a solo run would. Guarantees: greedy rows give the solo run's tokens;
    a seeded sampled row draws the same random numbers as a solo run with that seed (its text is the same
    unless float rounding of a differently shaped batch moves a probability across a draw, which is rare);
    unseeded rows draw fresh randomness. A failing sequence (prefill, sampling) ends with its error and the
    others go on; a failing batched step ends the rows of that step only. Models with a sliding window behave
    as without one (the server's context check keeps short models exact; rows longer than the window differ).

    Args:
        generator: the loaded checkpoint.
        max_batch_size: most sequences decoded together.
        window_ms: when idle, the first arrival waits up to this long for requests still being read (inside
            ``expecting()``) to start with it; with none on the way it starts at once.
    """

    def __init__(self, generator: Generator, max_batch_size: int = 8, window_ms: float = 20.0):
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size must be >= 1, got {max_batch_size}")
        self.generator = generator
        self.max_batch_size = int(max_batch_size)
        self.window_s = max(0.0, float(window_ms)) / 1000.0
        self._queue: queue.Queue[SequenceHandle | None] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()
        self._closed = threading.Event()
        self._incoming = 0  # requests inside ``expecting()``
        self._rows: list[_Row] = []
        self._kv: list[tuple[torch.Tensor, torch.Tensor]] = []  # per layer (B, H, C, D)
        self._mask = torch.zeros((0, 0), dtype=torch.long)  # (B, C), 1 = a real cached token
        self._cache = None
        self.steps = 0  # batched decode steps run (for tests and benches)
        self.max_rows_seen = 0

    def submit(
        self,
        prompt_ids: list[int],
        *,
        temperature: float = 0.0,
        top_p: float = 1.0,
        max_tokens: int = 256,
        seed: int | None = None,
        stop: Sequence[str] | None = None,
        on_event=None,
    ) -> SequenceHandle:
        """Queue one sequence; returns its handle at once (the scheduler thread starts on first use)."""
        opts = {"temperature": float(temperature), "top_p": float(top_p), "max_tokens": int(max_tokens)}
        handle = SequenceHandle(prompt_ids, {**opts, "seed": seed, "stop": stop}, on_event)
        if self._closed.is_set():
            handle._end(RuntimeError("the server is shutting down"))
            return handle
        with self._start_lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, daemon=True, name="zephyr-batch-scheduler")
                self._thread.start()
        self._queue.put(handle)
        return handle

    def close(self, timeout: float = 10.0) -> None:
        """Stop the thread; sequences still queued or decoding end with a shutdown error."""
        self._closed.set()
        self._queue.put(None)
        if self._thread is not None:
            self._thread.join(timeout)
        self._fail_queued()

    def _fail_queued(self) -> None:
        while True:
            try:
                h = self._queue.get_nowait()
            except queue.Empty:
                return
            if h is not None:
                h._end(RuntimeError("the server is shutting down"))

    def _take(self) -> list[SequenceHandle]:
        """New sequences for the free slots: block (then wait ``window_ms``) when idle, else only what is queued."""
        free = self.max_batch_size - len(self._rows)
        got: list[SequenceHandle] = []
        if free <= 0:
            return got
        try:
            first = self._queue.get(timeout=0.5) if not self._rows else self._queue.get_nowait()
        except queue.Empty:
            return got
        if first is None:
            return got
        got.append(first)
        deadline = time.perf_counter() + (self.window_s if not self._rows else 0.0)
        while len(got) < free:
            left = deadline - time.perf_counter()
            try:
                if left > 0 and self._incoming > 0:  # a request is being read: give it until the deadline
                    h = self._queue.get(timeout=min(left, 0.002))
                else:
                    h = self._queue.get_nowait()
            except queue.Empty:
                if left > 0 and self._incoming > 0:
                    continue
                break
            if h is None:
                break
            got.append(h)
        return got

    @contextmanager
    def expecting(self):
        """Mark a request as on its way (being read and validated): an idle batch start waits for it."""
        with self._start_lock:
            self._incoming += 1
        try:
            yield
        finally:
            with self._start_lock:
                self._incoming -= 1

    def _loop(self) -> None:
        while not self._closed.is_set():
            for h in self._take():
                self._admit(h)
            self._drop(lambda r: r.handle.cancelled.is_set(), None)
            if self._rows:
                self._step()
        for r in self._rows:
            r.handle._end(RuntimeError("the server is shutting down"))
        self._rows, self._kv, self._cache = [], [], None
        self._fail_queued()

    @torch.inference_mode()
    def _admit(self, h: SequenceHandle) -> None:
        """Prefill ``h`` alone, take its first token, and left-pad its cache into the running batch."""
        from transformers.cache_utils import DynamicCache

        g, o = self.generator, h.options
        if h.cancelled.is_set():
            h._end(RuntimeError("cancelled"))
            return
        try:
            text = _TextStream(g, o["stop"], h.state)
            gen = _seeded(o["seed"])
            with g.lock:
                out = g.model(
                    input_ids=torch.tensor([h.prompt_ids], device=g.device),
                    past_key_values=DynamicCache(),
                    use_cache=True,
                    logits_to_keep=1,  # as ``stream``: the head runs on the last position only
                )
            token = _sample(out.logits[0, -1].to("cpu"), o["temperature"], o["top_p"], gen)
            row = _Row(h, text, gen, token)
            if self._advance(row):
                return
            kv = [(layer.keys, layer.values) for layer in out.past_key_values.layers]
        except Exception as e:  # this sequence fails alone
            h._end(e)
            return
        self._sync()
        n = len(h.prompt_ids)
        width = max(self._mask.shape[1], n)
        old = self._pad(self._kv, self._mask, width) if self._rows else None
        new_kv = [(self._left_pad(k, width), self._left_pad(v, width)) for k, v in kv]
        new_mask = torch.zeros((1, width), dtype=torch.long)
        new_mask[0, width - n :] = 1
        if old is None:
            self._kv, self._mask = new_kv, new_mask
        else:
            old_kv, old_mask = old
            self._kv = [(torch.cat([a, b]), torch.cat([c, d])) for (a, c), (b, d) in zip(old_kv, new_kv)]
            self._mask = torch.cat([old_mask, new_mask])
        self._rows.append(row)
        self._cache = None  # rebuilt from ``_kv`` at the next step
        self.max_rows_seen = max(self.max_rows_seen, len(self._rows))

    def _sync(self) -> None:
        """Take the running cache's tensors back into ``_kv`` (the model's forward grows the cache object)."""
        if self._cache is not None:
            self._kv = [(layer.keys, layer.values) for layer in self._cache.layers]
            self._cache = None

    @staticmethod
    def _left_pad(t: torch.Tensor, width: int) -> torch.Tensor:
        """``t`` (B, H, C, D) with zero columns prepended up to ``width``."""
        extra = width - t.shape[2]
        if extra <= 0:
            return t
        return torch.cat([t.new_zeros((*t.shape[:2], extra, t.shape[3])), t], dim=2)

    def _pad(self, kv, mask: torch.Tensor, width: int):
        pad = width - mask.shape[1]
        if pad > 0:
            mask = torch.cat([torch.zeros((mask.shape[0], pad), dtype=mask.dtype), mask], dim=1)
        return [(self._left_pad(k, width), self._left_pad(v, width)) for k, v in kv], mask

    def _advance(self, row: _Row) -> bool:
        """Run ``row.token`` through the row's text stream; end the sequence and return True when it is over."""
        delta, done = row.text.push(row.token)
        if delta:
            row.handle._emit("delta", delta)
        if done or row.handle.state.completion_tokens >= row.handle.options["max_tokens"]:
            rest = row.text.close()
            if rest:
                row.handle._emit("delta", rest)
            row.handle._end()
            return True
        return False

    def _drop(self, gone, error: BaseException | None) -> None:
        """Remove the rows for which ``gone(row)`` holds (ending cancelled ones) and trim all-padding columns."""
        keep = [i for i, r in enumerate(self._rows) if not gone(r)]
        if len(keep) == len(self._rows):
            return
        for i, r in enumerate(self._rows):
            if i not in keep and not r.handle.done.is_set():
                r.handle._end(error or RuntimeError("cancelled"))
        self._sync()
        self._rows = [self._rows[i] for i in keep]
        if not self._rows:
            self._kv, self._mask, self._cache = [], torch.zeros((0, 0), dtype=torch.long), None
            return
        idx = torch.tensor(keep)
        mask = self._mask[idx]
        first = int(mask.any(dim=0).long().argmax())  # leading columns no remaining row uses
        self._mask = mask[:, first:]
        self._kv = [(k[idx.to(k.device), :, first:], v[idx.to(v.device), :, first:]) for k, v in self._kv]
        self._cache = None

    @torch.inference_mode()
    def _step(self) -> None:
        """One batched decode step over every row; rows that end leave the batch."""
        from transformers.cache_utils import DynamicCache

        g = self.generator
        try:
            if self._cache is None:
                self._cache = DynamicCache(ddp_cache_data=self._kv)
            tokens = torch.tensor([[r.token] for r in self._rows], device=g.device)  # (B, 1)
            positions = self._mask.sum(dim=1, keepdim=True)  # (B, 1): real tokens before this one
            self._mask = torch.cat([self._mask, torch.ones((len(self._rows), 1), dtype=torch.long)], dim=1)
            with g.lock:
                out = g.model(
                    input_ids=tokens,
                    attention_mask=self._mask.to(g.device),
                    position_ids=positions.to(g.device),
                    past_key_values=self._cache,
                    use_cache=True,
                )
            logits = out.logits[:, -1].to("cpu")  # (B, V)
        except Exception as e:  # the whole step failed: its rows end with the error, the scheduler goes on
            self._cache = None
            self._drop(lambda r: True, e)
            return
        self.steps += 1
        greedy = _argmax(logits)  # one call for the batch
        ended: set[int] = set()  # ids of the rows that end here
        for i, r in enumerate(self._rows):
            o = r.handle.options
            try:
                sampled = o["temperature"] >= GREEDY_BELOW
                r.token = _sample(logits[i], o["temperature"], o["top_p"], r.gen) if sampled else greedy[i]
                if self._advance(r):
                    ended.add(id(r))
            except Exception as e:  # this row fails alone
                r.handle._end(e)
                ended.add(id(r))
        if ended:
            self._drop(lambda r: id(r) in ended, None)


class GeneratorBackend:
    """The ``ChatBackend`` over a loaded ``Generator``, with a batched ``chat_batch`` for throughput.

    ``chat`` is ``chat_batch`` of one conversation, so both give the same text for the same seed; texts are
    stripped of surrounding whitespace.

    Args:
        generator: the loaded checkpoint.
        name: the name recorded in answers and datasets (default: the generator's ``model_id``).
        batch_size: conversations per ``model.generate`` call in ``chat_batch``.
    """

    def __init__(self, generator: Generator, name: str | None = None, batch_size: int = 16):
        self.generator = generator
        self.name = name or generator.model_id
        self.batch_size = int(batch_size)

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
        """``n`` completions of ``messages`` (see ``chat_batch``)."""
        return self.chat_batch(
            [messages], temperature=temperature, top_p=top_p, max_tokens=max_tokens, n=n, seed=seed, stop=stop
        )[0]

    def chat_batch(
        self,
        batch: Sequence[Sequence[dict[str, str]]],
        *,
        temperature: float = 0.7,
        top_p: float = 1.0,
        max_tokens: int = 256,
        n: int = 1,
        seed: int | None = None,
        stop: list[str] | None = None,
    ) -> list[ChatResponse]:
        """One response per conversation, each with ``n`` texts: one ``generate_batch`` pass per choice.

        Args:
            batch: conversations, each ``[{"role", "content"}, ...]``.
            temperature: 0 (below 1e-4) means greedy decoding.
            top_p: nucleus sampling mass.
            max_tokens: new tokens per completion; generation also stops at EOS.
            n: completions per conversation; choice ``i`` is generated with seed ``seed + i``.
            seed: ``None`` draws fresh randomness.
            stop: strings that cut a completion (finish reason ``stop``).

        Returns:
            One ``ChatResponse`` per conversation, in order.
        """
        passes = [
            self.generator.generate_batch(
                batch, temperature=temperature, top_p=top_p, max_tokens=max_tokens, seed=s, stop=stop,
                batch_size=self.batch_size,
            )
            for s in choice_seeds(n, seed)
        ]  # fmt: skip
        return [
            ChatResponse(
                texts=[p[i].text.strip() for p in passes],
                prompt_tokens=passes[0][i].prompt_tokens if passes else 0,
                completion_tokens=sum(p[i].completion_tokens for p in passes),
                model=self.name,
                finish_reasons=[p[i].finish_reason for p in passes],
            )
            for i in range(len(batch))
        ]


class LocalCheckpointBackend(GeneratorBackend):
    """``GeneratorBackend`` of an exported checkpoint folder (a local pool member, judge or MT-Bench answerer).

    Args:
        path: folder with ``config.json``, weights and a tokenizer (the Zephyr template when it has none); its
            export record says how prompts are rendered.
        name: name recorded in datasets (default: the folder name).
        device: torch device string.
        dtype: ``float32`` | ``bfloat16`` | ``float16``.
        batch_size: conversations per ``generate`` call in ``chat_batch``.

    Raises:
        FileNotFoundError: when ``path`` is not a folder with ``config.json``.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        name: str | None = None,
        device: str = "cpu",
        dtype: str = "float32",
        batch_size: int = 16,
    ):
        super().__init__(Generator.from_dir(path, device=device, dtype=dtype), name, batch_size)
        self.path = str(path)

    def __repr__(self) -> str:
        return f"LocalCheckpointBackend(path={self.path!r})"


def input_conversation(row: dict[str, Any], where: str) -> list[dict[str, str]]:
    """The conversation to answer for one input row: its ``messages`` or ``[{"role": "user", "content": prompt}]``.

    A trailing assistant turn (a chosen/reference answer in SFT-style rows) is dropped, so the model answers
    the last user turn.

    Raises:
        ValueError: naming ``where`` (file:line) when the row has neither key or a malformed conversation.
    """
    from zephyr.data.chat_template import ConversationError, validate_messages

    if "messages" in row:
        msgs = list(row["messages"] or [])
        while msgs and isinstance(msgs[-1], dict) and msgs[-1].get("role") == "assistant":
            msgs.pop()
        try:
            # validate_messages wants an assistant turn: check the conversation with a placeholder answer
            validate_messages([*msgs, {"role": "assistant", "content": "x"}])
        except ConversationError as e:
            raise ValueError(f"{where}: {e}") from e
        return [{"role": m["role"], "content": m["content"]} for m in msgs]
    if isinstance(row.get("prompt"), str) and row["prompt"].strip():
        return [{"role": "user", "content": row["prompt"]}]
    raise ValueError(f"{where}: row needs a 'messages' list or a non-empty 'prompt' string")


def row_id(row: dict[str, Any], index: int) -> str:
    """A row's id: its ``id``, ``prompt_id`` or ``question_id`` field, else its 0-based line index."""
    for key in ("id", "prompt_id", "question_id"):
        if row.get(key) is not None:
            return str(row[key])
    return str(index)


def generate_file(
    generator: Generator,
    input_path: str | os.PathLike,
    output_path: str | os.PathLike,
    *,
    batch_size: int = 8,
    temperature: float = 0.0,
    top_p: float = 1.0,
    max_tokens: int = 256,
    seed: int | None = 0,
    stop: Sequence[str] | None = None,
    progress: bool = True,
) -> dict[str, int]:
    """Answer every row of ``input_path`` into ``output_path`` (jsonl), resuming where a previous run stopped.

    Output rows: ``{"id", "messages", "output", "model_id", "finish_reason", "completion_tokens", "tstamp"}``.
    Rows whose id is already in the output are skipped; each batch is appended and flushed, so an
    interrupted run loses at most one batch.

    Returns:
        ``{"total", "skipped", "generated"}`` row counts.
    """
    todo: list[tuple[str, list[dict[str, str]]]] = []
    seen_ids: set[str] = set()
    for i, (line_no, row) in enumerate(read_jsonl_numbered(input_path)):
        rid = row_id(row, i)
        if rid in seen_ids:
            raise ValueError(f"{input_path}:{line_no}: duplicate id {rid!r}")
        seen_ids.add(rid)
        todo.append((rid, input_conversation(row, f"{input_path}:{line_no}")))
    out = Path(output_path)
    done: set[str] = set()
    if out.exists():
        done = {str(r.get("id")) for _, r in read_jsonl_numbered(out)}
    pending = [t for t in todo if t[0] not in done]
    out.parent.mkdir(parents=True, exist_ok=True)
    from rich.progress import Progress

    with open(out, "a", encoding="utf-8") as f, Progress(disable=not progress, transient=True) as bar:
        task = bar.add_task(f"generating ({generator.model_id})", total=len(pending))
        for start in range(0, len(pending), batch_size):
            chunk = pending[start : start + batch_size]
            answers = generator.generate_batch(
                [c for _, c in chunk],
                temperature=temperature,
                top_p=top_p,
                max_tokens=max_tokens,
                seed=None if seed is None else seed + start,
                stop=stop,
            )
            for (rid, conv), ans in zip(chunk, answers):
                row = {
                    "id": rid,
                    "messages": conv,
                    "output": ans.text,
                    "model_id": generator.model_id,
                    "finish_reason": ans.finish_reason,
                    "completion_tokens": ans.completion_tokens,
                    "tstamp": time.time(),
                }
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
            f.flush()
            bar.advance(task, len(chunk))
    return {"total": len(todo), "skipped": len(todo) - len(pending), "generated": len(pending)}
