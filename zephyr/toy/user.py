"""The toy world's user simulator: the "curious human" of UltraChat-style dialogues, for toy tasks.

``dialogues.generate_dialogue`` asks a user simulator for the next user turn, showing it the conversation with
the roles flipped (its own past turns as ``assistant``). A real model reads the instruction and writes a
follow-up; the rule-based toy teacher cannot, so this backend plays that role in the toy world: it recovers the
task the assistant just answered and asks a verifiable follow-up on the assistant's own answer ("Now double
it.", with ``zephyr.toy.tasks.make_follow_up``), or, when there is no answer to build on or by chance, a fresh
question. It goes through the same ``ChatBackend`` interface and the same dialogue code as a real simulator.
"""

from __future__ import annotations

import hashlib
import random

from zephyr.chat import ChatResponse


class ToyUserSimulator:
    """Writes the next user turn of a toy dialogue.

    Args:
        seed: seed of the follow-up choices.
        follow_up_rate: chance of a follow-up on the previous answer rather than a new question.
        families: task families of new questions (default: all).
        name: model name reported in responses.
    """

    def __init__(
        self, seed: int = 0, follow_up_rate: float = 0.5, families: list[str] | None = None, name: str = "toy-user"
    ):
        self.seed = seed
        self.follow_up_rate = float(follow_up_rate)
        self.families = families
        self.name = name

    def chat(self, messages, *, temperature=0.9, top_p=1.0, max_tokens=128, n=1, seed=None, stop=None) -> ChatResponse:
        from zephyr.toy.rules import resolve_task
        from zephyr.toy.tasks import extract_answer, make_follow_up, sample_tasks

        swap = {"user": "assistant", "assistant": "user"}
        convo = [{"role": swap[m["role"]], "content": m["content"]} for m in messages if m["role"] in swap]
        texts = []
        for i in range(n):
            digest = hashlib.sha256(f"{self.seed}|{seed}|{i}|{convo}".encode()).digest()
            rng = random.Random(digest)
            question = None
            if convo and convo[-1]["role"] == "assistant":
                task = resolve_task(convo[:-1])
                said = extract_answer(task, convo[-1]["content"]) if task is not None else None
                if task is not None and said is not None and ("," in said) == ("," in task.answer):
                    if rng.random() < self.follow_up_rate:
                        question = make_follow_up(task, rng, base_answer=said).question
            if question is None:
                question = sample_tasks(1, int.from_bytes(digest[:4], "big"), families=self.families)[0].question
            texts.append(question)
        return ChatResponse(
            texts=texts,
            prompt_tokens=sum(len(m["content"].split()) for m in messages),
            completion_tokens=sum(len(t.split()) for t in texts),
            model=self.name,
            finish_reasons=["stop"] * n,
        )
