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
* :func:`choice_seeds` is the one n-choices rule: choice ``i`` of a seeded request uses ``seed + i``
  (``Generator.complete`` and ``GeneratorBackend.chat_batch`` both loop over it).
* ``GeneratorBackend`` is the one ``ChatBackend`` over a checkpoint (``chat`` is ``chat_batch`` of one
  conversation); ``LocalCheckpointBackend`` builds one from an export folder (Hydra ``_target_`` of a local pool
  member).
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Iterator, Sequence
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
    """

    prompt_tokens: int = 0
    completion_tokens: int = 0
    finish_reason: str = "length"
    text: str = ""


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


def _sample(logits: torch.Tensor, temperature: float, top_p: float, gen: torch.Generator | None) -> int:
    """Pick the next token from ``logits`` (V,): argmax when greedy, else nucleus sampling."""
    if temperature < GREEDY_BELOW:
        return int(torch.argmax(logits).item())
    probs = torch.softmax(logits.float() / temperature, dim=-1)  # (V,)
    if top_p < 1.0:
        sorted_p, order = torch.sort(probs, descending=True)
        # keep the smallest prefix whose mass reaches top_p (the first token always stays)
        keep = torch.cumsum(sorted_p, dim=-1) - sorted_p < top_p
        sorted_p = torch.where(keep, sorted_p, torch.zeros_like(sorted_p))
        choice = torch.multinomial(sorted_p / sorted_p.sum(), 1, generator=gen)
        return int(order[choice].item())
    return int(torch.multinomial(probs, 1, generator=gen).item())


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
        stops = [s for s in (stop or []) if s]
        st.prompt_tokens = len(prompt_ids)
        gen = torch.Generator(device="cpu")
        gen.manual_seed(seed if seed is not None else int.from_bytes(os.urandom(4), "little"))
        input_ids = torch.tensor([prompt_ids], device=self.device)  # (1, T)
        past = None
        out_ids: list[int] = []
        emitted = 0  # characters of the decoded completion already yielded
        text = ""
        st.finish_reason = "length"
        cut = False
        for _ in range(max_tokens):
            out = self.model(input_ids=input_ids, past_key_values=past, use_cache=True)
            past = out.past_key_values
            token = _sample(out.logits[0, -1].to("cpu"), temperature, top_p, gen)
            st.completion_tokens += 1
            if token in self.eos_ids:
                st.finish_reason = "stop"
                break
            out_ids.append(token)
            input_ids = torch.tensor([[token]], device=self.device)  # (1, 1)
            text = self._decode(out_ids)
            if text.endswith("\ufffd"):  # an incomplete UTF-8 byte sequence: wait for the rest
                continue
            if stops:
                start = max(0, emitted - max(len(s) for s in stops))
                hits = [p for p in (text.find(s, start) for s in stops) if p >= 0]
                if hits:
                    text, cut = text[: min(hits)], True
                    st.finish_reason = "stop"
                    break
            safe = len(text) - _held_back(text, stops)
            if safe > emitted:
                st.text = text[:safe]
                yield text[emitted:safe]
                emitted = safe
        if not cut:
            text = self._decode(out_ids)
        if len(text) > emitted:
            yield text[emitted:]
        st.text = text

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
