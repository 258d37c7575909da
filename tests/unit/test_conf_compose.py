"""Every settings file under ``conf/`` is composed by Hydra (``zephyr.conf.compose``), with its layering in its
defaults list, and user layers (``--config``, ``--set``) merge over it with one-line errors naming the layer."""

from __future__ import annotations

import pytest
from hydra import compose as hydra_compose
from hydra import initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf

from zephyr.conf import CONF_DIR, compose, dotlist_layers, file_layer, merge_layers
from zephyr.demo import load_settings
from zephyr.feedback.config import load_config
from zephyr.iterate import load_iterate_settings

pytestmark = pytest.mark.unit


def test_layering_lives_in_the_defaults_lists():
    full, ci = OmegaConf.load(CONF_DIR / "demo" / "full.yaml"), OmegaConf.load(CONF_DIR / "demo" / "ci.yaml")
    assert list(ci.defaults) == ["full", "_self_"]
    it = OmegaConf.load(CONF_DIR / "iterate" / "toy.yaml")
    assert OmegaConf.to_container(it.defaults) == [{"/demo@_global_": "full"}, "_self_"]
    composed = compose("demo/ci")
    assert composed.sft_data.n == ci.sft_data.n != full.sft_data.n
    assert composed.world == full.world and list(composed.dsft) == list(ci.dsft)  # lists replace lists
    assert "defaults" not in composed and "hydra" not in composed
    # iterate/toy over the ci demo = the ci demo + the iterate block
    both = compose("iterate/toy", ["demo@_global_=ci"])
    assert both.sft_data.n == ci.sft_data.n and both.iterate.rounds == it.iterate.rounds
    assert OmegaConf.to_container(load_settings("ci")) == OmegaConf.to_container(composed)
    assert load_iterate_settings("full").sft_data.n == full.sft_data.n


def test_compose_inside_a_running_hydra_app_keeps_its_state():
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        outer = hydra_compose("train", overrides=["seed=7"])
        assert compose("feedback/toy").seed == 0
        assert GlobalHydra.instance().is_initialized()  # the app's Hydra is still there
        assert outer.seed == 7
    GlobalHydra.instance().clear()
    assert compose("demo/full").eval.n == 500 and not GlobalHydra.instance().is_initialized()


def test_merge_layers_errors_name_the_layer_and_key(tmp_path):
    base = compose("feedback/toy")
    with pytest.raises(ValueError, match=r"^--set feedback\.promts=3: unknown setting 'feedback\.promts' \(see x\)$"):
        merge_layers(base, dotlist_layers(["feedback.promts=3"]), hint="(see x)")
    with pytest.raises(ValueError, match=r"^--set oops: overrides must look like key=value$"):
        dotlist_layers(["oops"])
    bad = tmp_path / "bad.yaml"
    bad.write_text("a: [1\n")
    with pytest.raises(ValueError, match=rf"^--config {bad}: "):
        file_layer(bad)
    bad.write_text("- 1\n- 2\n")
    with pytest.raises(ValueError, match="a config file must be a mapping"):
        file_layer(bad)
    with pytest.raises(FileNotFoundError, match="no such config file"):
        load_config(str(tmp_path / "missing.yaml"))
    # open keys take anything; whole keys replace instead of merging; the result is not locked
    cfg = merge_layers(
        base,
        [("x", {"judge": {"_target_": "m.J"}, "seed": 3})],
        whole_keys=("judge",),
    )
    assert OmegaConf.to_container(cfg.judge) == {"_target_": "m.J"} and cfg.seed == 3
    cfg.new = 1
    assert base.seed == 0  # the input is not modified
