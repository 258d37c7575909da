"""Unit tests of the iterate loop's ingredients: settings, prompt draws, reference overrides, W&B, vLLM refusal."""

from __future__ import annotations

import pytest
import torch

from zephyr.iterate import (
    ddpo_overrides,
    load_iterate_settings,
    policy_backend,
    reference_overrides,
    round_prompts,
    train_overrides,
    union_prompts,
    wandb_run,
)

pytestmark = pytest.mark.unit


def test_defaults_and_flags():
    s = load_iterate_settings("ci")
    assert (s.iterate.rounds, s.iterate.prompts, s.iterate.reference) == (3, "fresh", "previous")
    s = load_iterate_settings("ci", ["iterate.rounds=2", "iterate.reference=sft", "feedback.prompts=5"])
    assert (s.iterate.rounds, s.iterate.reference, s.feedback.prompts) == (2, "sft", 5)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("iterate.prompts=new", "iterate.prompts must be one of fresh|same"),
        ("iterate.reference=base", "iterate.reference must be one of previous|sft"),
        ("iterate.rounds=0", "iterate.rounds must be an integer >= 1"),
        ("iterate.roundz=2", "iterate.roundz"),
        ("iterate.pool=[rule-weak,rule-careful]", "name the policy member 'dsft'"),
    ],
)
def test_bad_settings_one_line(override, message):
    with pytest.raises(ValueError, match=message.replace("|", r"\|")):
        load_iterate_settings("ci", [override])


def test_config_file(tmp_path):
    f = tmp_path / "it.yaml"
    f.write_text("iterate:\n  prompts: same\nfeedback:\n  prompts: 7\n")
    s = load_iterate_settings("ci", ["feedback.prompts=9"], config=f)
    assert s.iterate.prompts == "same" and s.feedback.prompts == 9  # --set wins over the file
    f.write_text("iterate:\n  promts: same\n")
    with pytest.raises(ValueError, match=f"--config {f}.*promts"):
        load_iterate_settings("ci", config=f)
    with pytest.raises(FileNotFoundError, match="no such config file"):
        load_iterate_settings("ci", config=tmp_path / "missing.yaml")


def test_prompts_fresh_vs_same():
    fresh = load_iterate_settings("ci", ["feedback.prompts=12"])
    same = load_iterate_settings("ci", ["feedback.prompts=12", "iterate.prompts=same"])
    ids = {
        m: [[p["prompt_id"] for p in round_prompts(s, 0, r)] for r in (1, 2, 3)] for m, s in (("f", fresh), ("s", same))
    }
    assert ids["f"][0] == ids["s"][0]  # round 1 is the demo's draw in both modes
    assert ids["s"][0] == ids["s"][1] == ids["s"][2]
    assert len(set(ids["f"][0]) & set(ids["f"][1])) < 12 and ids["f"][1] != ids["f"][2]
    union = union_prompts([round_prompts(fresh, 0, r) for r in (1, 2)])
    assert len(union) == len(set(ids["f"][0]) | set(ids["f"][1]))
    assert len(union_prompts([round_prompts(same, 0, r) for r in (1, 2)])) == 12


def test_reference_and_ddpo_overrides(tmp_path):
    s = load_iterate_settings("ci")
    assert reference_overrides(None, tmp_path) == [f"objective.reference.cache_dir={tmp_path}"]
    over = reference_overrides(tmp_path / "dsft", tmp_path / "c")
    assert over == [f"objective.reference.cache_dir={tmp_path / 'c'}", f"objective.reference.path={tmp_path / 'dsft'}"]
    fixed = ddpo_overrides(s, 7)
    assert "trainer.max_steps=7" in fixed and "trainer.max_epochs=-1" in fixed
    assert sum(o.startswith("trainer.max_steps=") for o in fixed) == 1
    assert ddpo_overrides(s) == list(s.ddpo)


def test_reference_sft_composes(tmp_path):
    from zephyr.conf import compose

    cfg = compose("train", 
        [f"paths.root_dir={tmp_path}", "paths.output_dir=x", "objective=dpo", "model.path=/r/prev",
         *reference_overrides(tmp_path / "sft", tmp_path / "c")]
    )  # fmt: skip
    assert cfg.model.path == "/r/prev" and cfg.objective.reference.model.path == "/r/prev"  # ${model}
    assert cfg.objective.reference.path == str(tmp_path / "sft")  # Reference loads ${model} from this path
    assert cfg.objective.reference.cache_dir == str(tmp_path / "c")


def test_wandb_group_and_round_key(tmp_path, monkeypatch):
    from zephyr.conf import compose

    monkeypatch.delenv("WANDB_RUN_GROUP", raising=False)
    s = load_iterate_settings("ci", ["iterate.wandb=true"])
    over = train_overrides(s, tmp_path, 0, 2)
    assert "logger=wandb" in over and "logger=none" not in over and "+iterate.round=2" in over
    with wandb_run(s, "iterate-x-seed0", "round_2-ddpo"):
        cfg = compose("train", [*over, "paths.output_dir=x"])
        assert cfg.logger.group == "iterate-x-seed0" and cfg.logger.name == "round_2-ddpo"
        assert cfg.iterate.round == 2
    import os

    assert "WANDB_RUN_GROUP" not in os.environ
    assert "logger=none" in train_overrides(load_iterate_settings("ci"), tmp_path, 0, 1)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU refusal")
def test_vllm_refuses_on_cpu(tmp_path):
    s = load_iterate_settings("ci", ["iterate.generation.backend=vllm"])
    with pytest.raises(ValueError, match="needs a CUDA GPU and none is visible"):
        policy_backend(s, tmp_path, "round1")


def test_openai_needs_base_url(tmp_path):
    s = load_iterate_settings("ci", ["iterate.generation.backend=openai"])
    with pytest.raises(ValueError, match="iterate.generation.base_url"):
        policy_backend(s, tmp_path, "round1")
    s = load_iterate_settings(
        "ci", ["iterate.generation.backend=openai", "iterate.generation.base_url=http://127.0.0.1:9/v1"]
    )
    b = policy_backend(s, tmp_path / "round_1" / "ddpo" / "model", "round1")
    assert b.name == "round1" and b.model == str(tmp_path / "round_1" / "ddpo" / "model")
    assert b.base_url == "http://127.0.0.1:9/v1"
