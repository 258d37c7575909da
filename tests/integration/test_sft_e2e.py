"""dSFT end to end: train.py on a local file -> HF export -> the seed's pipeline snippet generates text."""

import json

import pytest

from tests.conftest import write_jsonl
from tests.integration.helpers_train import run_train
from zephyr.toy.teacher import sft_dialogues


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("sft")
    data = write_jsonl(tmp / "chat.jsonl", sft_dialogues(64, seed=1))
    out = tmp / "run"
    run_train(
        f"data.path={data}",
        "data.eval_size=8",
        "trainer.max_steps=6",
        "trainer.val_check_interval=3",
        f"paths.output_dir={out}",
    )
    return out


def test_export_has_hf_files_and_zephyr_template(trained):
    model = trained / "model"
    for name in (
        "model.safetensors",
        "config.json",
        "generation_config.json",
        "tokenizer.json",
        "tokenizer_config.json",
    ):
        assert (model / name).is_file(), name
    gen = json.loads((model / "generation_config.json").read_text())
    assert gen["eos_token_id"] == 2 and gen["pad_token_id"] == 2
    cfg = json.loads((model / "config.json").read_text())
    assert cfg["model_type"] == "mistral" and cfg["hidden_size"] == 64


def test_metrics_written_and_steps_respected(trained):
    metrics = json.loads((trained / "metrics.json").read_text())
    assert metrics["global_step"] == 6
    assert 0 < metrics["eval/loss"] < 20 and metrics["train/tokens_per_sec"] > 0
    assert (trained / "checkpoints" / "last.ckpt").is_file()
    rows = (trained / "metrics.csv").read_text().splitlines()
    assert rows[0].startswith("step,") and len(rows) >= 2


def test_seed_usage_snippet_works_unchanged(trained):
    import torch
    import transformers

    pipe = transformers.pipeline(
        "text-generation", model=str(trained / "model"), torch_dtype=torch.bfloat16, device_map="auto"
    )
    messages = [
        {"role": "system", "content": "You are a friendly chatbot who always responds in the style of a pirate"},
        {"role": "user", "content": "How many helicopters can a human eat in one sitting?"},
    ]
    prompt = pipe.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert prompt.endswith("</s>\n<|assistant|>\n") and prompt.startswith("<|system|>\n")
    outputs = pipe(prompt, max_new_tokens=8, do_sample=True, temperature=0.7, top_k=50, top_p=0.95)
    text = outputs[0]["generated_text"]
    assert text.startswith(prompt) and len(text) > len(prompt)


def test_bad_row_is_one_line_naming_file_and_row(tmp_path):
    rows = sft_dialogues(4, seed=2) + [
        {"messages": [{"role": "user", "content": "hi"}, {"role": "user", "content": "x"}]}
    ]
    data = write_jsonl(tmp_path / "bad.jsonl", rows)
    proc = run_train(f"data.path={data}", "data.eval_size=0", f"paths.output_dir={tmp_path}/run", check=False)
    assert proc.returncode == 2
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith(f"train.py: error: {data}: row 5: turn 1 is 'user'"), proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr


def test_missing_data_file_and_unknown_key(tmp_path):
    proc = run_train(f"data.path={tmp_path}/nope.jsonl", f"paths.output_dir={tmp_path}/run", check=False)
    assert proc.returncode == 2 and f"data file not found: {tmp_path}/nope.jsonl" in proc.stderr
    proc = run_train("trainer.max_stepz=1", f"paths.output_dir={tmp_path}/run", check=False)
    assert proc.returncode != 0 and "Key 'max_stepz' is not in struct" in proc.stderr
