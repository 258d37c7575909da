"""Fixtures for the dDPO tests: preference rows, a tiny exported dSFT checkpoint, a wired DPOModule."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from tests.conftest import TINY_CONFIG

TINY = TINY_CONFIG
QUESTIONS = [
    ("Add 12 and 30.", "The answer is 42.", "12 + 30 = 32. The answer is 32."),
    ("What is 7 times 6?", "The answer is 42.", "I am not sure, maybe 48."),
    ("Sort 3, 1, 2.", "The answer is 1, 2, 3.", "The answer is 3, 2, 1."),
    ("Count the letter a in banana.", "There are 3.", "There are 2 a's in banana, I think."),
    ("Convert 2 km to m.", "2 * 1000 = 2000. The answer is 2000 m.", "The answer is 200 m."),
    ("Subtract 9 from 20.", "The answer is 11.", "20 - 9 = 12. The answer is 12."),
    ("Name a primary colour.", "Red.", "Purple is a primary colour."),
    ("Reverse 1, 2, 3.", "The answer is 3, 2, 1.", "The answer is 1, 2, 3."),
]


def pref_row(question: str, chosen: str, rejected: str, **extra) -> dict:
    user = {"role": "user", "content": question}
    return {
        "prompt": question,
        "prompt_id": str(abs(hash(question))),
        "chosen": [user, {"role": "assistant", "content": chosen}],
        "rejected": [user, {"role": "assistant", "content": rejected}],
        "score_chosen": 8.0,
        "score_rejected": 3.0,
        **extra,
    }


def pref_rows(n: int = 8) -> list[dict]:
    return [pref_row(*QUESTIONS[i % len(QUESTIONS)]) for i in range(n)]


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def export_tiny(out_dir: Path, seed: int = 0) -> Path:
    """A random tiny Mistral exported as a dSFT checkpoint (no training needed for these tests)."""
    from zephyr.models.export import export_hf
    from zephyr.models.mistral import build_model
    from zephyr.tokenizer import load_tokenizer

    model = build_model(config=TINY, init_seed=seed)
    return export_hf(model, load_tokenizer(), out_dir)


def make_datamodule(tokenizer, path: Path, **kwargs):
    from zephyr.data.preference import PreferenceDataModule

    opts = dict(path=str(path), eval_size=0, batch_size=4, max_length=128, max_prompt_length=64, seed=0)
    opts.update(kwargs)
    dm = PreferenceDataModule(tokenizer, **opts)
    dm.setup("fit")
    return dm


def make_module(ckpt: Path, tokenizer, dm, *, cache_dir=None, mode="cache", lr=1e-3, **kwargs):
    """A DPOModule whose reference copy is loaded from ``ckpt``; ``load_count[0]`` counts reference loads.

    ``tokenizer`` and ``dm`` are the pairs the test will hand to ``module.prepare_reference(dm)``; they are
    not bound here (the module gets its data at fit time).
    """
    from functools import partial

    from zephyr.models.mistral import build_model
    from zephyr.modules.dpo import DPOModule
    from zephyr.modules.reference import Reference

    load_count = [0]

    def load():
        load_count[0] += 1
        return build_model(str(ckpt))

    root = Path(ckpt).parent  # the fingerprint memo goes next to the test checkpoint, not into the checkout
    reference = partial(
        Reference, mode=mode, batch_size=4, cache_dir=cache_dir, model=load, model_path=str(ckpt), root_dir=root
    )
    module = DPOModule(
        build_model(str(ckpt)),
        partial(torch.optim.AdamW, lr=lr, weight_decay=0.0),
        {"name": "constant", "warmup_ratio": 0.0},
        reference=reference,
        **kwargs,
    )
    return module, load_count
