"""UltraChat-style dialogues for dSFT: the teacher answers as the assistant, a user simulator asks follow-ups.

For each opening instruction a turn count is drawn from ``[min_turns, max_turns]`` (seeded per prompt; UltraChat
used 3-7 rounds for world questions and 2-4 for writing). The teacher answers the conversation so far; between
answers a user simulator (by default the teacher itself, shown the conversation with the roles flipped and told
to play a curious human) writes the next user message. Dialogues are then filtered as ultrachat_200k was:
an assistant turn containing a disclaimer ("I do not have emotions", "As an AI ...") removes the dialogue, and
so does an empty (or, optionally, length-truncated) turn. Rows use the ``ultrachat_200k`` schema:
``prompt`` (the first user turn), ``prompt_id`` (SHA-256 hex of it), ``messages``.

Generation is resumable: one row per ``(prompt_id, "dialogue")`` in ``dialogues.jsonl``; a filtered dialogue is
stored with its drop reason so a restart does not pay for it again.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from zephyr.chat import ChatBackend
from zephyr.data.chat_template import ConversationError, validate_messages
from zephyr.feedback.backends import redact
from zephyr.feedback.runner import Job, run_jobs
from zephyr.feedback.store import ResultStore, write_jsonl

DISCLAIMERS = (
    "I do not have emotions",
    "I don't have emotions",
    "I do not have personal experiences",
    "I don't have personal experiences",
    "I do not have opinions",
    "I don't have opinions",
    "I do not have personal opinions",
    "I don't have personal opinions",
    "I don't have personal beliefs",
    "I do not have feelings",
    "I don't have feelings",
    "As an AI",
    "as an AI language model",
    "As a language model",
    "I am an AI",
    "I'm an AI",
    "I'm just an AI",
)

USER_SIM_SYSTEM = (
    "You are a curious human chatting with an AI assistant. Read the conversation and write the human's next "
    "message: one short follow-up question or request that builds on the assistant's last answer. "
    "Write only that message."
)


@dataclass
class DialogueConfig:
    """Knobs of ``generate_dialogues`` (the ``sft:`` section of ``conf/feedback/*.yaml``)."""

    min_turns: int = 1
    max_turns: int = 3
    seed: int = 0
    workers: int = 4
    disclaimers: Sequence[str] = DISCLAIMERS
    drop_truncated: bool = True
    assistant_gen: dict[str, Any] = field(
        default_factory=lambda: {"temperature": 0.7, "top_p": 1.0, "max_tokens": 1024}
    )
    user_gen: dict[str, Any] = field(default_factory=lambda: {"temperature": 0.9, "top_p": 1.0, "max_tokens": 256})
    test_size: float = 0.1
    progress: bool = True
    fsync_interval: float = 0.0


def prompt_id_of(text: str) -> str:
    """SHA-256 hex of the first user turn (``ultrachat_200k``'s ``prompt_id``)."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def disclaimer_in(messages: Sequence[Mapping[str, str]], phrases: Sequence[str] = DISCLAIMERS) -> str | None:
    """The first disclaimer phrase found (case-insensitive) in an assistant turn, else ``None``."""
    pats = [(p, re.compile(re.escape(p).replace("\\ ", r"\s+").replace("'", "['’]"), re.I)) for p in phrases]
    for m in messages:
        if m["role"] != "assistant":
            continue
        for p, rx in pats:
            if rx.search(m["content"]):
                return p
    return None


def _flip(messages: Sequence[Mapping[str, str]]) -> list[dict[str, str]]:
    """The conversation as the user simulator sees it: its own (user) turns become ``assistant``."""
    swap = {"user": "assistant", "assistant": "user"}
    return [{"role": "system", "content": USER_SIM_SYSTEM}] + [
        {"role": swap[m["role"]], "content": m["content"]} for m in messages
    ]


def generate_dialogue(
    instruction: str,
    teacher: ChatBackend,
    user_sim: ChatBackend,
    turns: int,
    *,
    seed: int = 0,
    cfg: DialogueConfig | None = None,
) -> tuple[list[dict[str, str]], int, str | None]:
    """Play one dialogue of ``turns`` assistant answers.

    Returns:
        ``(messages, tokens used, drop reason or None)``.
    """
    cfg = cfg or DialogueConfig()
    messages = [{"role": "user", "content": instruction}]
    tokens = 0
    for t in range(turns):
        r = teacher.chat(messages, seed=seed + 2 * t, n=1, **cfg.assistant_gen)
        tokens += r.prompt_tokens + r.completion_tokens
        answer = (r.texts[0] if r.texts else "").strip()
        if not answer:
            return messages, tokens, "empty_assistant_turn"
        if cfg.drop_truncated and r.finish_reasons and r.finish_reasons[0] == "length":
            return messages, tokens, "truncated_assistant_turn"
        messages.append({"role": "assistant", "content": answer})
        if t == turns - 1:
            break
        u = user_sim.chat(_flip(messages), seed=seed + 2 * t + 1, n=1, **cfg.user_gen)
        tokens += u.prompt_tokens + u.completion_tokens
        follow = (u.texts[0] if u.texts else "").strip()
        if not follow:  # the simulator had nothing to ask: keep the dialogue as it is
            break
        messages.append({"role": "user", "content": follow})
    phrase = disclaimer_in(messages, cfg.disclaimers)
    if phrase:
        return messages, tokens, f"disclaimer: {phrase}"
    try:
        validate_messages(messages, require_assistant_last=True)
    except ConversationError as e:
        return messages, tokens, f"invalid: {e}"
    return messages, tokens, None


def generate_dialogues(
    instructions: Sequence[str],
    teacher: ChatBackend,
    out_dir: str | Path,
    *,
    user_sim: ChatBackend | None = None,
    cfg: DialogueConfig | None = None,
) -> dict[str, Any]:
    """Generate (or resume) dialogues for ``instructions``; export ``train_sft.jsonl`` and ``test_sft.jsonl``.

    Args:
        instructions: opening user turns (duplicates are generated once).
        teacher: the assistant.
        out_dir: folder for ``dialogues.jsonl`` (store), the exports and ``sft_summary.json``.
        user_sim: the user simulator (default: the teacher).
        cfg: knobs.

    Returns:
        The summary (also in ``sft_summary.json``): counts, drop reasons, failures, seconds, dialogues/s.
    """
    cfg = cfg or DialogueConfig()
    if not 1 <= cfg.min_turns <= cfg.max_turns:
        raise ValueError(f"need 1 <= min_turns <= max_turns, got {cfg.min_turns}, {cfg.max_turns}")
    user_sim = user_sim or teacher
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    order: dict[str, str] = {}
    for ins in instructions:
        order.setdefault(prompt_id_of(ins), ins)
    t0 = time.perf_counter()
    with ResultStore(out / "dialogues.jsonl", redact=redact, fsync_interval=cfg.fsync_interval) as store:
        if store.torn_lines:
            print(f"{store.path}: ignored {store.torn_lines} torn line(s) from an interrupted run")
        jobs = []
        for pid, ins in order.items():

            def run(pid=pid, ins=ins):
                rng = random.Random(f"{cfg.seed}:{pid}")
                turns = rng.randint(cfg.min_turns, cfg.max_turns)
                messages, tokens, reason = generate_dialogue(
                    ins, teacher, user_sim, turns, seed=rng.randrange(2**31), cfg=cfg
                )
                value = {"prompt": ins, "prompt_id": pid, "messages": messages, "dropped": reason}
                value["usage"] = {"prompt_tokens": tokens, "completion_tokens": 0}
                return [value]

            jobs.append(Job([(pid, "dialogue")], run))
        s = run_jobs(jobs, store, max_workers=cfg.workers, desc="dialogues", progress=cfg.progress)
        values = [store.get((pid, "dialogue")) for pid in order]
        failed = sorted(k[0] for k in store.failures)
    kept = [
        {"prompt": v["prompt"], "prompt_id": v["prompt_id"], "messages": v["messages"]}
        for v in values
        if v and not v["dropped"]
    ]
    reasons: dict[str, int] = {}
    for v in values:
        if v and v["dropped"]:
            key = v["dropped"].split(":")[0]
            reasons[key] = reasons.get(key, 0) + 1
    ids = [r["prompt_id"] for r in kept]
    random.Random(cfg.seed).shuffle(ids)
    n_test = int(round(cfg.test_size * len(ids))) if cfg.test_size < 1 else int(cfg.test_size)
    test_ids = set(ids[:n_test])
    n_train = write_jsonl(out / "train_sft.jsonl", [r for r in kept if r["prompt_id"] not in test_ids])
    n_test = write_jsonl(out / "test_sft.jsonl", [r for r in kept if r["prompt_id"] in test_ids])
    seconds = time.perf_counter() - t0
    summary = {
        "instructions": len(order),
        "kept": len(kept),
        "train_sft": n_train,
        "test_sft": n_test,
        "dropped": reasons,
        "failed": failed,
        "example_errors": s.errors[:5],
        "turns": [cfg.min_turns, cfg.max_turns],
        "done_now": s.done,
        "skipped": s.skipped,
        "tokens": s.tokens,
        "seconds": round(seconds, 3),
        "dialogues_per_s": round(s.done / seconds, 3) if seconds > 0 else 0.0,
    }
    (out / "sft_summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary
