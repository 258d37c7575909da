"""Configs are code: every group option composes and instantiates; bad keys and missing values fail clearly."""

from pathlib import Path

import pytest
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf

from zephyr.errors import ConfigError
from zephyr.run import check_required
from zephyr.secrets import redact

CONF = Path(__file__).resolve().parents[2] / "conf"
# groups whose options need something this machine lacks (a plugin, a GPU, a hub download) to instantiate;
# they are still composed below
COMPOSE_ONLY = {"model/mistral_7b", "data/ultrachat", "data/ultrafeedback"}


def group_options():
    for group in sorted(p for p in CONF.iterdir() if p.is_dir()):
        # feedback, demo, iterate: the settings of `zephyr data`, `zephyr demo` and `zephyr iterate`, not train groups;
        # loss: options of +experiment=loss_study only (each composed there: tests/unit/test_loss_study.py)
        if group.name in ("experiment", "sweep", "launcher", "feedback", "demo", "iterate", "loss"):
            continue
        for opt in sorted(group.rglob("*.yaml")):
            yield f"{group.name}/{opt.relative_to(group).with_suffix('')}"


def test_defaults_list_has_every_group_but_experiment_and_sweep():
    defaults = OmegaConf.load(CONF / "train.yaml").defaults
    names = {next(iter(d)) for d in defaults if not isinstance(d, str)}
    assert {"model", "data", "objective", "strategy", "hardware", "trainer", "logger", "callbacks", "paths"} <= names
    assert "experiment" not in names and "sweep" not in names


@pytest.mark.parametrize("option", list(group_options()))
def test_every_group_option_composes(compose, option):
    group, name = option.split("/", 1)
    overrides = [f"{group}={name}"]
    if option in ("data/local_sft", "data/local_jsonl"):
        overrides.append("data.path=x.jsonl")
    cfg = compose(*overrides)
    OmegaConf.resolve(cfg.model)  # interpolations resolve without Hydra's runtime
    assert cfg[group] is not None


def test_default_config_instantiates_tiny_model_and_data(compose, tokenizer):
    from hydra.utils import instantiate

    cfg = compose("data.toy.n=20", "data.eval_size=4")
    model = instantiate(cfg.model, _convert_="all")
    assert type(model).__name__ == "MistralForCausalLM"
    assert model.config.num_key_value_heads == 2 and model.config.vocab_size == 32000
    dm = instantiate(cfg.data, tokenizer=tokenizer, _convert_="all")
    dm.setup()
    assert len(dm.train_items) == 16 and len(dm.eval_items) == 4
    module = instantiate(cfg.objective, model=model, _convert_="all")
    assert module.optimizer_factory.keywords["weight_decay"] == 0.0


def test_same_seed_same_init(compose):
    from hydra.utils import instantiate

    cfg = compose()
    a, b = instantiate(cfg.model, _convert_="all"), instantiate(cfg.model, _convert_="all")
    assert all((x == y).all() for x, y in zip(a.state_dict().values(), b.state_dict().values()))


def test_unknown_key_is_rejected_naming_it(compose):
    with pytest.raises(ConfigCompositionException, match="trainer.max_stepz"):
        compose("trainer.max_stepz=3")


def test_unknown_group_option_lists_available(compose):
    with pytest.raises(ConfigCompositionException, match="Could not find 'model/mistral_8b'"):
        compose("model=mistral_8b")


def test_missing_required_value_named(compose):
    cfg = compose("data=local_sft")
    with pytest.raises(ConfigError, match=r"missing required config value\(s\): data.path"):
        check_required(cfg)


def test_mistral_7b_config_matches_the_paper_model(compose):
    cfg = compose("model=mistral_7b")
    c = cfg.model.config
    assert cfg.model.path == "mistralai/Mistral-7B-v0.1"
    assert (c.hidden_size, c.intermediate_size, c.num_hidden_layers) == (4096, 14336, 32)
    assert (c.num_attention_heads, c.num_key_value_heads, c.sliding_window, c.vocab_size) == (32, 8, 4096, 32000)
    assert c.tie_word_embeddings is False and c.rope_theta == 10000.0


def test_redact_hides_secret_values_only():
    cfg = {"feedback": {"api_key": "sk-123", "api_key_env": None, "model": "gpt-4"}, "wandb_token": "t", "n": 3}
    out = redact(cfg)
    assert out == {"feedback": {"api_key": "***", "api_key_env": None, "model": "gpt-4"}, "wandb_token": "***", "n": 3}


def test_zephyr_7b_dpo_keeps_global_batch_32_on_one_node(compose):
    """Paper: global batch 32 (16 A100 x 2); on a100x8 the preset gets there by accumulating 2 micro-batches."""
    from zephyr.scale.plan import launch_plan

    paper = launch_plan(compose("+experiment=zephyr_7b_dpo"), check=False)
    assert (paper.global_batch_size, paper.micro_batch_size, paper.accumulate, paper.world_size) == (32, 2, 1, 16)
    node = launch_plan(compose("+experiment=zephyr_7b_dpo", "hardware=a100x8"), check=False)
    assert (node.global_batch_size, node.micro_batch_size, node.accumulate, node.world_size) == (32, 2, 2, 8)


def test_7b_presets_compose_the_same_way(compose):
    """Both paper presets set the paper's hardware and strategy themselves, and their global batch."""
    for name, global_batch in (("zephyr_7b_sft", 512), ("zephyr_7b_dpo", 32)):
        cfg = compose(f"+experiment={name}")
        assert (cfg.hardware.devices, cfg.hardware.num_nodes) == (8, 2), name
        assert (cfg.strategy.name, cfg.strategy.stage) == ("deepspeed", 3), name
        assert cfg.trainer.global_batch_size == global_batch, name


@pytest.mark.parametrize(("old", "new"), [("toy", "toy_sft"), ("local_jsonl", "local_sft")])
def test_old_data_names_are_aliases_that_log_the_new_name(compose, caplog, old, new):
    from hydra.core.hydra_config import HydraConfig

    from zephyr.run import warn_renamed_data

    assert compose(f"data={old}").data == compose(f"data={new}").data
    HydraConfig.instance().set_config(compose(f"data={old}", return_hydra_config=True))
    try:
        with caplog.at_level("WARNING", logger="zephyr.run"):
            warn_renamed_data()
    finally:
        HydraConfig.instance().cfg = None
    assert [r.getMessage() for r in caplog.records] == [f"data={old} is deprecated: it is now data={new} (same keys)"]


def test_local_data_options_require_a_path_and_toy_ones_do_not(compose):
    for option in ("local_sft", "local_prefs"):
        with pytest.raises(ConfigError, match=r"missing required config value\(s\): data.path"):
            check_required(compose(f"data={option}"))
    for option, target in (
        ("toy_sft", "zephyr.toy.teacher.sft_dialogues"),
        ("toy_prefs", "zephyr.toy.pairs.preference_rows"),
    ):
        cfg = compose(f"data={option}")
        check_required(cfg)
        assert cfg.data.path is None and cfg.data.toy._target_ == target and cfg.data.toy._partial_ is True


def test_zephyr_data_imports_no_higher_layer():
    """``zephyr.data`` imports nothing from feedback, toy, eval, modules or run (toy rows come by _target_)."""
    import ast

    banned = ("zephyr.feedback", "zephyr.toy", "zephyr.eval", "zephyr.modules", "zephyr.run")
    found = []
    for path in sorted((CONF.parent / "zephyr" / "data").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            found += [f"{path.name}: {n}" for n in names if n.startswith(banned)]
    assert found == []
    assert len(list((CONF.parent / "zephyr" / "data").glob("*.py"))) >= 5  # the walk saw the package
