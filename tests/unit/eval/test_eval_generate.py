"""The generation engine: streaming == non-streaming, stop strings, length-sorted batches, n choices, jsonl resume."""

from __future__ import annotations

import json

import pytest

from tests.conftest import TINY_CONFIG
from zephyr.generation import (
    Generator,
    GeneratorBackend,
    StreamState,
    _held_back,
    choice_seeds,
    generate_file,
    input_conversation,
)

MSGS = [{"role": "user", "content": "Hello there"}]


@pytest.fixture(scope="module")
def gen(tokenizer):
    from zephyr.models.mistral import build_model

    return Generator(build_model(config=TINY_CONFIG, init_seed=0).eval(), tokenizer, model_id="tiny")


def test_prompt_ids_use_chat_template_with_bos(gen, tokenizer):
    ids = gen.prompt_ids(MSGS)
    assert ids[0] == 1
    assert tokenizer.decode(ids, skip_special_tokens=False) == "<s> <|user|>\nHello there</s> \n<|assistant|>\n"


@pytest.mark.parametrize(
    ("text", "stops", "held"),
    [("abc</", ["</s>"], 2), ("abc<", ["</s>"], 1), ("abc", ["</s>"], 0), ("xEN", ["END", "NDX"], 2), ("a", [], 0)],
)
def test_held_back(text, stops, held):
    assert _held_back(text, stops) == held


def test_stream_deltas_concatenate_to_complete(gen):
    ids = gen.prompt_ids(MSGS)
    st = StreamState()
    parts = list(gen.stream(ids, max_tokens=16, state=st))
    full = gen.complete(MSGS, max_tokens=16)[0]
    assert "".join(parts) == st.text == full.text
    assert st.completion_tokens == full.completion_tokens == 16 and st.finish_reason == "length"
    assert len(parts) > 1


def test_stop_string_never_leaks_into_stream(gen):
    full = gen.complete(MSGS, max_tokens=24)[0].text
    stop = full[10:13]
    parts = list(gen.stream(gen.prompt_ids(MSGS), max_tokens=24, stop=[stop]))
    assert "".join(parts) == full[: full.index(stop)]
    assert all(stop not in p for p in parts)


def test_batch_left_padding_matches_single(gen):
    long = [{"role": "user", "content": "A much longer question that needs several more tokens to say"}]
    batch = gen.generate_batch([MSGS, long], max_tokens=10)
    assert batch[0].text == gen.complete(MSGS, max_tokens=10)[0].text
    assert batch[1].text == gen.complete(long, max_tokens=10)[0].text


def test_backend_reports_counts(gen):
    resp = GeneratorBackend(gen).chat(MSGS, temperature=0.0, max_tokens=5, n=2, seed=1)
    assert resp.model == "tiny" and len(resp.texts) == 2 and resp.completion_tokens == 10
    assert resp.prompt_tokens == len(gen.prompt_ids(MSGS)) and resp.finish_reasons == ["length", "length"]


def test_generate_file_resumes(gen, tmp_path):
    src = tmp_path / "in.jsonl"
    rows = [{"id": f"p{i}", "prompt": f"Question number {i}"} for i in range(3)]
    rows.append({"id": "m", "messages": [*MSGS, {"role": "assistant", "content": "dropped"}]})
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "out.jsonl"
    out.write_text(json.dumps({"id": "p1", "output": "kept"}) + "\n")  # an earlier, interrupted run
    stats = generate_file(gen, src, out, batch_size=2, max_tokens=4, progress=False)
    assert stats == {"total": 4, "skipped": 1, "generated": 3}
    got = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["id"] for r in got] == ["p1", "p0", "p2", "m"]
    assert got[0]["output"] == "kept"
    assert got[3]["messages"] == MSGS and got[3]["model_id"] == "tiny"
    assert got[3]["output"] == gen.complete(MSGS, max_tokens=4)[0].text
    assert generate_file(gen, src, out, max_tokens=4, progress=False)["generated"] == 0


def test_input_rows_are_checked():
    with pytest.raises(ValueError, match="f.jsonl:3: row needs a 'messages' list or a non-empty 'prompt'"):
        input_conversation({"text": "x"}, "f.jsonl:3")
    with pytest.raises(ValueError, match="f.jsonl:1: .*"):
        input_conversation(
            {"messages": [{"role": "assistant", "content": "x"}, {"role": "user", "content": "y"}]}, "f.jsonl:1"
        )


CONVS = [
    [{"role": "user", "content": "A much longer question that needs several more tokens to say, twice over"}],
    MSGS,
    [{"role": "user", "content": "A question of middling length here"}],
    [{"role": "user", "content": "Hi"}],
]


def test_batches_are_length_sorted_chunks_answered_in_input_order(gen, monkeypatch):
    widths = []
    real = gen.model.generate

    def spy(**kw):
        widths.append(kw["attention_mask"].sum(dim=1).tolist())  # real prompt tokens per row of the chunk
        return real(**kw)

    monkeypatch.setattr(gen.model, "generate", spy)
    got = gen.generate_batch(CONVS, max_tokens=6, batch_size=2)
    lengths = sorted(len(gen.prompt_ids(c)) for c in CONVS)
    assert widths == [lengths[:2], lengths[2:]]  # the two shortest prompts share the first chunk
    monkeypatch.undo()
    assert [c.text for c in got] == [gen.complete(c, max_tokens=6)[0].text for c in CONVS]
    assert [c.prompt_tokens for c in got] == [len(gen.prompt_ids(c)) for c in CONVS]


def test_one_n_choices_rule_choice_i_uses_seed_plus_i(gen):
    assert choice_seeds(3, 5) == [5, 6, 7] and choice_seeds(2, None) == [None, None]
    backend = GeneratorBackend(gen, batch_size=2)
    many = backend.chat_batch(CONVS[:3], temperature=1.0, max_tokens=6, n=3, seed=5)
    for i in range(3):
        one = backend.chat_batch(CONVS[:3], temperature=1.0, max_tokens=6, n=1, seed=5 + i)
        assert [r.texts[i] for r in many] == [r.texts[0] for r in one]
    assert len({t for r in many for t in r.texts}) > 3  # different seeds, different samples
    streamed = gen.complete(MSGS, temperature=1.0, max_tokens=6, n=2, seed=5)
    assert streamed[1].text == gen.complete(MSGS, temperature=1.0, max_tokens=6, n=1, seed=6)[0].text
    assert backend.chat(MSGS, temperature=1.0, max_tokens=6, seed=9).texts == [
        r.texts[0] for r in backend.chat_batch([MSGS], temperature=1.0, max_tokens=6, seed=9)
    ]
