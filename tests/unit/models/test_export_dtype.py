"""``export_hf(dtype=...)``: the weights and config.json agree, so a plain ``from_pretrained`` loads that dtype."""

import json

import pytest
import torch
from transformers import AutoModelForCausalLM

from tests.conftest import TINY_CONFIG
from zephyr.models.export import export_hf
from zephyr.models.mistral import build_model
from zephyr.tokenizer import load_tokenizer

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(("dtype", "want"), [("bfloat16", torch.bfloat16), (None, torch.float32)])
def test_exported_config_records_the_dtype_the_weights_were_cast_to(tmp_path, dtype, want):
    model = build_model(config=TINY_CONFIG, init_seed=0)
    out = export_hf(model, load_tokenizer(), tmp_path / "m", dtype=dtype)
    assert json.loads((out / "config.json").read_text())["dtype"] == str(want).removeprefix("torch.")
    loaded = AutoModelForCausalLM.from_pretrained(out)  # transformers' default dtype: the checkpoint's
    assert {p.dtype for p in loaded.parameters()} == {want}
    assert next(model.parameters()).dtype == torch.float32  # the live model is not cast
