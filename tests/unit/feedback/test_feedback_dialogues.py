"""UltraChat-style dialogues: turns, role flip for the user simulator, disclaimer filter, schema, resume."""

import hashlib
import json

import pytest

from zephyr.chat import ChatResponse
from zephyr.feedback.dialogues import DialogueConfig, disclaimer_in, generate_dialogue, generate_dialogues

pytestmark = pytest.mark.unit


class Echo:
    """Assistant that numbers its answers; says a disclaimer when asked about feelings."""

    name = "echo"

    def __init__(self):
        self.calls = 0

    def chat(self, messages, **kw):
        self.calls += 1
        last = messages[-1]["content"]
        if "feel" in last:
            return ChatResponse(["As an AI, I do not have emotions."], finish_reasons=["stop"])
        if "long" in last:
            return ChatResponse(["cut"], finish_reasons=["length"])
        n = sum(m["role"] == "assistant" for m in messages) + 1
        return ChatResponse([f"answer {n} to: {last}"], prompt_tokens=3, completion_tokens=2, finish_reasons=["stop"])


class Asker:
    """User simulator: checks it sees flipped roles, then asks a follow-up."""

    name = "asker"

    def __init__(self):
        self.seen = []

    def chat(self, messages, **kw):
        self.seen.append(messages)
        assert messages[0]["role"] == "system" and "curious human" in messages[0]["content"]
        assert messages[1]["role"] == "assistant"  # the opening user turn is the simulator's own
        assert messages[-1]["role"] == "user"  # the assistant's answer is what it replies to
        return ChatResponse([f"follow-up {len(self.seen)}"], finish_reasons=["stop"])


def test_generate_dialogue_alternates_and_counts_turns():
    msgs, tokens, reason = generate_dialogue("Tell me about tides.", Echo(), Asker(), 3)
    assert reason is None
    assert [m["role"] for m in msgs] == ["user", "assistant"] * 3
    assert msgs[2]["content"] == "follow-up 1" and msgs[5]["content"] == "answer 3 to: follow-up 2"
    assert tokens == 3 * 5


def test_disclaimer_and_truncation_drop():
    _, _, reason = generate_dialogue("How do you feel today?", Echo(), Asker(), 1)
    assert reason == "disclaimer: I do not have emotions"
    _, _, reason = generate_dialogue("Write something long.", Echo(), Asker(), 1)
    assert reason == "truncated_assistant_turn"
    assert disclaimer_in([{"role": "assistant", "content": "I don’t  have personal experiences, but..."}])
    assert disclaimer_in([{"role": "user", "content": "As an AI, what do you think?"}]) is None


def test_generate_dialogues_schema_split_and_resume(tmp_path):
    teacher = Echo()
    instructions = [f"Question number {i} about the sea?" for i in range(20)] + ["How do you feel today?"]
    cfg = DialogueConfig(min_turns=1, max_turns=3, test_size=0.25, progress=False, workers=2)
    summary = generate_dialogues(instructions, teacher, tmp_path, user_sim=Asker(), cfg=cfg)
    assert summary["kept"] == 20 and summary["dropped"] == {"disclaimer": 1}
    assert (summary["train_sft"], summary["test_sft"]) == (15, 5)
    rows = [json.loads(x) for x in (tmp_path / "train_sft.jsonl").read_text().splitlines()]
    for r in rows:
        assert set(r) == {"prompt", "prompt_id", "messages"}
        assert r["prompt_id"] == hashlib.sha256(r["prompt"].encode()).hexdigest()
        assert r["messages"][0] == {"role": "user", "content": r["prompt"]}
        assert r["messages"][-1]["role"] == "assistant" and 2 <= len(r["messages"]) <= 6
    assert len({len(r["messages"]) for r in rows}) > 1  # turn counts vary within [min, max]
    calls = teacher.calls
    again = generate_dialogues(instructions, teacher, tmp_path, user_sim=Asker(), cfg=cfg)
    assert teacher.calls == calls and again["skipped"] == 21 and again["kept"] == 20
    assert (tmp_path / "train_sft.jsonl").read_text().splitlines() == [json.dumps(r) for r in rows]


def test_bad_turn_range():
    with pytest.raises(ValueError, match="min_turns <= max_turns"):
        generate_dialogues(["a b c d"], Echo(), "unused", cfg=DialogueConfig(min_turns=3, max_turns=2))
