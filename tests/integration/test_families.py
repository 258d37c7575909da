"""Each causal-LM family trains dSFT then dDPO through ``zephyr.run.train``, exports, generates and serves, with
the same prompt ids at training and at inference (tiny checkpoints of ``tests.unit.models.test_families``).
"""

from __future__ import annotations

import json

import pytest
import torch
from fastapi.testclient import TestClient
from hydra.utils import instantiate

from tests.unit.dpo.helpers_dpo import pref_rows, write_jsonl
from tests.unit.models.test_families import FAMILIES, make_checkpoint

# Lightning's pytree use on this torch version (as in tests/unit/dpo/test_dpo_module.py)
COMMON = ["trainer.enable_progress_bar=false", "logger=none", "trainer.max_steps=2", "data.eval_size=0"]


def _sft_rows(n: int) -> list[dict]:
    return [{"messages": r["chosen"], "prompt": r["prompt"], "prompt_id": r["prompt_id"]} for r in pref_rows(n)]


@pytest.mark.parametrize(
    ("family", "adapter"),
    [
        *((f, "none") for f in sorted(FAMILIES)),
        pytest.param("qwen2", "lora", marks=pytest.mark.slow),
        pytest.param("gemma2", "lora", marks=pytest.mark.slow),
    ],
)
def test_family_trains_exports_and_serves_with_the_training_prompt_ids(family, adapter, tmp_path, compose):
    from zephyr.generation import Generator
    from zephyr.run import train
    from zephyr.serve.app import create_app
    from zephyr.tokenizer import load_tokenizer

    base = make_checkpoint(family, tmp_path / "base")
    sft_data = write_jsonl(tmp_path / "sft.jsonl", _sft_rows(4))
    sft = train(
        compose(
            *COMMON,
            f"model.path={base}",
            f"adapter={adapter}",
            "data=local_sft",
            f"data.path={sft_data}",
            "data.batch_size=2",
            "data.max_length=128",
            f"paths.output_dir={tmp_path}/sft",
        )
    )
    assert sft["global_step"] == 2.0 and torch.isfinite(torch.tensor(sft["train/loss"]))
    sft_model = tmp_path / "sft" / "model"
    # the export keeps the checkpoint's own tokenizer and template
    assert load_tokenizer(sft_model).chat_template == load_tokenizer(base).chat_template
    assert json.loads((sft_model / "config.json").read_text())["model_type"] == family

    prefs = write_jsonl(tmp_path / "prefs.jsonl", pref_rows(4))
    dpo_cfg = compose(
        *COMMON,
        "+experiment=dpo_toy",
        f"adapter={adapter}",
        f"model.path={sft_model}",
        "data=local_prefs",
        f"data.path={prefs}",
        "data.batch_size=2",
        "data.max_length=128",
        "data.max_prompt_length=64",
        f"paths.output_dir={tmp_path}/dpo",
    )
    dpo = train(dpo_cfg)
    assert dpo["global_step"] == 2.0 and 0.0 < dpo["train/loss"] < 5.0
    out = tmp_path / "dpo" / "model"
    if adapter == "lora":  # the merged export beside the PEFT adapter
        assert (tmp_path / "dpo" / "adapter" / "adapter_config.json").is_file()

    # the prompt ids the DPO run trained on == the ones the exported model is queried with
    data = instantiate(dpo_cfg.data, tokenizer=load_tokenizer(dpo_cfg.model.path))
    data.setup("fit")
    gen = Generator.from_dir(out)
    rows = pref_rows(4)
    for item in data.train_items:
        messages = rows[int(item["index"])]["chosen"][:1]
        assert list(item["prompt"]) == gen.prompt_ids(messages)
    ids = gen.prompt_ids(rows[0]["chosen"][:1])
    bos = gen.tokenizer.bos_token_id
    assert (ids[0] == bos and ids.count(bos) == 1) if bos is not None else FAMILIES[family][1][0] is None

    client = TestClient(create_app(generator=gen, max_tokens_limit=16))
    r = client.post(
        "/v1/chat/completions",
        json={"model": "model", "messages": rows[0]["chosen"][:1], "max_tokens": 4, "temperature": 0},
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["usage"]["prompt_tokens"] == len(ids)
    assert body["usage"]["completion_tokens"] <= 4 and body["choices"][0]["message"]["role"] == "assistant"
