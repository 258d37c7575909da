"""The incremental decode of ``_TextStream`` (a few trailing tokens per step) gives exactly the full decode, and
the batched greedy pick (``_argmax``) is ``torch.argmax``'s, ties and NaN included."""

from __future__ import annotations

import random

import pytest
import torch

from tests.unit.models.test_families import build_tokenizer
from zephyr.generation import StreamState, _argmax, _TextStream

TEXTS = [
    "Hello, world! ¿Qué tal? 日本語のテキスト 🙂🚀 naïve café — «quotes» ...",
    "def f(x):\n    return x  # comment\n\n\n",
    "a . b , c ! d ?  e   f",
    " leading space and trailing space ",
    "emoji 👩\u200d👩\u200d👧 and ∑∫ math, don't stop",
]


class _Owner:
    """The two attributes ``_TextStream`` reads from its ``Generator``."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.eos_ids = {tokenizer.eos_token_id}

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)


def _sequences(tokenizer, n: int, seed: int = 0) -> list[list[int]]:
    """Encoded texts cut at random token offsets, and random ids (byte-fallback pieces, split UTF-8, specials)."""
    rng = random.Random(seed)
    out = []
    for k in range(n):
        if k % 2:
            ids = tokenizer.encode(rng.choice(TEXTS) * rng.randint(1, 3), add_special_tokens=False)
            out.append(ids[rng.randint(0, 5) :])
        else:
            out.append([rng.randrange(0, len(tokenizer)) for _ in range(rng.randint(1, 40))])
    return [ids for ids in out if tokenizer.eos_token_id not in ids]


def _streamed(owner, ids: list[int], stop=None) -> tuple[str, StreamState]:
    st = StreamState()
    ts = _TextStream(owner, stop, st)
    deltas = [ts.push(t)[0] for t in ids]
    return "".join(deltas) + ts.close(), st


@pytest.mark.parametrize("which", ["mistral", "byte_level_bpe"])
def test_incremental_deltas_concatenate_to_the_full_decode(tokenizer, which):
    tok = tokenizer if which == "mistral" else build_tokenizer("<s>", "</s>", None, None)
    owner = _Owner(tok)
    seqs = _sequences(tok, 600)
    assert any(owner._decode(ids).startswith(" ") for ids in seqs)  # leading spaces are exercised
    assert any("\ufffd" in owner._decode(ids[:k]) for ids in seqs for k in range(1, len(ids)))  # split UTF-8 too
    for ids in seqs:
        full = owner._decode(ids)
        text, st = _streamed(owner, ids)
        assert text == full, ids
        assert st.text == full
        assert st.completion_tokens == len(ids)


def test_stop_string_cut_is_the_full_decodes_cut(tokenizer):
    owner = _Owner(tokenizer)
    ids = tokenizer.encode(TEXTS[0] + " STOP here " + TEXTS[1], add_special_tokens=False)
    text, st = _streamed(owner, ids, stop=["STOP"])
    full = owner._decode(ids)
    assert text == full[: full.index("STOP")]
    assert st.finish_reason == "stop"


def test_each_push_decodes_a_bounded_number_of_tokens(tokenizer):
    """Per token, the work is a few trailing tokens, not the whole completion (the reason for the incremental form)."""
    lengths: list[int] = []
    owner = _Owner(tokenizer)
    full_decode = owner._decode
    owner._decode = lambda ids: lengths.append(len(ids)) or full_decode(ids)
    ids = tokenizer.encode(TEXTS[2] * 20, add_special_tokens=False)
    assert len(ids) > 150
    _streamed(owner, ids)
    assert max(lengths) <= 8


def test_batched_argmax_is_torch_argmax_with_ties_and_nan():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(6, 1000, generator=g)
    logits[1, 10] = logits[1, 20] = logits[1].max() + 1  # a tie: the first index wins
    logits[2, 30] = float("nan")  # NaN counts as the maximum
    logits[3] = 0.0  # all equal
    assert _argmax(logits) == logits.argmax(-1).tolist() == _argmax(logits[:, None, :][:, -1])
    assert _argmax(logits)[1:4] == [10, 30, 0]
    assert _argmax(logits[4]) == [int(logits[4].argmax())]
    assert _argmax(logits.bfloat16()) == logits.bfloat16().float().argmax(-1).tolist()
